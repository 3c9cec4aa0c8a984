"""Throw-away Postgres databases, for tests and benchmarks that need an empty one."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, text


def scratch_database(admin_url: str, prefix: str = "mixopt_scratch") -> tuple[str, Callable[[], None]]:
    """Create an empty database on the server of ``admin_url``; returns its URL and a function
    that drops it (terminating what is still connected)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop
