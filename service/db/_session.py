"""Engines, sessions and migrations for SQLite (the embedded default) and Postgres."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, Update, create_engine, event, func, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

log = logging.getLogger(__name__)

WORK_CHANNEL = "mixopt_work"
"""The Postgres NOTIFY channel on which trials becoming leasable are announced to every server process."""
WORKERS_CHANNEL = "mixopt_workers"
"""The Postgres NOTIFY channel on which a worker whose token changed (revoked, renewed) is announced,
its id the payload: every server process forgets what it remembered of that worker."""

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def make_engine(url: str, pool_size: int = 20) -> Engine:
    """An engine with the settings each backend needs.

    SQLite: WAL, foreign keys, a busy timeout, and ``BEGIN IMMEDIATE`` for every transaction, so
    that concurrent writers queue on the lock instead of failing with "database is locked" when
    a read transaction tries to upgrade to a write.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if u.get_backend_name() == "postgresql" and u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    # No pre-ping (a round trip on every checkout): connections are recycled before servers or
    # proxies drop idle ones, and one that died anyway fails its request with a 503 (retried by
    # clients) and is discarded by the pool. No overflow: the pool closes an overflow connection
    # when it is returned, so a steady load above the pool's size opened and closed ~40
    # connections a second (a server process forked for each, statements prepared again).
    return create_engine(u, pool_size=pool_size, max_overflow=0, pool_recycle=1800)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def announce_work(session: Session, riding: Update | None = None, params: dict[str, Any] | None = None) -> None:
    """Trials became leasable in ``session``'s transaction: on Postgres, NOTIFY every server
    process at commit (see :meth:`Database.listen_work`). SQLite: nothing (in-process wake-ups).

    ``riding``: an UPDATE of one row that the transaction makes anyway, run here (with ``params``)
    on every backend; on Postgres its ``RETURNING`` sends the NOTIFY, one round trip for both."""
    postgres = session.get_bind().dialect.name == "postgresql"
    if riding is not None:
        session.execute(riding.returning(func.pg_notify(WORK_CHANNEL, "")) if postgres else riding, params)
    elif postgres:
        session.execute(text(f"SELECT pg_notify('{WORK_CHANNEL}', '')"))


def announce_worker_change(session: Session, worker_id: int) -> None:
    """Worker ``worker_id``'s token changed in ``session``'s transaction (revoked or renewed): on
    Postgres, NOTIFY every server process at commit (see :meth:`Database.listen_work`)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_notify('{WORKERS_CHANNEL}', :worker)"), {"worker": str(worker_id)})


class Database:
    """An engine, its session factory, and the threads that run :meth:`transact`'s transactions."""

    def __init__(self, url: str, pool_size: int = 20, threads: int = 8):
        self.url = url
        self.engine = make_engine(url, pool_size)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.threads = min(threads, pool_size)
        """How many :meth:`transact` and :meth:`run_alone` calls run at once (at most the pool's size)."""
        self._threads: ThreadPoolExecutor | None = None  # started by the first transact()
        self.hears_worker_changes = False
        """Whether this process's listener (:meth:`listen_work`) is connected now: every change of
        a worker's token announced from then on reaches it."""

    @property
    def is_postgres(self) -> bool:
        return is_postgres(self.engine)

    @property
    def driver_url(self) -> str:
        """The database's URL as psycopg itself takes it (Postgres)."""
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.sessionmaker() as session, session.begin():
            yield session

    async def transact(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(session, *args)`` in one transaction (:meth:`session`), awaited from a coroutine.

        It runs on one of this database's own threads (``threads``, no more than the pool has
        connections, so that a thread never waits for a connection; the rest of the pool is left
        to the engine's runner and the other routes). The worker protocol's calls come here rather
        than through Starlette's thread pool (anyio's, 40 threads for every purpose, in front of
        the pool's 20 connections): in paired saturation runs of ``benchmarks/service_load.py``
        the server spent 15% less CPU per request this way.

        Few threads are enough. One at a time runs Python (the GIL) while the others wait on the
        database, and every thread more is one more to take the GIL from the event loop and from
        the runner, whose passes refill the queue. With a thread per connection (20), a
        heartbeat's 0.6 ms of CPU took ~65 ms at saturation, most of it waiting for the GIL, and
        leases waited for the runner to refill the queue; 8 threads in paired runs gave more
        cycles a second and a lower p99 (docs/benchmarks.md)."""
        return await self._on_threads(self._in_session, fn, *args)

    async def run_alone(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on :meth:`transact`'s threads, ``connection`` a pooled
        connection's driver (psycopg) connection in autocommit mode: each statement its own
        transaction unless ``fn`` opens one (``connection.transaction()``); see
        :class:`~service.db._raw.RawStatement`. Postgres only."""
        return await self._on_threads(self._alone, fn, *args)

    async def _on_threads(self, fn: Callable[..., T], *args: Any) -> T:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.threads, thread_name_prefix="mixopt-db")
        context = contextvars.copy_context()  # the caller's context variables hold in ``fn``, as in asyncio.to_thread
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, functools.partial(context.run, fn, *args))

    def _alone(self, fn: Callable[..., T], *args: Any) -> T:
        dialect = self.engine.dialect
        try:
            pooled = self.engine.raw_connection()
        except dialect.loaded_dbapi.Error as e:  # no connection to be had (Engine.connect wraps it so)
            raise DBAPIError.instance(None, None, e, dialect.loaded_dbapi.Error, dialect=dialect) from e
        connection = pooled.driver_connection
        try:
            connection.autocommit = True
            return fn(connection, *args)
        except dialect.loaded_dbapi.Error as e:  # as SQLAlchemy's own execution treats a driver error
            lost = dialect.is_disconnect(e, connection, None)
            if lost:
                pooled.invalidate(e)  # the pool opens a new connection rather than hand this one out
            raise DBAPIError.instance(None, None, e, dialect.loaded_dbapi.Error, connection_invalidated=lost,
                                      dialect=dialect) from e
        finally:
            try:
                if not connection.closed:
                    connection.autocommit = False  # as the pool's other users expect it
            except dialect.loaded_dbapi.Error as e:
                pooled.invalidate(e)
            pooled.close()  # back to the pool

    def _in_session(self, fn: Callable[..., T], *args: Any) -> T:
        with self.session() as session:
            return fn(session, *args)

    def dispose(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None
        self.engine.dispose()

    def listen_work(self, on_work: Callable[[], None], stop: threading.Event,
                    on_worker_change: Callable[[int | None], None] = lambda _: None) -> threading.Thread | None:
        """On Postgres, a daemon thread that calls ``on_work`` on each NOTIFY of :meth:`announce_work`
        and ``on_worker_change(worker_id)`` on each of :func:`announce_worker_change` (from any
        server process) until ``stop`` is set; ``None`` on SQLite. Whenever it (re)connects or loses
        its connection, it calls both as if everything had changed (``on_worker_change(None)``):
        what was announced while it did not listen is not missed."""
        if not self.is_postgres:
            return None
        import psycopg

        url = self.driver_url

        def loop() -> None:
            while not stop.is_set():
                try:
                    with psycopg.connect(url, autocommit=True) as conn:
                        conn.execute(f"LISTEN {WORK_CHANNEL}")
                        conn.execute(f"LISTEN {WORKERS_CHANNEL}")
                        self.hears_worker_changes = True
                        on_worker_change(None)
                        on_work()
                        while not stop.is_set():
                            for notice in conn.notifies(timeout=1.0):
                                if notice.channel == WORKERS_CHANNEL:
                                    on_worker_change(int(notice.payload))
                                else:
                                    on_work()
                except Exception as e:  # the database restarts: listen again shortly
                    log.warning("work listener reconnecting: %s", type(e).__name__)
                    stop.wait(1.0)
                finally:
                    self.hears_worker_changes = False
                    on_worker_change(None)

        thread = threading.Thread(target=loop, name="mixopt-listen", daemon=True)
        thread.start()
        return thread


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations on ``url`` up to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
