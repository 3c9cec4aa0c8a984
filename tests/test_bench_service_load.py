"""benchmarks/service_load.py's readings beside the latencies: what Postgres's backends waited on
(``--pg-waits``), from synthetic samples and from a real lock wait on the real Postgres."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.helpers import benchmark_module


@pytest.fixture(scope="module")
def load():
    with benchmark_module("service_load") as module:
        yield module


WAL_SYNC, WAL_WRITE, ROW_LOCK = ("IO", "WALSync"), ("LWLock", "WALWrite"), ("Lock", "transactionid")


def test_waits_are_shares_of_samples_and_wal_stalls_are_runs_of_them(load):
    samples = [
        [],                                                # nothing waits
        [WAL_SYNC, WAL_WRITE, WAL_WRITE],                  # a stall begins: 3 backends on the WAL
        [WAL_SYNC, WAL_WRITE, WAL_WRITE, WAL_WRITE],       # ... and goes on
        [WAL_SYNC, ROW_LOCK, ("Client", "ClientRead")],    # over: 1 on the WAL; reading from the client is no wait
        [WAL_SYNC, WAL_WRITE, WAL_WRITE],                  # a second, one sample long
    ]
    w = load.summarize_waits(samples, 0.05)
    assert w["samples"] == 5 and w["interval_ms"] == 50.0
    assert w["share_of_samples"] == {"IO:WALSync": 0.8, "LWLock:WALWrite": 0.6, "Lock:transactionid": 0.2}
    assert list(w["share_of_samples"]) == ["IO:WALSync", "LWLock:WALWrite", "Lock:transactionid"]  # most often first
    assert w["mean_waiting"]["LWLock:WALWrite"] == round(7 / 5, 2)
    assert w["wal_stalls"] == 2 and w["wal_stall_share"] == 0.6 and w["longest_wal_stall_ms"] == 100
    assert load.summarize_waits(samples, 0.05, stall_backends=4)["wal_stalls"] == 1
    assert load.summarize_waits([], 0.05) == {"samples": 0}


def test_a_backend_waiting_on_a_row_lock_is_sampled_in_its_database(load, postgres_server, postgres_url):
    engine = create_engine(postgres_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, v int)"))
        conn.execute(text("INSERT INTO t VALUES (1, 0)"))
    holder = engine.connect()
    holder.begin()
    holder.execute(text("UPDATE t SET v = 1 WHERE id = 1"))  # holds the row until rollback

    def blocked() -> None:
        with engine.begin() as conn:  # waits on the holder's transaction
            conn.execute(text("UPDATE t SET v = 2 WHERE id = 1"))

    waiter = threading.Thread(target=blocked)
    waiter.start()
    database, out = make_url(postgres_url).database, {}
    try:
        _wait_for_lock_wait(postgres_server, database)
        start = time.time()
        load.sample_waits(postgres_server, database, start, start + 0.5, out, interval_s=0.02)
    finally:
        holder.rollback()
        holder.close()
        waiter.join(10)
        engine.dispose()
    assert out["samples"] >= 10
    assert out["share_of_samples"] == {"Lock:transactionid": 1.0}, out  # one backend, the waiter
    assert out["mean_waiting"] == {"Lock:transactionid": 1.0} and out["wal_stalls"] == 0


def _wait_for_lock_wait(admin_url: str, database: str, timeout_s: float = 10.0) -> None:
    """Until a backend of ``database`` waits on a lock (the waiter thread got there)."""
    admin = create_engine(admin_url, poolclass=NullPool)
    try:
        with admin.connect() as conn:
            deadline = time.time() + timeout_s
            while not conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND "
                                        "wait_event_type = 'Lock'"), {"db": database}).scalar():
                assert time.time() < deadline, "the second UPDATE never waited on the first"
                conn.rollback()  # a new snapshot of pg_stat_activity
                time.sleep(0.02)
    finally:
        admin.dispose()
