"""``Database.transact``: one transaction awaited from a coroutine, on the database's own threads
(``threads`` of them, at most as many as its pool has connections), on each backend."""

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


def test_the_threads_are_fewer_than_the_connections_when_asked(db_url: str) -> None:
    """``threads`` bounds the calls that run at once below the pool's size: the rest of the pool
    stays free for the engine's runner (a session, not these threads), which a thread per
    connection left waiting for the GIL and for connections at saturation."""
    database = Database(db_url, pool_size=6, threads=2)
    running, most = 0, 0
    lock = threading.Lock()

    def slow(s, x: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def many() -> None:
        await asyncio.gather(*(database.transact(slow, i) for i in range(8)))

    try:
        asyncio.run(many())
        with database.session() as s:  # a session beside them needs no thread of theirs
            assert s.execute(text("SELECT 1")).scalar() == 1
    finally:
        database.dispose()
    assert most == 2
    capped = Database(db_url, pool_size=3, threads=8)
    assert capped.threads == 3  # never more than the connections
    capped.dispose()


def test_usable_again_after_dispose(db: Database) -> None:
    asyncio.run(db.transact(_insert, 1))
    db.dispose()
    asyncio.run(db.transact(_insert, 2))
    assert _notes(db) == [1, 2]


def test_the_callers_context_variables_hold_in_the_transaction(db: Database) -> None:
    import contextvars

    seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")

    async def run() -> str:
        seen.set("the caller's")
        return await db.transact(lambda s: seen.get())

    assert asyncio.run(run()) == "the caller's"


@pytest.fixture
def pg(postgres_url: str):
    database = Database(postgres_url, pool_size=1)  # one connection: every call gets the same one back
    with database.session() as s:
        s.execute(text("CREATE TABLE notes (x INTEGER)"))
    yield database
    database.dispose()


def _alone_insert(connection, x: int):
    connection.execute("INSERT INTO notes (x) VALUES (%s)", (x,))
    return connection.autocommit, connection.info.transaction_status.name


def test_run_alone_runs_each_statement_as_its_own_transaction(pg: Database) -> None:
    assert asyncio.run(pg.run_alone(_alone_insert, 1)) == (True, "IDLE")  # committed, nothing left open
    assert _notes(pg) == [1]
    with pg.engine.raw_connection() as pooled:  # the pool's connection is back as its other users expect
        assert pooled.driver_connection.autocommit is False

    def fail_after_insert(connection) -> None:
        _alone_insert(connection, 2)
        raise ValueError("not a database error")

    with pytest.raises(ValueError):
        asyncio.run(pg.run_alone(fail_after_insert))
    assert _notes(pg) == [1, 2]  # the statement was its own transaction
    with pg.engine.raw_connection() as pooled:
        assert pooled.driver_connection.autocommit is False


def test_run_alone_answers_a_lost_connection_as_sqlalchemy_does(pg: Database) -> None:
    """A driver error comes out as SQLAlchemy's (the app answers its OperationalError with 503),
    and a connection the server dropped is not handed out again."""
    from sqlalchemy.exc import OperationalError

    def terminated(connection) -> None:
        connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(OperationalError) as caught:
        asyncio.run(pg.run_alone(terminated))
    assert caught.value.connection_invalidated
    assert asyncio.run(pg.run_alone(_alone_insert, 3)) == (True, "IDLE")  # a fresh connection
    assert _notes(pg) == [3]
