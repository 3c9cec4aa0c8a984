"""Finished results wait on local disk until the server has them: a result is never lost because
the server (or the network) was down when the run ended."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Letter:
    """One report to deliver: ``kind`` is ``complete`` or ``fail``."""

    path: Path
    lease_id: str
    kind: str
    body: dict[str, Any]


class Outbox:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "rejected").mkdir(exist_ok=True)

    def put(self, lease_id: str, kind: str, body: dict[str, Any]) -> Letter:
        """Write atomically (temp file, fsync, rename), so a crash leaves no half letter."""
        path = self.directory / f"{lease_id}.{kind}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"lease_id": lease_id, "kind": kind, "body": body}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return Letter(path, lease_id, kind, body)

    def pending(self) -> list[Letter]:
        letters = []
        for path in sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime):
            data = json.loads(path.read_text())
            letters.append(Letter(path, data["lease_id"], data["kind"], data["body"]))
        return letters

    def delivered(self, letter: Letter) -> None:
        letter.path.unlink(missing_ok=True)

    def reject(self, letter: Letter, reason: str) -> None:
        """The server refused it for good (e.g. the lease had expired): keep it aside, with why."""
        target = self.directory / "rejected" / letter.path.name
        data = {"lease_id": letter.lease_id, "kind": letter.kind, "body": letter.body, "rejected": reason}
        target.write_text(json.dumps(data))
        letter.path.unlink(missing_ok=True)
