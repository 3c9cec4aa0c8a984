"""What a study may ask of a worker's trainer: a fidelity's ``model`` and ``params``, checked at
study creation (422 naming the field) instead of failing, or worse, on every worker.

For the built-in proxy trainer (``model`` a proxy preset, or none), ``params`` are the trainer's
settings (``proxy_models.TrainConfig``), typed and bounded; anything else is refused. A fidelity
whose ``model`` is not a proxy preset is for a ``command`` executor's own trainer: there the
trainer's settings are still checked when present, and other keys are free but each value must be
a JSON scalar (a finite number, a boolean, null, or a string of at most ``MAX_PARAM_STRING``
printable characters): no nested values, no control characters. None of it reaches a shell (the
command executor passes values as plain arguments), and the settings that name places on the
worker (``tokenizer``) or its hardware (``device``, ``threads``) belong to the worker, not to a study.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError

from ._common import MAX_COUNT, has_control_chars

MAX_PARAM_STRING = 1000
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/+\-]*$"
"""A fidelity's model name: letters, digits and ``_.:/+-`` (``llama-1m``, ``meta/llama-3-8b``)."""

WORKER_OWNED = {
    "tokenizer": "a path on the worker: set it on the worker (mixopt worker --tokenizer), not in a study",
    "device": "the worker's hardware: set it on the worker (mixopt worker --device)",
    "threads": "the worker's hardware: set it on the worker (mixopt worker --threads)",
}

Number = StrictInt | StrictFloat


def _int(lo: int, hi: int):
    return Annotated[StrictInt, Field(ge=lo, le=hi)]


def _float(lo: float, hi: float, *, open_low: bool = False):
    return Annotated[Number, Field(gt=lo, le=hi) if open_low else Field(ge=lo, le=hi)]


class TrainerParams(BaseModel):
    """The proxy trainer's settings a study may set (``proxy_models.TrainConfig``, bounded so that
    no study can ask a worker for an absurd allocation: a 10^8 batch, a 10^9 vocabulary)."""

    model_config = ConfigDict(extra="forbid")

    steps: _int(1, 10**9) | None = None
    batch_size: _int(1, 65_536) | None = None
    seq_len: _int(1, 131_072) | None = None
    lr: _float(0, 1, open_low=True) | None = None
    min_lr_ratio: _float(0, 1) | None = None
    warmup: _int(0, 10**9) | None = None
    schedule: Literal["cosine", "wsd", "constant"] | None = None
    decay_fraction: _float(0, 1) | None = None
    weight_decay: _float(0, 100) | None = None
    beta1: _float(0, 1) | None = None
    beta2: _float(0, 1) | None = None
    grad_clip: _float(0, 1e6) | None = None
    eval_every: _int(0, 10**9) | None = None
    eval_tokens: _int(1, 10**10) | None = None
    seed: _int(0, 2**31 - 1) | None = None
    dtype: Literal["auto", "bf16", "fp32"] | None = None
    compile: StrictBool | None = None
    vocab_size: _int(256, 1_048_576) | None = None
    val_fraction: _float(0, 0.5) | None = None
    test_fraction: _float(0, 0.9) | None = None
    progress_every: _int(1, 10**9) | None = None


def is_proxy_model(model: str | None) -> bool:
    """Whether ``model`` is for the built-in trainer: none (its default) or a proxy preset."""
    if model is None:
        return True
    try:
        from proxy_models import PRESETS
    except ImportError:  # a server without the trainer installed: only the name pattern is known
        return model.startswith("llama-")
    return model in PRESETS


def check_trainer_params(model: str | None, params: dict[str, Any]) -> None:
    """Raise ``ValueError("FIELD: why")`` (``model`` or ``params.KEY``) for a value no worker should be sent."""
    if model is not None and not re.match(MODEL_PATTERN, model):
        raise ValueError("model: letters, digits and _.:/+- only, starting with a letter or digit")
    for key, why in WORKER_OWNED.items():
        if key in params:
            raise ValueError(f"params.{key}: {why}")
    known = set(TrainerParams.model_fields)
    typed = {k: v for k, v in params.items() if k in known}
    free = {k: v for k, v in params.items() if k not in known}
    if free and is_proxy_model(model):
        key = sorted(free)[0]
        raise ValueError(f"params.{key}: unknown setting of the proxy trainer; known: {', '.join(sorted(known))}")
    try:
        TrainerParams.model_validate(typed)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"][:1])
        raise ValueError(f"params.{where}: {err['msg']}") from None
    for key, value in free.items():
        if isinstance(value, str):
            if len(value) > MAX_PARAM_STRING or has_control_chars(value):
                raise ValueError(f"params.{key}: a string of at most {MAX_PARAM_STRING} printable characters")
        elif isinstance(value, int) and abs(value) > MAX_COUNT:
            raise ValueError(f"params.{key}: integer beyond 64 bits")
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise ValueError(f"params.{key}: a command trainer's setting must be a JSON scalar (number, "
                             "boolean, null or string), not an object or a list")
