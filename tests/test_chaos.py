"""Chaos with real processes on Postgres (benchmarks/chaos.py): worker processes SIGKILLed at
random every few seconds and restarted, the server SIGKILLed and restarted once. Every trial is
completed exactly once with the result its worker computed, no lease outlives its expiry by more
than the sweep interval, and the final recommendation equals an undisturbed run's."""

from __future__ import annotations

import pytest

from benchmarks.chaos import run_chaos


def _assert_nothing_lost_or_doubled(figures: dict, trials: int) -> None:
    assert figures["study_state"] == "completed", figures
    assert figures["trials"] == figures["completed"] == trials, figures
    assert figures["lost"] == 0 and figures["duplicates"] == 0, figures
    assert figures["mismatched_results"] == 0, figures
    assert figures["kills"] >= 3 and figures["restarts"] >= 3 and figures["server_restarts"] == 1, figures
    # sampled every 0.2 s: an overrun of the sweep interval plus one sample period is the bound
    assert figures["lease_samples"] > 10
    assert figures["max_lease_overrun_s"] <= figures["sweep_interval_s"] + 0.5, figures
    assert figures["recommendation_matches_undisturbed"], (figures["recommendation"], figures["undisturbed_recommendation"])


def test_chaos_reduced(postgres_server, tmp_path):
    # ~10 s of training with a kill every 2 s: enough chaos to count even on an idle machine
    figures = run_chaos(postgres_server, trials=40, workers=4, trial_seconds=1.0, n_verify=4, kill_every_s=2.0,
                        workdir=tmp_path, progress=False)
    _assert_nothing_lost_or_doubled(figures, 40)


@pytest.mark.slow
def test_chaos_full(postgres_server, tmp_path):
    figures = run_chaos(postgres_server, trials=208, workers=8, trial_seconds=1.0, n_verify=8, kill_every_s=3.0,
                        workdir=tmp_path, progress=False)
    _assert_nothing_lost_or_doubled(figures, 208)
