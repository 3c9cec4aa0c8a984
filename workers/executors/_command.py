"""Run any training command (Megatron, torchtitan, your own script) as a trial.

The command is a template: ``{mixture_json}``, ``{mixture_file}``, ``{fidelity_json}``, ``{model}``,
``{tokens}``, ``{seed}``, ``{output}``, ``{trial_id}`` are substituted, and the same values are in
the environment as ``MIXOPT_MIXTURE`` (JSON), ``MIXOPT_MIXTURE_FILE``,
``MIXOPT_FIDELITY`` (JSON), ``MIXOPT_MODEL``, ``MIXOPT_TOKENS``, ``MIXOPT_SEED``, ``MIXOPT_OUTPUT``,
``MIXOPT_TRIAL_ID``. The command must write ``{"losses": {...}, "metrics": {...}}`` to the output
path. Its output is streamed to the worker's log and its tail sent with heartbeats; it is killed
after ``timeout_s`` or when the run must stop. A line ``MIXOPT_PROGRESS {"step": ..., ...}`` on
its stdout is forwarded as progress.

No shell runs the command: the template is split into arguments once (``shlex.split``), each
placeholder is substituted inside its own argument, and the program is started with that argument
list. A study's values (its model, its trainer parameters) thus never meet a shell parser, whatever
they contain. Templates that would hand them to one anyway are refused when the executor is made:
a placeholder inside quotes (the quotes would be passed literally, and they suggest shell intent),
shell syntax (``|``, ``;``, ``&``, ``>``, ``<``, ``$``, backquotes), or a placeholder given to
``sh -c``/``bash -c``. Pipelines, redirections and ``cd`` go into a script the template runs.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import string
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import ClassVar

from ._base import BaseExecutor, ExecResult, RunContext, Task

PROGRESS_PREFIX = "MIXOPT_PROGRESS "
PLACEHOLDERS = ("mixture_json", "mixture_file", "fidelity_json", "model", "tokens", "seed", "output", "trial_id")
SHELL_SYNTAX = set("|;&<>$`")
"""Characters that mean something only to a shell: a template holding them expects one."""
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "fish", "csh", "tcsh"}


class CommandFailed(RuntimeError):
    pass


def parse_template(template: str) -> list[str]:
    """The template's arguments, placeholders left in. Raises ``ValueError`` for a template that
    would pass a study's values through a shell (see the module's docstring) or names an unknown
    placeholder."""
    try:
        argv = shlex.split(template)
        raw = list(shlex.shlex(template, posix=False, punctuation_chars=False))
    except ValueError as e:
        raise ValueError(f"command template: {e}") from None
    if not argv:
        raise ValueError("command template is empty")
    for item in argv:
        for _, name, spec, conv in string.Formatter().parse(item):
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conv:
                raise ValueError(f"command template: unknown placeholder {{{name}}}; known: "
                                 + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    if SHELL_SYNTAX & set(template.replace("{", "").replace("}", "")):
        raise ValueError("command template: no shell runs the command, so shell syntax (| ; & < > $ `) "
                         "does not work; put pipelines, redirections and variables into a script and run that")
    if any(("{" in token) and ("'" in token or '"' in token) for token in raw):
        raise ValueError("command template: placeholders must not be quoted: each is passed as one argument "
                         "as it is, without a shell")
    if os.path.basename(argv[0]) in SHELLS and any("{" in item for item in argv[1:]):
        raise ValueError("command template: placeholders must not go to a shell (sh -c ...): run the program "
                         "directly, or read the MIXOPT_* environment variables in your script")
    return argv


class CommandExecutor(BaseExecutor):
    name: ClassVar[str] = "command"

    def __init__(self, template: str, timeout_s: float = 24 * 3600.0, workdir: str | Path | None = None,
                 log_lines: int = 200):
        if not template.strip():
            raise ValueError("command template is empty")
        self.template = template
        self.argv = parse_template(template)
        self.timeout_s = timeout_s
        self.workdir = Path(workdir) if workdir else None
        self.log_lines = log_lines

    def run(self, task: Task, ctx: RunContext) -> ExecResult:
        with tempfile.TemporaryDirectory(prefix=f"mixopt-trial-{task.trial_id}-") as tmp:
            output = Path(tmp) / "results.json"
            mixture_file = Path(tmp) / "mixture.json"
            mixture_file.write_text(json.dumps(task.mixture))
            values = {
                "mixture_json": json.dumps(task.mixture), "mixture_file": str(mixture_file),
                "fidelity_json": json.dumps(task.fidelity), "model": str(task.fidelity.get("model") or ""),
                "tokens": str(int(task.fidelity["tokens"])) if task.fidelity.get("tokens") else "",
                "seed": str(task.seed), "output": str(output), "trial_id": str(task.trial_id),
            }
            argv = [item.format(**values) for item in self.argv]
            env = {**os.environ, **{f"MIXOPT_{k.upper()}": v for k, v in {
                "mixture": values["mixture_json"], "mixture_file": values["mixture_file"],
                "fidelity": values["fidelity_json"], "model": values["model"], "tokens": values["tokens"],
                "seed": values["seed"], "output": values["output"], "trial_id": values["trial_id"]}.items()}}
            ctx.log(f"$ {shlex.join(argv)}")
            start = time.monotonic()
            proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
            tail: deque[str] = deque(maxlen=self.log_lines)
            reader = threading.Thread(target=self._pump, args=(proc, ctx, tail), daemon=True)
            reader.start()
            stopped = timed_out = False
            while proc.poll() is None:
                stopped = ctx.should_stop()
                timed_out = time.monotonic() - start > self.timeout_s
                if stopped or timed_out:
                    self._kill(proc)
                    break
                time.sleep(0.1)
            reader.join(5)
            wall = time.monotonic() - start
            if stopped:
                return ExecResult(losses={}, wall_s=wall, complete=False)
            if timed_out:
                raise CommandFailed(f"command timed out after {self.timeout_s:.0f} s; last lines:\n" + "\n".join(tail))
            if proc.returncode != 0:
                raise CommandFailed(f"command exited with {proc.returncode}; last lines:\n" + "\n".join(list(tail)[-20:]))
            if not output.exists():
                raise CommandFailed(f"command wrote no results to {output}")
            try:
                data = json.loads(output.read_text())
                losses = {str(k): float(v) for k, v in data["losses"].items()}
                metrics = {str(k): float(v) for k, v in data.get("metrics", {}).items()}
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CommandFailed(f"results file is not {{'losses': {{...}}, 'metrics': {{...}}}}: {e}") from e
            return ExecResult(losses=losses, metrics=metrics, wall_s=wall, tokens=data.get("tokens"),
                              curve=list(data.get("curve", [])))

    @staticmethod
    def _pump(proc: subprocess.Popen, ctx: RunContext, tail: deque[str]) -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if line.startswith(PROGRESS_PREFIX):
                try:
                    ctx.progress(**json.loads(line[len(PROGRESS_PREFIX):]))
                except (ValueError, TypeError):
                    pass
            ctx.log(line)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
