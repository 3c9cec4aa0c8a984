"""What ``mixopt server`` says at start: the database it serves (without secrets), and no
migration-tool noise."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from service.db import upgrade


def test_server_logs_the_sqlite_file_it_serves(sqlite_url, server_factory):
    server = server_factory(sqlite_url).start()
    server.stop()
    log = server.log_path.read_text()
    assert f"serving database {sqlite_url} at revision" in log
    assert "database migrated from revision (empty) to" in log  # a fresh file is migrated at start
    assert "setup plugin" not in log and "Context impl" not in log


def test_server_logs_the_postgres_database_without_its_password(postgres_url, server_factory):
    upgrade(postgres_url)
    # Postgres here trusts local connections, so any password gets in; it must not reach the log.
    url = make_url(postgres_url).set(password="hunter2-secret-pw", query={"application_name": "t"})
    server = server_factory(url.render_as_string(hide_password=False)).start()
    server.stop()
    log = server.log_path.read_text()
    shown = url.set(query={}).render_as_string(hide_password=True)
    assert shown.startswith("postgresql+psycopg://postgres:***@")
    assert f"serving database {shown} at revision" in log
    assert "hunter2-secret-pw" not in log
    assert "database migrated" not in log  # already at head: nothing to say


def test_the_app_collects_garbage_less_often_while_it_serves(settings):
    """A request allocates hundreds of objects: the serving app raises the collector's first
    threshold (Python's 700 made a saturated server collect ~30 times a second), and puts it back
    at shutdown."""
    import gc

    from fastapi.testclient import TestClient

    from service.app import GC_YOUNG_THRESHOLD, create_app

    before = gc.get_threshold()
    with TestClient(create_app(settings, migrate=True)):
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before




_IMPORT_THEN_FREEZE = """
import gc, sys, threading, time
from fastapi.testclient import TestClient
from service.app import STRATEGY_LIBRARIES, create_app
from service.settings import Settings

settings = Settings(database_url=sys.argv[1], join_secret="x" * 32, data_dir=sys.argv[2])
assert "torch" not in sys.modules
with TestClient(create_app(settings, migrate=True)):
    deadline = time.monotonic() + 120
    while any(t.name == "mixopt-import" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    imported = all(name in sys.modules for name in STRATEGY_LIBRARIES)
    torch_dict = sys.modules["torch"].__dict__ if "torch" in sys.modules else None
    frozen = torch_dict is not None and not any(o is torch_dict for o in gc.get_objects())
print(imported, frozen, gc.get_freeze_count() == 0)
"""


def test_the_app_imports_the_strategies_libraries_after_start_and_freezes_them(sqlite_url, tmp_path):
    """The server starts without torch (tests/test_import_rules.py); the serving app imports the
    strategies' libraries in the background, then freezes the heap with them, so that full
    collections skip their objects (unfrozen, torch's made each a ~100 ms pause). Nothing stays
    frozen after shutdown. In a fresh interpreter: this one has torch imported already."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _IMPORT_THEN_FREEZE, sqlite_url, str(tmp_path / "data")],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "True"], (out.stdout, out.stderr[-2000:])
