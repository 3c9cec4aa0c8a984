"""Workers on one host without ``--name`` get an identity, a state directory and an outbox each;
a restarted worker resumes its identity."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import JOIN_SECRET, ROOT, wait_for


def _worker(server_url: str, data_dir: Path, log: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "service", "worker", "--url", server_url, "--join-secret", JOIN_SECRET,
           "--executor", "synthetic", "--poll-wait", "0.5", "--device", "cpu", *args]
    env = {**os.environ, "MIXOPT_DATA_DIR": str(data_dir), "MIXOPT_LOG_LEVEL": "INFO"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)


def _identity(log: Path) -> tuple[str, int] | None:
    m = re.search(r"worker (\S+) (?:registered|resumes) as id (\d+)", log.read_text() if log.exists() else "")
    return (m.group(1), int(m.group(2))) if m else None


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(30) == 0


def test_two_workers_without_name_get_their_own_identity_and_a_restart_resumes(sqlite_url, server_factory, tmp_path):
    server = server_factory(sqlite_url).start()
    data = tmp_path / "worker-data"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = _worker(server.url, data, logs[0])
    wait_for(lambda: _identity(logs[0]), 60, what="the first worker to register")
    b = _worker(server.url, data, logs[1])
    try:
        (name_a, id_a), (name_b, id_b) = _identity(logs[0]), wait_for(lambda: _identity(logs[1]), 60, what="b")
        assert name_a != name_b and id_a != id_b
        assert name_b == f"{name_a}-2"
        workers = httpx.get(f"{server.url}/api/v1/workers").json()["items"]
        assert {w["name"] for w in workers} == {name_a, name_b}
        # each has its own state directory: identity file and outbox
        saved = {json.loads((data / "workers" / n / "worker.json").read_text())["id"] for n in (name_a, name_b)}
        assert saved == {id_a, id_b}
        assert (data / "workers" / name_a / "outbox").is_dir() and (data / "workers" / name_b / "outbox").is_dir()
    finally:
        _stop(a, b)

    # restarted alone, a worker without --name takes the first slot again and resumes that identity
    again = tmp_path / "again.log"
    c = _worker(server.url, data, again)
    try:
        wait_for(lambda: _identity(again), 60, what="the restarted worker")
        assert _identity(again) == (name_a, id_a)
        assert f"resumes as id {id_a}" in again.read_text()
    finally:
        _stop(c)


def test_same_name_twice_at_once_is_refused_and_a_named_restart_resumes(sqlite_url, server_factory, tmp_path):
    server = server_factory(sqlite_url).start()
    data = tmp_path / "worker-data"
    first, second, third = tmp_path / "1.log", tmp_path / "2.log", tmp_path / "3.log"
    a = _worker(server.url, data, first, "--name", "gpu-node-7")
    try:
        _, id_a = wait_for(lambda: _identity(first), 60, what="the named worker")
        b = _worker(server.url, data, second, "--name", "gpu-node-7")
        assert b.wait(60) != 0
        assert "another worker is running with the state directory" in second.read_text()
    finally:
        _stop(a)
    c = _worker(server.url, data, third, "--name", "gpu-node-7")
    try:
        wait_for(lambda: _identity(third), 60, what="the restarted named worker")
        assert _identity(third) == ("gpu-node-7", id_a)
    finally:
        _stop(c)
