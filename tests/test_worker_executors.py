"""Executors and the outbox, in-process: the command executor runs real subprocesses."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from workers._outbox import Outbox
from workers.executors import CommandExecutor, CommandFailed, ExecResult, Task

TASK = Task(trial_id=7, study_id=1, lease_id="L", mixture={"web": 0.25, "code": 0.75},
            fidelity={"name": "small", "model": "llama-1m", "tokens": 1000.0, "params": {}}, seed=3)


class Recorder:
    """The run context a daemon would give: records what the executor reports."""

    def __init__(self, stop_after: float | None = None):
        self.progress_calls, self.lines = [], []
        self.started = time.monotonic()
        self.stop_after = stop_after

    def should_stop(self) -> bool:
        return self.stop_after is not None and time.monotonic() - self.started > self.stop_after

    def progress(self, **fields):
        self.progress_calls.append(fields)

    def log(self, line: str) -> None:
        self.lines.append(line)

    def next_segment(self, losses, step=None):
        return None


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(body))
    return f"{sys.executable} {path}"


def test_command_receives_the_trial_and_its_results_are_read(tmp_path):
    cmd = _script(tmp_path, """
        import json, os, sys
        mixture = json.load(open(sys.argv[1]))
        assert json.loads(os.environ["MIXOPT_MIXTURE"]) == mixture
        assert os.environ["MIXOPT_SEED"] == "3" and os.environ["MIXOPT_MODEL"] == "llama-1m"
        print("MIXOPT_PROGRESS " + json.dumps({"step": 5, "total_steps": 10, "train_loss": 2.5}), flush=True)
        print("training on", mixture, flush=True)
        json.dump({"losses": {d: 3.0 - w for d, w in mixture.items()}, "metrics": {"ppl": 20.0}},
                  open(sys.argv[2], "w"))
    """)
    ctx = Recorder()
    result = CommandExecutor(cmd + " {mixture_file} {output}").run(TASK, ctx)
    assert result.losses == {"web": 2.75, "code": 2.25} and result.metrics == {"ppl": 20.0}
    assert {"step": 5, "total_steps": 10, "train_loss": 2.5} in ctx.progress_calls
    assert any("training on" in line for line in ctx.lines)


def test_failing_command_raises_with_its_last_lines(tmp_path):
    cmd = _script(tmp_path, "print('CUDA out of memory'); raise SystemExit(3)")
    with pytest.raises(CommandFailed, match="exited with 3(.|\\n)*CUDA out of memory"):
        CommandExecutor(cmd).run(TASK, Recorder())


def test_command_without_results_or_with_bad_results(tmp_path):
    with pytest.raises(CommandFailed, match="wrote no results"):
        CommandExecutor(_script(tmp_path, "pass")).run(TASK, Recorder())
    bad = _script(tmp_path, "import sys, json; json.dump({'loss': 1}, open(sys.argv[1], 'w'))")
    with pytest.raises(CommandFailed, match="results file"):
        CommandExecutor(bad + " {output}").run(TASK, Recorder())


def test_timeout_and_stop_kill_the_command(tmp_path):
    slow = _script(tmp_path, "import time; time.sleep(60)")
    t = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out"):
        CommandExecutor(slow, timeout_s=1).run(TASK, Recorder())
    assert time.monotonic() - t < 20
    result = CommandExecutor(slow).run(TASK, Recorder(stop_after=0.5))
    assert result.complete is False


def test_payload_is_json_even_with_nan_in_the_curve():
    r = ExecResult(losses={"web": 2.0}, metrics={"x": float("nan"), "y": 1.0},
                   curve=[{"step": 0, "train_loss": float("nan"), "losses": {"web": 3.0, "code": float("inf")}}])
    body = json.loads(json.dumps(r.payload(), allow_nan=False))
    assert body["metrics"] == {"y": 1.0} and body["curve"][0] == {"step": 0, "tokens": None, "train_loss": None,
                                                                   "losses": {"web": 3.0}}
    assert ExecResult(losses={"web": float("nan")}).diverged() == ["web"]


def test_long_curves_are_thinned_evenly():
    r = ExecResult(losses={"web": 2.0}, curve=[{"step": i, "losses": {"web": 1.0}} for i in range(25_001)])
    steps = [p["step"] for p in r.payload()["curve"]]
    assert len(steps) == 1000 and steps[0] == 0 and steps[-1] == 25_000
    assert max(b - a for a, b in zip(steps, steps[1:])) <= 26


def test_outbox_survives_and_rejects(tmp_path):
    box = Outbox(tmp_path / "outbox")
    box.put("a", "complete", {"losses": {"web": 1.0}})
    box.put("b", "fail", {"reason": "x", "retryable": True})
    again = Outbox(tmp_path / "outbox")  # a restarted worker finds them
    letters = again.pending()
    assert [(x.lease_id, x.kind) for x in letters] == [("a", "complete"), ("b", "fail")]
    again.delivered(letters[0])
    again.reject(letters[1], "409 lease expired")
    assert again.pending() == []
    assert json.loads((tmp_path / "outbox" / "rejected" / "b.fail.json").read_text())["rejected"] == "409 lease expired"
