"""``advance`` runs the strategy outside any transaction, so results may arrive while it computes.
A strategy that proposed nothing because it was waiting for those results must be asked again,
not taken as finished (the chaos run caught a RegMix study completed without its verification
runs: the last design result landed while ``propose`` was returning "wait")."""

from __future__ import annotations

import threading

import pytest

from service.db import Database, Recommendation, Study, StudyState, TrialState
from service.engine import _studies, advance, change_state, create_study, load_trials, report_result
from service.engine._studies import get_study, latest_recommendation, refresh_recommendation
from service.engine._trials import grant_lease
from service.schemas.studies import StudyCreate
from service.schemas.trials import ResultCreate
from tests import _slow_strategy
from tests.helpers import DOMAINS, known_losses, study_body

REGMIX = {"n_initial": 4, "regressor": "linear", "n_simulated": 200, "top_k": 4, "n_verify": 2}


def _report(db: Database, study_id: int, trial_id: int) -> None:
    """Lease the trial if it is not yet, and report its known losses."""
    with db.session() as s:
        trial = next(t for t in load_trials(s, study_id) if t.id == trial_id)
        lease_id = trial.lease_id or grant_lease(s, trial, 60.0).id
        mixture, fidelity = dict(trial.mixture), trial.fidelity.name
    report_result(db, trial_id, ResultCreate(losses=known_losses(mixture, fidelity), lease_id=lease_id))


def _wrap_propose(monkeypatch, wrap) -> None:
    """Every strategy ``advance`` builds proposes through ``wrap(propose)``."""
    real = _studies.strategy_for

    def strategy_for(study, space):
        strategy = real(study, space)
        strategy.propose = wrap(strategy.propose)
        return strategy

    monkeypatch.setattr(_studies, "strategy_for", strategy_for)


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

    calls = []

    def then_the_result_lands(propose):
        def propose_then_the_result_lands(history, n):
            out = propose(history, n)  # "wait": a design trial is pending
            calls.append(len(out))
            if len(calls) == 1:
                _report(db, sid, design[3])
            return out
        return propose_then_the_result_lands

    _wrap_propose(monkeypatch, then_the_result_lands)
    # the strategy computes outside a transaction (as a slow one does), so that a result can land
    monkeypatch.setattr(_studies, "QUICK_PROPOSE_S", 0.0)
    assert advance(db, sid)
    with db.session() as s:
        state = s.get(Study, sid).state
        trials = load_trials(s, sid)
    db.dispose()
    assert calls[0] == 0, "the strategy waited for the pending design trial"
    assert state == StudyState.running, "the study completed without asking the strategy with the new result"
    after = [t.strategy_meta.get("phase") for t in trials[4:]]
    assert after and set(after) == {"verify"}, after


def _same(a, b) -> bool:
    return (a.trial_id, a.fidelity, a.state, a.objective, a.losses, a.pool_index, a.meta, a.segments) == (
        b.trial_id, b.fidelity, b.state, b.objective, b.losses, b.pool_index, b.meta, b.segments) and (
        a.weights.tolist() == b.weights.tolist())


@pytest.mark.parametrize("sqlite_max_open", [500, 2])
def test_the_incremental_read_of_a_study_equals_a_full_read(migrated_url, sqlite_max_open, monkeypatch):
    """``read_study_trials`` keeps what it read (terminal trials, and open ones until they end):
    after each kind of change (new trials, leases, completions, failures, a requeue, a cancel) its
    history and budget rows equal a fresh read of every trial (also where SQLite, with more open
    trials than it takes ids in one statement, reads everything)."""
    from service.engine import _spec, fail_lease, lease_next, register_worker, space_for

    monkeypatch.setattr(_spec, "SQLITE_MAX_OPEN", sqlite_max_open)
    from service.engine._spec import history_for, read_study_trials
    from service.schemas.leases import LeaseFail
    from service.schemas.workers import WorkerCreate
    from tests.conftest import JOIN_SECRET

    db = Database(migrated_url)
    body = StudyCreate.model_validate(study_body(parallelism=6, budget={"max_trials": 40}, max_attempts=2))
    with db.session() as s:
        sid = create_study(s, body).id
    change_state(db, sid, "start")
    worker, _ = register_worker(db, WorkerCreate(name="w", join_secret=JOIN_SECRET), JOIN_SECRET)

    def check() -> None:
        with db.session() as s:
            study = s.get(Study, sid)
            space = space_for(study)
            history, tally = read_study_trials(s, sid, space)
            trials = load_trials(s, sid)
            full = history_for(space, trials)
        assert len(history.trials) == len(full.trials)
        assert all(_same(a, b) for a, b in zip(history.trials, full.trials))
        live = [t for t in trials if t.state != TrialState.cancelled]
        assert (tally.in_flight, tally.live, tally.last_number) == (
            sum(t.state in (TrialState.queued, TrialState.leased, TrialState.running) for t in live), len(live),
            max(t.number for t in trials))
        assert abs(tally.cost - sum(t.cost for t in live)) < 1e-9

    for round_ in range(4):
        advance(db, sid)
        check()
        grants = [g for _ in range(4) for g in lease_next(db, worker)]
        check()
        for i, g in enumerate(grants):
            if i == 0:  # retryable: queued again (open -> open), then failed for good on the next round
                fail_lease(db, g.lease_id, worker, LeaseFail(reason="oom", retryable=True))
            else:
                report_result(db, g.trial.id, ResultCreate(losses=known_losses(g.trial.mixture, g.trial.fidelity.name),
                                                           lease_id=g.lease_id))
            check()
    change_state(db, sid, "cancel")  # the queued ones are cancelled
    check()
    db.dispose()


def test_a_recommendation_refreshed_beside_the_study_completing_does_not_land_after_the_final_one(migrated_url):
    """The runner refreshes a study's recommendation in a thread beside ``advance``. When the
    advance completes the study, its final recommendation must stay the latest: a refresh that
    computed meanwhile must not store a non-final one after it (CI caught this on Postgres)."""
    db = Database(migrated_url)
    body = StudyCreate.model_validate(study_body(budget={"max_trials": 6}, parallelism=3, dispatch="ask"))
    with db.session() as s:
        sid = create_study(s, body).id
    change_state(db, sid, "start")
    advance(db, sid)
    with db.session() as s:
        first = [t.id for t in load_trials(s, sid)[:2]]
    for trial_id in first:
        _report(db, sid, trial_id)

    locked, release = threading.Event(), threading.Event()

    def complete_the_study_slowly() -> None:  # what ``_complete`` does, held open before its commit
        with db.session() as s:
            get_study(s, sid, lock=True)
            s.add(Recommendation(study_id=sid, mixture={}, predicted=None, uncertainty=None,
                                 based_on_trials=2, meta={}, final=True))
            s.flush()
            locked.set()
            release.wait(10)

    completing = threading.Thread(target=complete_the_study_slowly)
    completing.start()
    assert locked.wait(10)
    refreshing = threading.Thread(target=refresh_recommendation, args=(db, sid))
    refreshing.start()
    refreshing.join(1.0)  # it computes, then waits for the study's lock
    release.set()
    completing.join(10)
    refreshing.join(10)
    with db.session() as s:
        assert latest_recommendation(s, sid).final


def test_advance_says_whether_it_filled_every_free_slot(migrated_url):
    """The runner's job stops after a pass that filled the study's free slots (another pass would
    find none) and passes again after one that left slots free (here: the cost budget's end)."""
    from service.engine import Advanced
    from service.engine._runner import advance_job

    db = Database(migrated_url)
    one_fidelity = [{"name": "big", "cost": 1.0, "target": True}]
    with db.session() as s:
        filled = create_study(s, StudyCreate.model_validate(study_body(fidelities=one_fidelity, parallelism=4))).id
        short = create_study(s, StudyCreate.model_validate(
            study_body(fidelities=one_fidelity, parallelism=4, budget={"cost": 2.5}))).id
    for sid in (filled, short):
        change_state(db, sid, "start")
    assert advance(db, filled) == Advanced.FILLED
    assert advance(db, filled) == Advanced.NOTHING
    assert advance_job(db, filled) == 1
    with db.session() as s:
        first = [t.id for t in load_trials(s, filled)]
    assert len(first) == 4
    for trial_id in first[:2]:
        _report(db, filled, trial_id)
    assert advance_job(db, filled) == 1  # the two freed slots filled in one pass
    with db.session() as s:
        assert len(load_trials(s, filled)) == 6

    assert advance(db, short) == Advanced.CHANGED  # two trials of cost 1 fit the budget of 2.5, not four
    assert advance(db, short) == Advanced.NOTHING
    with db.session() as s:
        assert len(load_trials(s, short)) == 2
    db.dispose()


def test_a_job_passes_again_after_filling_the_slots_only_when_trials_ended_meanwhile(migrated_url):
    """A pass that filled every free slot ends the job unless the study was notified during it
    (trials ended while it ran: at saturation, every pass). Otherwise the queue waited for the next
    job's turn, at least 0.1 s, while workers emptied it."""
    from service.engine import Advanced
    from service.engine._runner import advance_job

    db = Database(migrated_url)
    one_fidelity = [{"name": "big", "cost": 1.0, "target": True}]
    with db.session() as s:
        sid = create_study(s, StudyCreate.model_validate(study_body(fidelities=one_fidelity, parallelism=4))).id
    change_state(db, sid, "start")
    counts = iter([0, 1])  # one notification arrives during the first pass, none after

    def notified() -> int:
        return next(counts, 1)

    assert advance_job(db, sid, notified=notified) == 2  # filled, passed again, found nothing
    with db.session() as s:
        first = [t.id for t in load_trials(s, sid)]
    assert len(first) == 4
    _report(db, sid, first[0])
    assert advance_job(db, sid, notified=lambda: 7) == 1  # filled, and nothing ended meanwhile
    assert advance(db, sid) == Advanced.NOTHING
    db.dispose()


def _commits(db: Database, study_id: int, **kwargs) -> int:
    """How many transactions one ``advance`` of ``study_id`` commits."""
    from sqlalchemy import event

    commits = []

    def count(_conn) -> None:
        commits.append(1)

    event.listen(db.engine, "commit", count)
    try:
        advance(db, study_id, **kwargs)
    finally:
        event.remove(db.engine, "commit", count)
    return len(commits)


def test_a_quick_strategy_is_advanced_in_one_transaction_on_postgres(migrated_url):
    """Once a study's strategy has proposed in under ``QUICK_PROPOSE_S`` of CPU, its passes read,
    propose and commit in one transaction on Postgres (two on SQLite, whose transactions lock the
    whole database from their start)."""
    db = Database(migrated_url)
    with db.session() as s:
        sid = create_study(s, StudyCreate.model_validate(study_body(parallelism=4, budget={"max_trials": 50}))).id
    change_state(db, sid, "start")
    assert _commits(db, sid) == 2  # the first pass: the strategy's cost is not known yet
    with db.session() as s:
        first = [t.id for t in load_trials(s, sid)]
    assert len(first) == 4
    for trial_id in first[:2]:
        _report(db, sid, trial_id)
    assert _commits(db, sid) == (1 if db.is_postgres else 2)
    with db.session() as s:
        trials = load_trials(s, sid)
    assert [t.number for t in trials] == list(range(6))
    assert sum(t.state == TrialState.queued for t in trials) == 4
    db.dispose()


def _after_a_pass(db: Database, reported: int) -> int:
    """A started random study (parallelism 4) after one ``advance``, with ``reported`` of its first
    trials reported: its strategy is known to be quick."""
    with db.session() as s:
        sid = create_study(s, StudyCreate.model_validate(study_body(parallelism=4, budget={"max_trials": 50}))).id
    change_state(db, sid, "start")
    advance(db, sid)
    with db.session() as s:
        first = [t.id for t in load_trials(s, sid)]
    for trial_id in first[:reported]:
        _report(db, sid, trial_id)
    return sid


def test_a_strategy_that_waits_keeps_two_transactions(migrated_url):
    """A strategy that used little CPU but waited (here: slept) past ``QUICK_PROPOSE_WAIT_S`` is
    not run inside a transaction: a pooled connection would sit idle in it while it waits."""
    db = Database(migrated_url)
    seconds = _studies.QUICK_PROPOSE_WAIT_S * 1.2
    body = study_body(strategy={"name": _slow_strategy.SlowStrategy.name, "params": {"seconds": seconds}}, parallelism=4,
                      budget={"max_trials": 50})
    with db.session() as s:
        sid = create_study(s, StudyCreate.model_validate(body)).id
    change_state(db, sid, "start")
    assert _commits(db, sid) == 2
    with db.session() as s:
        first = [t.id for t in load_trials(s, sid)]
    _report(db, sid, first[0])
    assert _commits(db, sid) == 2
    with db.session() as s:
        assert len(load_trials(s, sid)) == 5
    db.dispose()


def test_a_trial_created_while_a_quick_strategy_computes_is_not_overfilled(migrated_url, monkeypatch):
    """A trial queued by hand while the strategy computes raises the study's revision: the pass in
    one transaction writes nothing and the usual path asks the strategy again, so trial numbers
    stay unique and the study's parallelism is kept."""
    from service.engine import create_trial
    from service.schemas.trials import TrialCreate

    db = Database(migrated_url)
    sid = _after_a_pass(db, reported=2)

    asked = []

    def while_a_trial_is_queued(propose):
        def propose_while_a_trial_is_queued(history, n):
            asked.append(n)
            if len(asked) == 1:
                create_trial(db, sid, TrialCreate(mixture={d: 1 / len(DOMAINS) for d in DOMAINS}, fidelity="big"))
            return propose(history, n)
        return propose_while_a_trial_is_queued

    _wrap_propose(monkeypatch, while_a_trial_is_queued)
    advance(db, sid)
    with db.session() as s:
        trials = load_trials(s, sid)
    db.dispose()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers)))
    assert sum(t.state in (TrialState.queued, TrialState.leased, TrialState.running) for t in trials) == 4
    assert asked == [2, 1], "the strategy was asked again for the one slot left"


def test_a_quick_strategy_that_raises_fails_its_study(migrated_url, monkeypatch):
    """A strategy that raises in the pass of one transaction fails its study with the reason, as it
    does on the usual path, and leaves nothing half-written."""
    db = Database(migrated_url)
    sid = _after_a_pass(db, reported=1)
    def broken(_propose):
        def propose(history, n):
            raise ValueError("no proposals today")
        return propose

    _wrap_propose(monkeypatch, broken)
    assert advance(db, sid)
    with db.session() as s:
        study = s.get(Study, sid)
        state, reason, trials = study.state, study.failure_reason, len(load_trials(s, sid))
    db.dispose()
    assert state == StudyState.failed and "no proposals today" in reason
    assert trials == 4


def test_an_incremental_read_is_one_statement_from_the_oldest_open_trial_on(migrated_url):
    """Once a study is known, ``read_study_trials`` sends one statement, bounded below by the
    oldest open trial's number: what it reads does not grow with the study's ended trials."""
    from sqlalchemy import event

    from service.engine import space_for
    from service.engine._spec import read_study_trials

    db = Database(migrated_url)
    with db.session() as s:
        sid = create_study(s, StudyCreate.model_validate(study_body(parallelism=3, budget={"max_trials": 30}))).id
    change_state(db, sid, "start")
    for _ in range(4):  # 12 trials, 9 of them ended
        advance(db, sid)
        with db.session() as s:
            open_ = [t.id for t in load_trials(s, sid) if t.state == TrialState.queued]
        for trial_id in open_:
            _report(db, sid, trial_id)
    advance(db, sid)
    sent: list[tuple[str, dict]] = []
    with db.session() as s:
        space = space_for(s.get(Study, sid))
        read_study_trials(s, sid, space)
        oldest_open = min(t.number for t in load_trials(s, sid) if t.state == TrialState.queued)

        def record(conn, cursor, statement, parameters, context, executemany):
            sent.append((statement, parameters))

        event.listen(db.engine, "before_cursor_execute", record)
        history, tally = read_study_trials(s, sid, space)
        event.remove(db.engine, "before_cursor_execute", record)
    db.dispose()
    assert len(sent) == 1, [st for st, _ in sent]
    statement, parameters = sent[0]
    assert oldest_open in (parameters.values() if isinstance(parameters, dict) else parameters)
    assert "trials.number >=" in statement
    assert len(history.trials) == 15 and tally.in_flight == 3


def test_the_incremental_reads_generic_plan_finds_open_ids_by_hash(postgres_url):
    """psycopg prepares a statement on its fifth run, and Postgres may then run one generic plan
    for every set of parameters. There, an id list compared with ``= ANY($n)`` is searched from
    start to end for each row it filters: with 2,000 open trials (a fleet of 1,000 at parallelism
    2,000) each read took 115 ms of the database's CPU, against 1-2 ms when planned for its values.
    The read asks ``IN (SELECT unnest($n))`` instead, a hashed subplan whatever the plan."""
    import re

    from sqlalchemy.dialects import postgresql

    from service.db import upgrade
    from service.engine._spec import _incremental_read

    upgrade(postgres_url)
    statement = _incremental_read(True).compile(dialect=postgresql.dialect()).string
    statement = re.sub(r"__\[POSTCOMPILE_(\w+)\]", lambda m: ", ".join(f"%({m.group(1)}_{i})s" for i in (1, 2, 3)),
                       statement)  # the terminal states (an expanding IN)
    names: list[str] = []

    def numbered(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    sql = re.sub(r"%\((\w+)\)s", numbered, statement)
    values = {"p_study": 1, "p_oldest_open": 0, "p_max_number": 10, "p_dynamic": "{}", "p_recheck": "{1,2,3}",
              "state_1_1": "completed", "state_1_2": "failed", "state_1_3": "cancelled"}
    db = Database(postgres_url)
    try:
        with db.engine.connect() as c:
            raw = c.connection.driver_connection
            raw.execute("SET plan_cache_mode = force_generic_plan")
            raw.execute(f"PREPARE incremental AS {sql}")
            arguments = ", ".join(f"'{values[n]}'" for n in names)  # constants: EXECUTE's own are not typed
            plan = "\n".join(row[0] for row in raw.execute(f"EXPLAIN EXECUTE incremental({arguments})"))
            raw.execute("DEALLOCATE incremental")
            c.rollback()
    finally:
        db.dispose()
    assert "$" in plan, plan  # the generic plan: parameters, not values
    assert not re.search(r"\bid = ANY \(\$\d+", plan), plan
    assert "hashed SubPlan" in plan, plan


def test_enqueued_trials_raise_the_revision_once_and_are_announced_to_every_process(migrated_url):
    """Each ``advance`` that enqueues trials raises the study's revision by one (the dashboard and
    ``ask`` read it) and, on Postgres, sends one NOTIFY on the work channel at commit: the other
    server processes' waiting leases hear of the trials only so."""
    from service.db._session import WORK_CHANNEL

    db = Database(migrated_url)
    body = StudyCreate.model_validate(study_body(parallelism=4, budget={"max_trials": 8}))
    with db.session() as s:
        sid = create_study(s, body).id
    change_state(db, sid, "start")
    with db.session() as s:
        before = s.get(Study, sid).revision
    listener = None
    if db.is_postgres:
        import psycopg

        listener = psycopg.connect(db.driver_url, autocommit=True)
        listener.execute(f"LISTEN {WORK_CHANNEL}")
    try:
        advance(db, sid)
        with db.session() as s:
            assert s.get(Study, sid).revision == before + 1
            assert sum(t.state == TrialState.queued for t in load_trials(s, sid)) == 4
        if listener is not None:
            heard = [n.channel for n in listener.notifies(timeout=2.0, stop_after=1)]
            assert heard == [WORK_CHANNEL]
    finally:
        if listener is not None:
            listener.close()
    db.dispose()
