"""Attacks through the command executor: a study's values must never reach a shell."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from workers.executors import CommandExecutor, Task
from workers.executors._command import parse_template

from .test_worker_executors import Recorder


def _task(tmp_path, **fidelity) -> Task:
    marker = tmp_path / "pwned"
    evil = f"$(touch {marker}); `touch {marker}`; touch {marker} #'\""
    return Task(trial_id=1, study_id=1, lease_id="L", mixture={"web": 1.0},
                fidelity={"name": "f", "model": evil, "tokens": 1000.0, "params": {"lr": evil}, **fidelity}, seed=0)


def test_study_values_with_shell_syntax_are_passed_as_plain_arguments(tmp_path):
    """The attack: a write token creates a study whose model and fidelity params hold command
    substitutions; the worker's template substitutes them. Nothing may be executed, and the
    trainer receives the values byte for byte."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        json.dump({"losses": {"web": 1.0}, "metrics": {}, "argv": sys.argv[1:]}, open(sys.argv[-1], "w"))
        print(json.dumps(sys.argv[1:]))
    """))
    task = _task(tmp_path)
    ctx = Recorder()
    template = f"{sys.executable} {script} --model {{model}} --fidelity {{fidelity_json}} --mix={{mixture_json}} {{output}}"
    result = CommandExecutor(template).run(task, ctx)
    assert result.losses == {"web": 1.0}
    assert not (tmp_path / "pwned").exists()
    argv = json.loads(next(line for line in ctx.lines if line.startswith("[")))
    assert argv[1] == task.fidelity["model"]
    assert json.loads(argv[3]) == task.fidelity
    assert argv[4] == "--mix=" + json.dumps(task.mixture)


@pytest.mark.parametrize("template, why", [
    ("python train.py --fidelity '{fidelity_json}'", "quoted"),
    ('python train.py --model "{model}"', "quoted"),
    ("python train.py --fidelity='{fidelity_json}'", "quoted"),
    ("sh -c 'python train.py {model}'", "quoted"),
    ("bash -c {fidelity_json}", "shell"),
    ("python train.py {output} | tee log", "shell syntax"),
    ("cd /x && python train.py {output}", "shell syntax"),
    ("python train.py $(cat {output})", "shell syntax"),
    ("python train.py {output} > log.txt", "shell syntax"),
    ("python train.py {secret}", "unknown placeholder"),
    ("python train.py {0}", "unknown placeholder"),
    ("python train.py {model!r}", "unknown placeholder"),
    ("python train.py 'unterminated", "closing quotation"),
])
def test_templates_that_would_hand_values_to_a_shell_are_refused(template, why):
    """The attack's precondition: an operator's template quotes a placeholder (or pipes, or runs
    sh -c); such templates are refused when the worker starts, not at the first trial."""
    with pytest.raises(ValueError, match=why):
        CommandExecutor(template)


def test_documented_templates_still_parse():
    for t in ("python train.py --mix {mixture_file} --out {output}",
              "torchrun --nproc_per_node 8 train.py --mixture {mixture_file} --out {output}",
              "python train_proxy.py --mixture {mixture_file} --model {model} --tokens {tokens} --seed {seed} --out {output}"):
        assert "{output}" in parse_template(t)[-1]
