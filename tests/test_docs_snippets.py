"""The code blocks of README.md and docs/*.md that are marked ``<!-- test -->`` run as written.

The convention (docs/development.md explains it for writers): an HTML comment on the line before a
fenced ``python`` or ``bash`` block marks it:

- ``<!-- test -->``: run the block; it must exit 0 (within 300 s).
- ``<!-- test: timeout=600 -->``: the same, with another time limit in seconds.
- ``<!-- test: background -->``: start it (one command: a worker, say) and leave it running while the page's
  next blocks run; it gets SIGTERM after the page's last block and must then exit 0.

The marked blocks of one page run in order, as one reader would, in one scratch directory,
against one real ``mixopt server`` (a fresh SQLite database) started for the page. ``localhost:8000``
and ``127.0.0.1:8000`` in a block mean that server; ``mixopt`` is on the PATH, ``MIXOPT_URL``,
``MIXOPT_DATA_DIR`` (where a local worker finds the join secret) and ``MIXOPT_JOIN_SECRET`` are set.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.testing import ServerProcess
from tests.conftest import JOIN_SECRET, ROOT

MARKED = re.compile(r"^<!--\s*test(?::\s*(?P<opts>[^>]*?))?\s*-->[ \t]*\n```(?P<lang>python|bash)[ \t]*\n"
                    r"(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LOCAL_SERVER = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    background: bool = False
    timeout: float = 300.0
    opts: list[str] = field(default_factory=list)


def marked_blocks(path: Path) -> list[Block]:
    """The marked blocks of one Markdown file, in order."""
    text = path.read_text()
    blocks = []
    for m in MARKED.finditer(text):
        block = Block(str(path.relative_to(ROOT)), text.count("\n", 0, m.start("code")) + 1, m["lang"], m["code"])
        for opt in (m["opts"] or "").split():
            if opt == "background":
                block.background = True
            elif opt.startswith("timeout="):
                block.timeout = float(opt.removeprefix("timeout="))
            else:
                raise ValueError(f"{block.page}:{block.line - 2}: unknown test option {opt!r}")
        blocks.append(block)
    return blocks


PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if marked_blocks(p)]


def test_the_usage_page_has_marked_blocks():
    """The collection itself works (a broken marker pattern would silently run nothing)."""
    blocks = marked_blocks(ROOT / "docs" / "usage.md")
    assert [b.lang for b in blocks][:2] == ["bash", "python"]
    assert "study_id" in blocks[1].code and "my_trainer" in blocks[1].code


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_marked_blocks_run(page: Path, tmp_path: Path):
    server = ServerProcess(f"sqlite:///{tmp_path / 'docs.db'}", tmp_path / "server.log", join_secret=JOIN_SECRET,
                           MIXOPT_SWEEP_INTERVAL_S="0.5", MIXOPT_RECOMMEND_INTERVAL_S="0").start()
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    (bin_dir / "mixopt").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m service "$@"\n')
    (bin_dir / "mixopt").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "MIXOPT_URL": server.url, "MIXOPT_DATA_DIR": server.env["MIXOPT_DATA_DIR"],
           "MIXOPT_JOIN_SECRET": JOIN_SECRET, "MIXOPT_LOG_LEVEL": "INFO"}
    background: list[tuple[Block, subprocess.Popen, Path]] = []
    try:
        for k, block in enumerate(marked_blocks(page)):
            script = work.parent / f"block-{k}.{'py' if block.lang == 'python' else 'sh'}"
            code = LOCAL_SERVER.sub(server.url.removeprefix("http://"), block.code)
            if block.background and block.lang == "bash":
                # bash dies of an untrapped SIGTERM without waiting for its command: hand the signal
                # to the command and exit with the command's own status.
                code = f"{code.strip()} &\npid=$!\ntrap 'kill -TERM $pid; wait $pid; exit $?' TERM\nwait $pid\n"
            script.write_text(code)
            cmd = [sys.executable, str(script)] if block.lang == "python" else ["bash", "-euo", "pipefail", str(script)]
            log = work.parent / f"block-{k}.log"
            where = f"{block.page}:{block.line}"
            if block.background:
                background.append((block, subprocess.Popen(cmd, cwd=work, env=env, stdout=open(log, "wb"),
                                                           stderr=subprocess.STDOUT), log))
                continue
            try:
                done = subprocess.run(cmd, cwd=work, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                      timeout=block.timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{where}: still running after {block.timeout:.0f} s:\n{log.read_text()[-3000:]}")
            assert done.returncode == 0, f"{where} exited with {done.returncode}:\n{log.read_text()[-3000:]}"
    finally:
        ended = []
        for block, proc, log in background:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "killed after 60 s"
            ended.append((block, rc, log))
        server.stop()  # before any assertion, so that a failed page leaves no server behind
    for block, rc, log in ended:
        assert rc == 0, f"{block.page}:{block.line} (background) ended with {rc}:\n{log.read_text()[-3000:]}"
