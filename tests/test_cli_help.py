"""CLI help reads as whole sentences: the summary of every command (its help's first paragraph,
which a group's command list shows) is one complete sentence on one line, and user-facing help
never points at files users do not have."""

from __future__ import annotations

import re

import click
import typer.main
from typer.testing import CliRunner

from service.cli import app


def _commands(cmd: click.Command, path: tuple[str, ...] = ("mixopt",)):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_command_summary_is_one_whole_sentence():
    bad = []
    for path, cmd in _commands(typer.main.get_command(app)):
        summary = (cmd.help or "").strip().split("\n\n")[0]
        if "\n" in summary or not summary.endswith(".") or len(summary) > 100:
            bad.append(f"{' '.join(path)}: {summary!r}")
    assert bad == []


def test_help_pages_render_without_cut_lines_or_outside_references():
    runner = CliRunner()
    for path, cmd in _commands(typer.main.get_command(app)):
        if path[-1] == "aioli":  # forwards --help to the benchmark script's own parser
            continue
        out = runner.invoke(app, [*path[1:], "--help"], env={"COLUMNS": "100", "TERM": "dumb"}).output
        assert "DESIGN" not in out and not re.search(r"\bissue \d", out), path
        for line in out.splitlines():  # a summary line broken mid-sentence leaves a one-word remnant
            text = line.strip("│ ").strip()
            assert not re.fullmatch(r"[\w,;:]+,", text), f"{' '.join(path)}: {line!r}"
