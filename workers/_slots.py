"""One state directory per running worker: a worker holds an exclusive lock on its directory for
as long as it runs, so two workers on one host never share an identity or an outbox."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class StateDirBusy(RuntimeError):
    """Another running worker holds this state directory."""


def lock_state_dir(state_dir: Path) -> IO[bytes]:
    """Lock ``state_dir`` (created if missing) for this process. Keep the returned file open for
    the process's lifetime: the lock goes with it, also when the process is killed.

    Raises:
        StateDirBusy: another live process holds it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    # Not `lock`: the worker image's entrypoint holds that one for the worker (an inherited
    # descriptor), and a second open of the same file by this process would conflict with it.
    f = open(state_dir / "worker.lock", "ab")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise StateDirBusy(f"another worker is running with the state directory {state_dir}") from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n".encode())
    f.flush()
    return f


def claim_default_name(base: str, workers_dir: Path, max_slots: int = 1024) -> tuple[str, Path, IO[bytes]]:
    """The first free name of ``base``, ``base-2``, ``base-3``, ... under ``workers_dir``.

    The first worker on a host is ``base``, a second one started beside it ``base-2``; a worker
    restarted after the first has exited takes ``base`` again, so it resumes that identity and
    delivers what its outbox kept.

    Returns:
        (name, its state directory, the open lock file to keep).
    """
    for k in range(1, max_slots + 1):
        name = base if k == 1 else f"{base}-{k}"
        try:
            return name, workers_dir / name, lock_state_dir(workers_dir / name)
        except StateDirBusy:
            continue
    raise StateDirBusy(f"{max_slots} workers named {base}-N are already running under {workers_dir}")
