"""The study engine: the study and trial state machines on top of the database. Strategies are
called from here, never from the API directly.

The API's routes call only functions that take the database and own their transaction (the
state changes, and the reads of ``_reads``, which return public schemas); the functions taking a
session are for the engine itself and for the read models stacked on it (the dashboard's)."""

from ._costs import cost_sums
from ._objective import check_result, objective_value, required_losses
from ._reads import (
    add_study,
    list_studies,
    loss_curve,
    ping,
    read_recommendation,
    read_segments,
    read_study,
    read_trial,
    read_trials,
    read_worker,
    read_workers,
)
from ._runner import EngineRunner
from ._spec import history_for, load_trials, space_for, strategy_for
from ._studies import (
    advance,
    change_state,
    create_study,
    get_study,
    latest_recommendation,
    refresh_recommendation,
    running_study_fingerprints,
)
from ._trials import (
    ask,
    check_mixture,
    create_trial,
    get_trial,
    grant_lease,
    record_failure,
    record_result,
    report_failure,
    report_result,
    sweep_expired,
    trial_counts,
)
from ._segments import list_segments, report_segment
from ._workers import (
    authenticate_worker,
    join_fingerprint,
    complete_lease,
    extend_held_leases,
    fail_lease,
    forget_worker,
    hash_token,
    heartbeat,
    lease_next,
    list_workers,
    register_worker,
    release_lease,
    token_state,
)
from ._views import list_trials, recommendation_public, study_public, trial_public

__all__ = [
    "add_study",
    "list_studies",
    "loss_curve",
    "ping",
    "read_recommendation",
    "read_segments",
    "read_study",
    "read_trial",
    "read_trials",
    "read_worker",
    "read_workers",
    "extend_held_leases",
    "list_segments",
    "report_segment",
    "authenticate_worker",
    "join_fingerprint",
    "complete_lease",
    "fail_lease",
    "forget_worker",
    "hash_token",
    "heartbeat",
    "lease_next",
    "list_workers",
    "register_worker",
    "release_lease",
    "token_state",
    "EngineRunner",
    "cost_sums",
    "advance",
    "ask",
    "change_state",
    "check_mixture",
    "check_result",
    "create_study",
    "create_trial",
    "get_study",
    "get_trial",
    "grant_lease",
    "history_for",
    "latest_recommendation",
    "list_trials",
    "load_trials",
    "objective_value",
    "recommendation_public",
    "record_failure",
    "record_result",
    "refresh_recommendation",
    "report_failure",
    "report_result",
    "required_losses",
    "running_study_fingerprints",
    "space_for",
    "strategy_for",
    "study_public",
    "sweep_expired",
    "trial_counts",
    "trial_public",
]
