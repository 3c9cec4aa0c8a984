"""Alembic migrations from an empty database to head, on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from service.db import alembic_config, current_revision, upgrade

ROOT = Path(__file__).resolve().parents[1]


def test_upgrade_empty_to_head_matches_models(db_url):
    cfg = alembic_config(db_url)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert current_revision(db_url) is None
    upgrade(db_url)
    assert current_revision(db_url) == head
    command.check(cfg)  # raises if the ORM models and the migrations disagree
    engine = create_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"studies", "trials", "leases", "results", "loss_curve_points", "recommendations", "workers"} <= tables


def test_downgrade_to_base_and_back(db_url):
    cfg = alembic_config(db_url)
    upgrade(db_url)
    command.downgrade(cfg, "base")
    assert current_revision(db_url) is None
    upgrade(db_url)
    command.check(cfg)


def test_application_code_never_calls_create_all():
    offenders = [
        str(p.relative_to(ROOT))
        for package in ("service", "workers", "proxy_models", "migrations")
        for p in (ROOT / package).rglob("*.py")
        if "create_all(" in p.read_text()
    ]
    assert offenders == []
