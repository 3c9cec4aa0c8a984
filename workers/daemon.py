"""The worker daemon: register, poll, lease, run the executor, heartbeat from a thread, report.

Shutdown: SIGTERM (or SIGINT) lets the current step finish; a finished run is reported, an
unfinished one is released back to the queue, then the daemon exits. Server outages: every call
is retried with backoff, heartbeats keep failing quietly while training goes on, and finished
results wait in the on-disk outbox until the server has them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ._outbox import Letter, Outbox
from .client import ApiError, MixoptClient, ServerUnavailable
from .executors import BaseExecutor, ExecResult, Task

log = logging.getLogger("mixopt.worker")
T = TypeVar("T")


class Backoff:
    """Exponential backoff with jitter, capped."""

    def __init__(self, first: float = 0.5, cap: float = 30.0):
        self.first, self.cap, self.delay = first, cap, first

    def sleep(self, stop: threading.Event) -> None:
        stop.wait(self.delay * random.uniform(0.8, 1.2))
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay = self.first


class _Run:
    """The context an executor runs in (see ``workers.executors.RunContext``)."""

    def __init__(self, daemon: WorkerDaemon, task: Task, *, show: bool = True, label: str | None = None):
        self.daemon, self.task = daemon, task
        self.show, self.label = show, label or f"trial {task.trial_id}"  # a batch shows one bar, for all
        self.aborted = threading.Event()  # the server said stop, or the lease is over
        self.abort_reason = ""
        self.latest: dict[str, Any] = {}
        self.curve: list[dict[str, Any]] = []
        self.tail: deque[str] = deque(maxlen=50)
        self.lock = threading.Lock()
        self._last_line = 0.0
        self._bar = None
        self._segment: int | None = None  # index of the segment being trained

    def should_stop(self) -> bool:
        return self.daemon.stopping.is_set() or self.aborted.is_set()

    def progress(self, **fields: Any) -> None:
        # a diverging run reports NaN losses; the server accepts finite numbers only
        fields = {k: v for k, v in fields.items() if not (isinstance(v, float) and not math.isfinite(v))}
        with self.lock:
            self.latest.update({k: v for k, v in fields.items() if v is not None})
            if fields.get("losses"):
                self.curve.append({"step": int(fields.get("step") or 0), "tokens": fields.get("tokens"),
                                   "train_loss": fields.get("train_loss"), "losses": dict(fields["losses"])})
        self._show(fields)

    def _show(self, fields: Mapping[str, Any]) -> None:
        if not self.show:
            return
        step, total = fields.get("step"), fields.get("total_steps") or self.latest.get("total_steps")
        if self.daemon.progress_bar and step is not None and total:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=self.label, unit="step", leave=False)
            self._bar.n = int(step)
            self._bar.set_postfix(loss=fields.get("train_loss"), tok_s=fields.get("tokens_per_s"), refresh=False)
            self._bar.refresh()
        elif time.monotonic() - self._last_line >= self.daemon.log_every_s and step is not None:
            self._last_line = time.monotonic()
            loss, tps = self.latest.get("train_loss"), self.latest.get("tokens_per_s")
            log.info("%s step %s/%s loss %s tokens/s %s", self.label, step, total,
                     f"{loss:.4f}" if isinstance(loss, float) else loss, f"{tps:.0f}" if isinstance(tps, float) else tps,
                     extra={"trial_id": self.task.trial_id})

    def log(self, line: str) -> None:
        self.tail.append(line)
        log.debug("trial %s | %s", self.task.trial_id, line)

    def next_segment(self, losses: Mapping[str, float] | None, step: int | None = None) -> dict | None:
        try:
            answer = self.daemon.call(lambda c: c.segment(self.task.lease_id, self._segment, losses, step))
        except ApiError as e:
            if e.status != 409:
                raise
            self.abort_reason, answer = str(e.detail), None
        if answer is None:  # the lease is over, or stopping while the server was away
            self.aborted.set()
            return None
        if answer.get("done"):
            return None
        self._segment = answer["segment"]["index"]
        return answer["segment"]

    def drain(self) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
        with self.lock:
            curve, self.curve = self.curve, []
            return dict(self.latest), curve, "\n".join(self.tail) or None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class WorkerDaemon:
    """Args:
    client: API client (its token is replaced by the worker token after registration).
    executor: runs the trials.
    name: the worker's name; also names its state directory.
    state_dir: where the identity and the outbox live (survive restarts).
    join_secret: the server's join secret (for the first registration).
    max_trials: exit after this many trials (None: run until stopped).
    batch: lease up to this many trials with the same settings at once and train them together
        (executors with ``supports_batch``; 1: one trial at a time).
    """

    def __init__(self, client: MixoptClient, executor: BaseExecutor, *, name: str, state_dir: Path,
                 join_secret: str | None, capabilities: Mapping[str, Any] | None = None,
                 max_trials: int | None = None, poll_wait_s: float = 5.0, exit_when_idle_s: float | None = None,
                 progress_bar: bool | None = None, log_every_s: float = 10.0, batch: int = 1):
        self.client, self.executor, self.name = client, executor, name
        self.state_dir = Path(state_dir)
        self.outbox = Outbox(self.state_dir / "outbox")
        self.join_secret = join_secret
        self.capabilities = {**executor.capabilities(), **(capabilities or {})}
        self.max_trials, self.poll_wait_s, self.exit_when_idle_s = max_trials, poll_wait_s, exit_when_idle_s
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self.log_every_s = log_every_s
        self.batch = max(int(batch), 1) if executor.supports_batch else 1
        self.stopping = threading.Event()
        self.trials_done = 0
        self.worker_id: int | None = None
        self._identity_lock = threading.Lock()  # the heartbeat thread and the main one may both renew

    # -- lifecycle ------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            log.info("received %s: finishing the current step, then exiting", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Serve until stopped, ``max_trials`` are done, or idle for ``exit_when_idle_s``.
        Returns the number of trials run."""
        self._identify()
        self._deliver_outbox()
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            if self.max_trials is not None and self.trials_done >= self.max_trials:
                break
            want = self.batch if self.max_trials is None else min(self.batch, self.max_trials - self.trials_done)
            try:
                grant = self.call(lambda c: c.lease(self.poll_wait_s, max_trials=want))
            except ApiError as e:
                if e.status != 409:
                    raise
                # at the server's cap on leases per worker (e.g. leases of an earlier run of this
                # identity that have not expired yet): wait for them to end
                log.warning("no lease: %s", e.detail)
                self.stopping.wait(self.poll_wait_s)
                grant = None
            if grant is None:
                if self.exit_when_idle_s is not None and time.monotonic() - idle_since > self.exit_when_idle_s:
                    break
                continue
            grants = grant.get("leases") or [grant]  # a server before multi-lease sends no "leases"
            heartbeat_s = min(float(g.get("heartbeat_interval_s", 10.0)) for g in grants)
            tasks = [Task.from_grant(g) for g in grants]
            if len(tasks) == 1:
                self._run(tasks[0], heartbeat_s)
            else:
                self._run_batch(tasks, heartbeat_s)
            idle_since = time.monotonic()
        self._deliver_outbox()
        log.info("worker %s exits after %d trials", self.name, self.trials_done)
        return self.trials_done

    # -- identity -------------------------------------------------------------------------------
    def _identify(self) -> None:
        """Reuse the identity saved by an earlier run (its outbox needs the same token), or register."""
        ident = self.state_dir / "worker.json"
        if ident.exists():
            saved = json.loads(ident.read_text())
            if saved.get("url") == self.client.url:
                self.client.token, self.worker_id = saved["token"], saved["id"]
                try:
                    self.call(lambda c: c.me(), renew=False)
                    log.info("worker %s resumes as id %s", self.name, self.worker_id)
                    return
                except ApiError as e:
                    if e.status != 401:
                        raise
                # expired, or issued under an earlier join secret: renewed below, keeping the id
        self._register()

    def _register(self) -> None:
        """Register with the join secret. While ``client.token`` is this worker's refused token, the
        server renews it instead: same id, so the leases held and the outbox stay valid."""
        if not self.join_secret:
            raise SystemExit("no join secret: set MIXOPT_JOIN_SECRET or pass --join-secret")
        try:
            reg = self.call(lambda c: c.register_worker(self.name, self.join_secret, self.capabilities), renew=False)
        except ApiError as e:
            if e.status == 401:
                raise SystemExit(f"the server refused the join secret ({e.detail})") from None
            if e.status == 403:
                raise SystemExit(f"worker {self.worker_id} was revoked ({e.detail}); to register anew, "
                                 "start it with another --name or --state-dir") from None
            raise
        if reg is None:
            raise SystemExit("stopped before registering")
        renewed = reg["id"] == self.worker_id
        self.client.token, self.worker_id = reg["token"], reg["id"]
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ident = self.state_dir / "worker.json"
        fd = os.open(ident.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": self.client.url, "id": reg["id"], "token": reg["token"], "name": self.name}, f)
        os.replace(ident.with_suffix(".tmp"), ident)
        log.info("worker %s %s as id %s", self.name, "renewed its token" if renewed else "registered", self.worker_id)

    def _renew(self, refused: str | None) -> None:
        """The server refused ``refused``, our token (expired, or the join secret changed): renew it,
        once, though several threads may hear so."""
        with self._identity_lock:
            if self.client.token != refused:
                return  # another thread renewed it already
            if not self.join_secret:
                raise SystemExit("the server refused this worker's token and there is no join secret to renew it: "
                                 "set MIXOPT_JOIN_SECRET or pass --join-secret")
            log.warning("the server refused this worker's token: renewing it with the join secret")
            self._register()

    # -- calls with retry -------------------------------------------------------------------------
    def call(self, fn: Callable[[MixoptClient], T], *, quiet: bool = False, renew: bool = True) -> T | None:
        """``fn(client)``, retried with backoff while the server is unreachable or answers 5xx, and
        once after renewing the token if the server refuses it (401; unless not ``renew``).
        Returns ``None`` if the daemon is told to stop first; other API errors propagate."""
        backoff = Backoff()
        while True:
            token = self.client.token
            try:
                return fn(self.client)
            except ServerUnavailable as e:
                if not quiet:
                    log.warning("server unreachable (%s); retrying in ~%.1f s", e, backoff.delay)
            except ApiError as e:
                if e.status == 401 and renew and self.worker_id is not None:
                    self._renew(token)
                    renew = False  # a fresh token refused again is no expiry: the next 401 propagates
                    continue
                if not e.retryable:
                    raise
                log.warning("server error %s; retrying in ~%.1f s", e, backoff.delay)
            if self.stopping.is_set():
                return None
            backoff.sleep(self.stopping)

    # -- one trial --------------------------------------------------------------------------------
    def _run(self, task: Task, heartbeat_s: float) -> None:
        log.info("trial %s (study %s, %s) leased: %s", task.trial_id, task.study_id, task.fidelity.get("name"),
                 {k: round(v, 4) for k, v in task.mixture.items()}, extra={"trial_id": task.trial_id})
        run = _Run(self, task)
        beat_stop = threading.Event()
        beats = threading.Thread(target=self._heartbeats, args=([run], heartbeat_s, beat_stop), daemon=True)
        beats.start()
        try:
            result: ExecResult | None = self.executor.run(task, run)
            error = None
        except Exception as e:  # the trial failed; the worker carries on
            result, error = None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
        finally:
            beat_stop.set()
            beats.join(heartbeat_s + 35)
            run.close()
        self.trials_done += 1
        self._finish(task, run, result, error)

    def _run_batch(self, tasks: list[Task], heartbeat_s: float) -> None:
        """Train several leased static trials together (``executor.run_batch``). They finish at the
        same step, so their results are reported together at the end; each lease is heartbeated,
        abandoned (server 'stop'), failed (e.g. its proxy diverged), completed or released on its own."""
        keep = self.executor.batch_limit(tasks[0], len(tasks))
        for task in tasks[keep:]:  # more than fits the device: back to the queue, no attempt counted
            self._release(task)
        tasks = tasks[:keep]
        if len(tasks) == 1:
            return self._run(tasks[0], heartbeat_s)
        label = f"{len(tasks)} trials ({tasks[0].fidelity.get('model')})"
        log.info("%s leased: trials %s", label, [t.trial_id for t in tasks])
        runs = [_Run(self, t, show=i == 0, label=label) for i, t in enumerate(tasks)]
        beat_stop = threading.Event()
        beats = threading.Thread(target=self._heartbeats, args=(runs, heartbeat_s, beat_stop), daemon=True)
        beats.start()
        error = None
        results: list[ExecResult | None] = [None] * len(tasks)
        try:
            results = list(self.executor.run_batch(tasks, runs))
            if len(results) != len(tasks):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(tasks)} trials")
        except Exception as e:  # the whole run failed: every trial is retried
            results, error = [None] * len(tasks), f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
        finally:
            beat_stop.set()
            beats.join(heartbeat_s + 35)
            for run in runs:
                run.close()
        self.trials_done += len(tasks)
        for task, run, result in zip(tasks, runs, results):
            self._finish(task, run, result, error)

    def _finish(self, task: Task, run: _Run, result: ExecResult | None, error: str | None) -> None:
        """Report one trial's outcome (through the outbox), or release or abandon its lease."""
        if run.aborted.is_set():
            log.info("trial %s abandoned: %s", task.trial_id, run.abort_reason)
            return
        if error is not None:
            log.error("trial %s failed: %s", task.trial_id, error.splitlines()[0])
            self._deliver(self.outbox.put(task.lease_id, "fail", {"reason": error[:4000], "retryable": True}))
        elif result is not None and result.complete and result.diverged():
            reason = f"the run diverged: non-finite final loss for {result.diverged()}"
            log.error("trial %s failed: %s", task.trial_id, reason)
            self._deliver(self.outbox.put(task.lease_id, "fail", {"reason": reason, "retryable": False}))
        elif result is not None and result.complete:
            log.info("trial %s done: %s", task.trial_id, {k: round(v, 4) for k, v in result.losses.items()})
            self._deliver(self.outbox.put(task.lease_id, "complete", result.payload()))
        else:
            log.info("trial %s stopped before its end: releasing it", task.trial_id)
            self._release(task)

    def _release(self, task: Task) -> None:
        try:
            self.client.release(task.lease_id)
        except (ApiError, ServerUnavailable) as e:  # it expires and is requeued anyway
            log.warning("could not release lease %s: %s", task.lease_id, e)

    def _heartbeats(self, runs: list[_Run], interval: float, stop: threading.Event) -> None:
        """Heartbeat every run that is still live, each ``interval`` seconds, until ``stop``."""
        while not stop.wait(interval):
            for run in runs:
                if not run.aborted.is_set():
                    self._heartbeat(run)

    def _heartbeat(self, run: _Run) -> None:
        progress, curve, tail = run.drain()
        token = self.client.token
        try:
            answer = self.client.heartbeat(run.task.lease_id, progress, curve, tail)
        except ServerUnavailable:
            with run.lock:
                run.curve[:0] = curve  # send them next time
            return
        except ApiError as e:
            if e.status == 409:
                run.abort_reason = str(e.detail)
                run.aborted.set()
                return
            with run.lock:
                run.curve[:0] = curve
            if e.status == 401:  # the token expired or the join secret changed: renew, beat next time
                try:
                    self._renew(token)
                except (SystemExit, ApiError, ServerUnavailable) as why:  # revoked, or no join secret
                    run.abort_reason = f"the worker's token was refused: {why}"
                    run.aborted.set()
                    self.stopping.set()
            return
        if answer.get("action") == "stop":
            run.abort_reason = answer.get("reason") or "server said stop"
            run.aborted.set()

    # -- delivery ---------------------------------------------------------------------------------
    def _deliver(self, letter: Letter) -> bool:
        try:
            if letter.kind == "complete":
                done = self.call(lambda c: c.complete(letter.lease_id, letter.body))
            else:
                done = self.call(lambda c: c.fail(letter.lease_id, letter.body["reason"], letter.body["retryable"]))
        except ApiError as e:
            log.error("server refused the %s of lease %s: %s", letter.kind, letter.lease_id, e)
            self.outbox.reject(letter, str(e))
            if letter.kind == "complete" and e.status == 422:  # fail it now rather than at lease expiry
                try:
                    self.client.fail(letter.lease_id, f"result refused by the server: {e.detail}"[:4000])
                except (ApiError, ServerUnavailable):
                    pass
            return False
        if done is None:  # stopping: it stays in the outbox for the next start
            return False
        self.outbox.delivered(letter)
        return True

    def _deliver_outbox(self) -> None:
        for letter in self.outbox.pending():
            log.info("delivering a %s kept from before for lease %s", letter.kind, letter.lease_id)
            self._deliver(letter)
