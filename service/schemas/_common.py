"""Field types shared by the resources' schemas, and the limits on what one request may carry.

Every input is bounded: strings, lists, maps, numbers that reach 32/64-bit database columns, and
the nesting of free-form JSON (strategy and trainer parameters, worker capabilities). Whatever
exceeds a bound is a 422 naming the field; the body as a whole is bounded by the server's
``max_body_bytes`` setting (413).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

MAX_DOMAINS = 256
"""Most domains a study may have."""
MAX_ASK = 256
"""Most trials one ``ask`` may return."""
MAX_CURVE_POINTS = 10_000
"""Most loss-curve points one report may carry."""
MAX_METRICS = 256
"""Most metrics one result may carry."""
MAX_ID = 2**31 - 1
"""Largest id, step or index: they live in 32-bit columns on Postgres."""
MAX_COUNT = 2**63 - 1
"""Largest token count (a 64-bit column)."""
MAX_JSON_DEPTH = 16
"""Deepest nesting of a free-form JSON value (``{"a": [1]}`` has depth 2)."""
MAX_JSON_ITEMS = 100_000
"""Most values (scalars, list items, object members) in one free-form JSON value."""
MAX_JSON_STRING = 100_000
"""Longest string (or object key, at most 256) inside a free-form JSON value."""
MAX_JSON_KEY = 256

Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"),
]
"""A domain, fidelity or metric name: letters, digits and ``_.:-``, at most 128 characters."""

LEASE_ID_PATTERN = r"^[A-Za-z0-9-]+$"
"""A lease id (a UUID): checked before it reaches a query, so that no byte of it can upset the driver."""

DbId = Annotated[int, Field(ge=0, le=MAX_ID)]
"""A non-negative integer that fits a 32-bit column (ids, steps, indices)."""
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
"""A non-negative integer that fits a 64-bit column (token counts)."""

MAX_LOSS = 1e6
"""Largest loss a result may carry: validation losses are cross-entropies of a few nats, and the
strategies' models overflow on values near the float range (a diverged run reports a failure)."""

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A finite number: a JSON number (integers included), never a string (``"1.0"``) or a boolean."""
Weight = Annotated[float, Field(ge=0.0, le=1.0 + 1e-6, allow_inf_nan=False)]
Mixture = Annotated[dict[Name, Weight], Field(max_length=MAX_DOMAINS)]
"""``{domain: weight}``; the weights are non-negative and sum to 1 within 1e-6."""
Loss = Annotated[float, Field(strict=True, ge=0.0, le=MAX_LOSS, allow_inf_nan=False)]
"""A validation loss: a JSON number in ``[0, MAX_LOSS]``."""
LossValues = Annotated[dict[Name, Loss], Field(max_length=MAX_DOMAINS)]
Metrics = Annotated[dict[Name, FiniteFloat], Field(max_length=MAX_METRICS)]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
"""C0 control characters and DEL, except tab and newline (NUL breaks Postgres text columns; the
others break logs, terminals and CSV readers)."""
_CONTROL_LINE = re.compile(r"[\x00-\x1f\x7f]")


def has_control_chars(text: str, *, multiline: bool = False) -> bool:
    """Whether ``text`` holds a control character: any, or (``multiline``) any but tab and newline."""
    return (_CONTROL if multiline else _CONTROL_LINE).search(text) is not None


def _no_control(text: str) -> str:
    if has_control_chars(text):
        raise ValueError("must not contain control characters (NUL, newlines, escapes)")
    return text


def _no_control_multiline(text: str) -> str:
    if has_control_chars(text, multiline=True):
        raise ValueError("must not contain control characters other than tab and newline (NUL, escapes)")
    return text


Text = Annotated[str, AfterValidator(_no_control)]
"""One line of free text (a name, a client): no control characters (422 naming the field)."""
LongText = Annotated[str, AfterValidator(_no_control_multiline)]
"""Free text over several lines (a reason, a log tail): tab and newline allowed, no other control character."""


def check_free_json(value: Any) -> Any:
    """Bound a free-form JSON value: depth, number of items, string and key lengths, finite
    numbers. Raises ``ValueError`` (a 422 naming the field) with what was exceeded and where."""
    items = 0
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, where = stack.pop()
        items += 1
        if items > MAX_JSON_ITEMS:
            raise ValueError(f"more than {MAX_JSON_ITEMS} values")
        if isinstance(node, (dict, list)) and depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels (at {where or 'the top'})")
        if isinstance(node, dict):
            for k, v in node.items():
                if len(k) > MAX_JSON_KEY:
                    raise ValueError(f"key longer than {MAX_JSON_KEY} characters (at {where or 'the top'})")
                if has_control_chars(k):
                    raise ValueError(f"key with control characters (at {where or 'the top'})")
                stack.append((v, depth + 1, f"{where}.{k}" if where else k))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}.{i}" if where else str(i)) for i, v in enumerate(node))
        elif isinstance(node, str) and len(node) > MAX_JSON_STRING:
            raise ValueError(f"string longer than {MAX_JSON_STRING} characters (at {where or 'the top'})")
        elif isinstance(node, str) and has_control_chars(node, multiline=True):
            raise ValueError(f"string with control characters other than tab and newline (at {where or 'the top'})")
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"non-finite number (at {where or 'the top'})")
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > MAX_COUNT:
            raise ValueError(f"integer beyond 64 bits (at {where or 'the top'})")
    return value


FreeJSON = Annotated[dict[str, Any], AfterValidator(check_free_json)]
"""A free-form JSON object (parameters), bounded by :func:`check_free_json`."""
