"""``Database.transact``: one transaction awaited from a coroutine, on the database's own threads
(as many as its pool has connections), on each backend."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import text

from service.db import Database


@pytest.fixture
def db(db_url: str):
    database = Database(db_url, pool_size=3)
    with database.session() as s:
        s.execute(text("CREATE TABLE notes (x INTEGER)"))
    yield database
    database.dispose()


def _insert(s, x: int) -> str:
    s.execute(text("INSERT INTO notes (x) VALUES (:x)"), {"x": x})
    return threading.current_thread().name


def _insert_then_fail(s, x: int) -> None:
    _insert(s, x)
    raise RuntimeError("after the insert")


def _notes(db: Database) -> list[int]:
    with db.session() as s:
        return sorted(s.execute(text("SELECT x FROM notes")).scalars())


def test_commits_on_success_and_rolls_back_on_error(db: Database) -> None:
    thread = asyncio.run(db.transact(_insert, 1))
    assert thread.startswith("mixopt-db") and thread != threading.current_thread().name
    with pytest.raises(RuntimeError, match="after the insert"):
        asyncio.run(db.transact(_insert_then_fail, 2))
    assert _notes(db) == [1]


def test_never_more_threads_than_connections(db: Database) -> None:
    """Ten slow transactions at once on a pool of 3: three threads serve them, none waits for a
    connection (the pool has no overflow: a fourth thread would wait, then time out)."""
    def slow(s, x: int) -> str:
        time.sleep(0.05)
        return _insert(s, x)

    async def many() -> list[str]:
        return await asyncio.gather(*(db.transact(slow, i) for i in range(10)))

    names = asyncio.run(many())
    assert len(set(names)) == 3
    assert _notes(db) == list(range(10))


def test_usable_again_after_dispose(db: Database) -> None:
    asyncio.run(db.transact(_insert, 1))
    db.dispose()
    asyncio.run(db.transact(_insert, 2))
    assert _notes(db) == [1, 2]
