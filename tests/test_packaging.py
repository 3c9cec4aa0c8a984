"""Packaging metadata that setuptools accepts without deprecation warnings."""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # A table (`{text = ...}`) is deprecated since setuptools 77, which reads SPDX strings.
    assert meta["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in meta["build-system"]["requires"]
