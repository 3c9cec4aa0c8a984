"""``advance`` runs the strategy outside any transaction, so results may arrive while it computes.
A strategy that proposed nothing because it was waiting for those results must be asked again,
not taken as finished (the chaos run caught a RegMix study completed without its verification
runs: the last design result landed while ``propose`` was returning "wait")."""

from __future__ import annotations

from service.db import Database, Study, StudyState
from service.engine import _studies, advance, change_state, create_study, load_trials, report_result
from service.engine._trials import grant_lease
from service.schemas.studies import StudyCreate
from service.schemas.trials import ResultCreate
from tests.helpers import known_losses, study_body

REGMIX = {"n_initial": 4, "regressor": "linear", "n_simulated": 200, "top_k": 4, "n_verify": 2}


def _report(db: Database, study_id: int, trial_id: int) -> None:
    """Lease the trial if it is not yet, and report its known losses."""
    with db.session() as s:
        trial = next(t for t in load_trials(s, study_id) if t.id == trial_id)
        lease_id = trial.lease_id or grant_lease(s, trial, 60.0).id
        mixture, fidelity = dict(trial.mixture), trial.fidelity.name
    report_result(db, trial_id, ResultCreate(losses=known_losses(mixture, fidelity), lease_id=lease_id))


def test_a_result_that_lands_while_the_strategy_waits_for_it_does_not_end_the_study(migrated_url, monkeypatch):
    db = Database(migrated_url)
    body = StudyCreate.model_validate(study_body(strategy={"name": "regmix", "params": REGMIX}, parallelism=4,
                                                 budget={"max_trials": 6}, dispatch="ask"))
    with db.session() as s:
        sid = create_study(s, body).id
    change_state(db, sid, "start")
    advance(db, sid)
    with db.session() as s:
        design = [t.id for t in load_trials(s, sid)]
    assert len(design) == 4
    for t in design[:3]:
        _report(db, sid, t)
    with db.session() as s:  # the last design trial is out on a lease
        last = next(t for t in load_trials(s, sid) if t.id == design[3])
        grant_lease(s, last, 60.0)

    real = _studies.strategy_for
    calls = []

    def strategy_whose_wait_ends_meanwhile(study, space):
        strategy = real(study, space)
        propose = strategy.propose

        def propose_then_the_result_lands(history, n):
            out = propose(history, n)  # "wait": a design trial is pending
            calls.append(len(out))
            if len(calls) == 1:
                _report(db, sid, design[3])
            return out

        strategy.propose = propose_then_the_result_lands
        return strategy

    monkeypatch.setattr(_studies, "strategy_for", strategy_whose_wait_ends_meanwhile)
    assert advance(db, sid)
    with db.session() as s:
        state = s.get(Study, sid).state
        trials = load_trials(s, sid)
    db.dispose()
    assert calls[0] == 0, "the strategy waited for the pending design trial"
    assert state == StudyState.running, "the study completed without asking the strategy with the new result"
    after = [t.strategy_meta.get("phase") for t in trials[4:]]
    assert after and set(after) == {"verify"}, after
