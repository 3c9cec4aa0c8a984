"""Field types shared by the resources' schemas."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

MAX_DOMAINS = 256
"""Most domains a study may have."""
MAX_ASK = 256
"""Most trials one ``ask`` may return."""
MAX_CURVE_POINTS = 10_000
"""Most loss-curve points one report may carry."""

Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"),
]
"""A domain, fidelity or metric name: letters, digits and ``_.:-``, at most 128 characters."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=0.0, le=1.0 + 1e-6, allow_inf_nan=False)]
Mixture = dict[Name, Weight]
"""``{domain: weight}``; the weights are non-negative and sum to 1 within 1e-6."""
LossValues = dict[Name, FiniteFloat]
