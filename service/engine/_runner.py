"""The engine's background thread: reacts to events (a trial finished, a lease expired) by
advancing studies, sweeps expired leases, and refreshes recommendations (throttled)."""

from __future__ import annotations

import logging
import threading
import time

from ..db import Database
from ._studies import advance, refresh_recommendation, running_study_fingerprints
from ._trials import sweep_expired

log = logging.getLogger(__name__)


class EngineRunner:
    """One per server process. Several processes on one database are safe: every step locks
    what it changes and re-checks it."""

    def __init__(self, db: Database, *, sweep_interval_s: float = 5.0, recommend_interval_s: float = 10.0,
                 advance_interval_s: float = 0.1):
        self.db = db
        # Completions arriving together are answered by one ``advance`` (it reads the whole study),
        # taken at most this often per study: under load, one read serves many completions.
        self.advance_interval_s = advance_interval_s
        self._last_advance: dict[int, float] = {}
        # What each running study looked like at the last periodic pass: an unchanged study is not
        # re-read (a 10,000-trial study costs a second of Python per look).
        self._fingerprints: dict[int, tuple] = {}
        self.sweep_interval_s = sweep_interval_s
        self.recommend_interval_s = recommend_interval_s
        self._dirty: set[int] = set()
        self._stale_recommendation: set[int] = set()
        self._last_recommendation: dict[int, float] = {}
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self, study_id: int, *, results_changed: bool = True) -> None:
        """A study's trials changed: advance it soon."""
        with self._cv:
            self._dirty.add(study_id)
            if results_changed:
                self._stale_recommendation.add(study_id)
            self._cv.notify()

    def start(self) -> None:
        from ._workers import extend_held_leases

        extend_held_leases(self.db)  # a restart must not expire the leases of workers that trained on
        self._thread = threading.Thread(target=self._loop, name="mixopt-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            with self._cv:
                wake = min([next_sweep, *map(self._recommendation_due, self._stale_recommendation),
                            *map(self._advance_due, self._dirty)])
                if time.monotonic() < wake:
                    self._cv.wait(timeout=wake - time.monotonic())
                now = time.monotonic()
                dirty = {i for i in self._dirty if self._advance_due(i) <= now}
                self._dirty -= dirty
                due = {i for i in self._stale_recommendation if self._recommendation_due(i) <= now}
                self._stale_recommendation -= due
            try:
                if time.monotonic() >= next_sweep:
                    expired = sweep_expired(self.db)
                    with self.db.session() as s:
                        seen = running_study_fingerprints(s)
                    dirty |= expired | {i for i, fp in seen.items() if self._fingerprints.get(i) != fp}
                    self._fingerprints = seen
                    next_sweep = time.monotonic() + self.sweep_interval_s
                for study_id in sorted(dirty):
                    self.step(study_id)
                for study_id in sorted(due):
                    self._last_recommendation[study_id] = time.monotonic()
                    refresh_recommendation(self.db, study_id)
            except Exception:  # keep the engine alive through a database hiccup
                log.exception("engine step failed")
                time.sleep(1.0)

    def _advance_due(self, study_id: int) -> float:
        return self._last_advance.get(study_id, -1e9) + self.advance_interval_s

    def _recommendation_due(self, study_id: int) -> float:
        return self._last_recommendation.get(study_id, -1e9) + self.recommend_interval_s

    def step(self, study_id: int) -> None:
        """Advance one study until it wants nothing more."""
        self._last_advance[study_id] = time.monotonic()
        for _ in range(100):
            if not advance(self.db, study_id):
                break
