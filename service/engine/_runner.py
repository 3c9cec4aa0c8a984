"""The engine's background work: reacts to events (a trial finished, a lease expired, a study
started) by advancing studies, sweeps expired leases, and refreshes recommendations (throttled).

Strategies never run on a request: each study's ``advance`` runs in its own daemon thread, one at a
time per study, so that many notifications arriving while it computes are answered by one more
pass (coalesced). A study's recommendation is refreshed in a thread of its own beside it: a slow
fit for the recommendation never holds back the proposals workers wait for. A compute that runs
past ``strategy_slow_s`` is logged; one past ``strategy_timeout_s`` is abandoned (its proposals are
never committed) and fails the study with the reason. The threads are daemons and are never joined
at shutdown: SIGTERM stops the server within seconds whatever a strategy is doing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..db import Database
from ._studies import Advanced, _fail, advance, queued_trials, refresh_recommendation, running_study_fingerprints
from ._trials import sweep_expired

log = logging.getLogger(__name__)


ADVANCE, RECOMMEND = "advance", "recommend"
"""The two kinds of job a study may have in flight, one of each at a time."""


@dataclass
class _Job:
    """One study's compute in flight (an ``advance`` or a recommendation refresh)."""

    started: float
    covers: int
    """The study's notification count when the job started: every notification up to it is answered."""
    abandon: threading.Event = field(default_factory=threading.Event)
    warned: bool = False


def advance_job(db: Database, study_id: int, abandon: threading.Event | None = None, max_passes: int = 100,
                notified: Callable[[], int] = lambda: 0) -> int:
    """One advance job of the runner: :func:`advance` passes until one changes nothing, or fills
    every free slot while no trial ended (``notified()``, the study's notification count, did not
    move during the pass: another pass would find no slot). Returns the number of passes.

    At saturation trials end during every pass, so passes follow each other for as long as they
    refill the queue: a pass that filled the slots and then waited for the next job's turn (0.1 s
    at least) left 50 workers an empty queue of 50 trials."""
    for passes in range(1, max_passes + 1):
        seen = notified()
        done = advance(db, study_id, abandon=abandon)
        if done == Advanced.NOTHING or (done == Advanced.FILLED and notified() == seen):
            break
    return passes


class EngineRunner:
    """One per server process. Several processes on one database are safe: every step locks
    what it changes and re-checks it.

    ``on_change`` is called (from any thread) whenever queued work or a study's state may have
    changed: the API wakes its long-polls with it.
    """

    def __init__(self, db: Database, *, sweep_interval_s: float = 5.0, recommend_interval_s: float = 10.0,
                 advance_interval_s: float = 0.1, strategy_slow_s: float = 30.0,
                 strategy_timeout_s: float = 900.0, max_computing: int = 4, batch_wait_s: float = 2.0,
                 on_change: Callable[[], None] | None = None):
        self.db = db
        # Completions arriving together are answered by one ``advance`` job, started at most this
        # often per study, and at most a quarter of the time: the next job waits three times the
        # last job's mean pass (one ``advance`` call), up to 2 s, so that under load one read serves
        # many completions. Per pass, not per job: a job passes again while each pass enqueues
        # with slots to spare (:func:`advance_job`), and a job of a second (ten passes keeping the
        # queue filled) once held the next one back until 2 s after it started, while the queue
        # ran dry and workers waited for work.
        self.advance_interval_s = advance_interval_s
        self._advance_pass_s: dict[int, float] = {}
        # A study with trials queued to spare is advanced once a quarter of them may have been
        # taken (as many notifications as that since the last job started), or after
        # ``batch_wait_s``: a job's cost grows with the study's open trials (a fleet's 2,000: 20 ms
        # of CPU), and one after every completion or two refilled slots the queue did not need yet.
        # A study with an empty or short queue is advanced as before.
        self.batch_wait_s = batch_wait_s
        self._batch: dict[int, int] = {}
        """Per study: notifications that make it due (a quarter of its queued trials, at least 1)."""
        self._advance_covers: dict[int, int] = {}
        """Per study: the notification count when its last ``advance`` job started."""
        self.strategy_slow_s = strategy_slow_s
        self.strategy_timeout_s = strategy_timeout_s
        self.max_computing = max_computing
        self.on_change = on_change or (lambda: None)
        self._last_advance: dict[int, float] = {}
        # What each running study looked like at the last periodic pass: an unchanged study is not
        # re-read (a 10,000-trial study costs a second of Python per look).
        self._fingerprints: dict[int, tuple] = {}
        self.sweep_interval_s = sweep_interval_s
        self.recommend_interval_s = recommend_interval_s
        self._dirty: set[int] = set()
        self._stale_recommendation: set[int] = set()
        self._last_recommendation: dict[int, float] = {}
        self._notified: dict[int, int] = {}
        self._answered: dict[int, int] = {}
        self._jobs: dict[tuple[int, str], _Job] = {}
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self, study_id: int, *, results_changed: bool = True, urgent: bool = False) -> int:
        """A study's trials or state changed: advance it soon (``urgent``: without waiting for more
        completions, as for an ``ask`` that found too few trials). Returns a ticket for :meth:`settled`."""
        with self._cv:
            if urgent:
                self._batch[study_id] = 1  # until the next job measures the queue again
            # The loop needs waking only when the study becomes due for a job: one already waiting
            # has its time in the loop's wait, and one running wakes the loop when it ends. A wake
            # per completion (hundreds a second at saturation) cost futex calls and GIL hand-offs
            # for nothing (~1.7% of a core on the loop's thread alone).
            ticket = self._notified[study_id] = self._notified.get(study_id, 0) + 1
            batch_full = urgent or ticket - self._advance_covers.get(study_id, 0) == self._batch.get(study_id, 1)
            wake = (((study_id not in self._dirty or batch_full) and (study_id, ADVANCE) not in self._jobs)
                    or (results_changed and study_id not in self._stale_recommendation
                        and (study_id, RECOMMEND) not in self._jobs))
            self._dirty.add(study_id)
            if results_changed:
                self._stale_recommendation.add(study_id)
            if wake:
                self._cv.notify()
        self.on_change()  # a requeued or released trial is work for a waiting worker
        return ticket

    def settled(self, study_id: int, ticket: int) -> bool:
        """Whether an ``advance`` that started after notification ``ticket`` has finished."""
        with self._cv:
            return self._answered.get(study_id, 0) >= ticket

    def start(self) -> None:
        from ._workers import extend_held_leases

        extend_held_leases(self.db)  # a restart must not expire the leases of workers that trained on
        self._thread = threading.Thread(target=self._loop, name="mixopt-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; computes in flight are abandoned (their daemon threads are not waited for)."""
        self._stop.set()
        with self._cv:
            for job in self._jobs.values():
                job.abandon.set()
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            with self._cv:
                wake = min([next_sweep, time.monotonic() + 1.0,
                            *map(self._recommendation_due, self._stale_recommendation - self._running(RECOMMEND)),
                            *map(self._advance_due, self._dirty - self._running(ADVANCE))])
                if time.monotonic() < wake:
                    self._cv.wait(timeout=wake - time.monotonic())
                if self._stop.is_set():
                    return
                self._watch_jobs()
            try:
                if time.monotonic() >= next_sweep:
                    expired = sweep_expired(self.db)
                    with self.db.session() as s:
                        seen = running_study_fingerprints(s)
                    changed = expired | {i for i, fp in seen.items() if self._fingerprints.get(i) != fp}
                    self._fingerprints = seen
                    next_sweep = time.monotonic() + self.sweep_interval_s
                    with self._cv:
                        self._dirty |= changed
                    if expired:
                        self.on_change()
                self._start_due_jobs()
            except Exception:  # keep the engine alive through a database hiccup
                log.exception("engine step failed")
                self._stop.wait(1.0)

    def _running(self, kind: str) -> set[int]:
        return {study_id for study_id, k in self._jobs if k == kind}

    def _start_due_jobs(self) -> None:
        with self._cv:
            now = time.monotonic()
            for study_id in sorted(self._dirty | self._stale_recommendation):
                for kind, waiting, due in ((ADVANCE, self._dirty, self._advance_due),
                                           (RECOMMEND, self._stale_recommendation, self._recommendation_due)):
                    if len(self._jobs) >= self.max_computing:
                        return
                    # one job of a kind per study: what arrives meanwhile is answered by the next
                    if study_id not in waiting or (study_id, kind) in self._jobs or due(study_id) > now:
                        continue
                    waiting.discard(study_id)
                    (self._last_advance if kind == ADVANCE else self._last_recommendation)[study_id] = now
                    job = _Job(started=now, covers=self._notified.get(study_id, 0) if kind == ADVANCE else 0)
                    if kind == ADVANCE:
                        self._advance_covers[study_id] = job.covers
                    self._jobs[(study_id, kind)] = job
                    threading.Thread(target=self._run_job, args=(study_id, job, kind),
                                     name=f"mixopt-study-{study_id}-{kind}", daemon=True).start()

    def _run_job(self, study_id: int, job: _Job, kind: str) -> None:
        try:
            if kind == ADVANCE:
                t0 = time.monotonic()
                passes = advance_job(self.db, study_id, job.abandon, notified=lambda: self._notified.get(study_id, 0))
                self._advance_pass_s[study_id] = (time.monotonic() - t0) / passes
                batch = max(1, queued_trials(self.db, study_id) // 4)
                with self._cv:
                    self._batch[study_id] = batch
            elif not job.abandon.is_set():
                refresh_recommendation(self.db, study_id)
        except Exception:
            if not job.abandon.is_set():
                log.exception("engine step failed", extra={"study_id": study_id})
        finally:
            with self._cv:
                if self._jobs.get((study_id, kind)) is job:
                    del self._jobs[(study_id, kind)]
                    self._answered[study_id] = max(self._answered.get(study_id, 0), job.covers)
                self._cv.notify()
            if kind == ADVANCE:
                self.on_change()  # trials enqueued, the study completed, or an ``ask`` waits on this

    def _watch_jobs(self) -> None:
        """Log a slow strategy once; abandon one past the time limit and fail its study. Called
        with ``_cv`` held."""
        now = time.monotonic()
        for (study_id, kind), job in list(self._jobs.items()):
            elapsed = now - job.started
            if elapsed >= self.strategy_timeout_s:
                job.abandon.set()
                del self._jobs[(study_id, kind)]
                self._answered[study_id] = max(self._answered.get(study_id, 0), job.covers)
                what = "without proposing" if kind == ADVANCE else "on the study's recommendation"
                reason = (f"the strategy computed for over {self.strategy_timeout_s:g} s (the limit, "
                          f"MIXOPT_STRATEGY_TIMEOUT_S) {what}: its result is discarded")
                log.error("strategy timed out", extra={"study_id": study_id, "elapsed_s": round(elapsed, 1)})
                threading.Thread(target=self._fail_quietly, args=(study_id, reason), daemon=True).start()
            elif elapsed >= self.strategy_slow_s and not job.warned:
                job.warned = True
                log.warning("strategy slow: still computing", extra={"study_id": study_id,
                                                                     "elapsed_s": round(elapsed, 1)})

    def _fail_quietly(self, study_id: int, reason: str) -> None:
        try:
            _fail(self.db, study_id, reason)
        except Exception:
            log.exception("could not fail study %s", study_id)
        self.on_change()

    def _advance_due(self, study_id: int) -> float:
        pause = max(self.advance_interval_s, min(3.0 * self._advance_pass_s.get(study_id, 0.0), 2.0))
        if self._notified.get(study_id, 0) - self._advance_covers.get(study_id, 0) < self._batch.get(study_id, 1):
            pause = max(pause, self.batch_wait_s)  # trials to spare: wait for more completions, not longer than this
        return self._last_advance.get(study_id, -1e9) + pause

    def _recommendation_due(self, study_id: int) -> float:
        return self._last_recommendation.get(study_id, -1e9) + self.recommend_interval_s
