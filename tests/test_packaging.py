"""Packaging metadata that setuptools accepts without deprecation warnings."""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # A table (`{text = ...}`) is deprecated since setuptools 77, which reads SPDX strings.
    assert meta["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in meta["build-system"]["requires"]


def test_no_torch_jit_in_our_code():
    """The torch.jit deprecation warning is filtered in pytest's settings because only a
    dependency (linear_operator) triggers it; this keeps our own code from hiding behind it."""
    ours = [p for d in ("service", "workers", "proxy_models", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    assert ours
    assert [str(p) for p in ours if "torch.jit" in p.read_text() or "@jit" in p.read_text()] == []
