"""The Python client of the mixopt REST API: every endpoint, for users and for the worker daemon.

    from workers.client import MixoptClient

    with MixoptClient("http://127.0.0.1:8000") as api:
        study = api.create_study({...}, start=True)
        for trial in api.ask(study["id"], n=4):
            losses = my_trainer(trial["mixture"], trial["fidelity_spec"])
            api.report_result(trial["id"], losses, lease_id=trial["lease_id"])
        print(api.recommendation(study["id"]))

Errors: :class:`ApiError` for an answer with a 4xx/5xx status (``status``, ``detail``),
:class:`ServerUnavailable` when the server cannot be reached. Responses are plain dicts,
shaped as the OpenAPI schema at ``/docs`` says.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

__all__ = ["ApiError", "MixoptClient", "ServerUnavailable"]

DEFAULT_URL = "http://127.0.0.1:8000"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
LOG_TAIL_CHARS, MESSAGE_CHARS, REASON_CHARS = 20_000, 2000, 4000
"""The server's limits on a heartbeat's log tail and message and on a failure reason."""


def clean_text(text: str | None, most: int, *, keep_end: bool = False) -> str | None:
    """``text`` as the server accepts it: control characters other than tab and newline removed
    (a trainer printing NUL or terminal escapes must not make every heartbeat fail), cut to
    ``most`` characters (its end when ``keep_end``: a log's last lines matter)."""
    if text is None:
        return None
    text = _CONTROL.sub("", text)
    return text[-most:] if keep_end else text[:most]


class ApiError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = ""):
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (server-side trouble, not a refusal)."""
        return self.status >= 500 or self.status == 429


class ServerUnavailable(Exception):
    """The server could not be reached (connection refused, timeout, ...)."""


class MixoptClient:
    """A thin, typed-by-docstring wrapper over the REST API.

    Args:
        url: the server's base URL (default ``$MIXOPT_URL`` or ``http://127.0.0.1:8000``).
        token: a bearer token (an API token, or a worker token for the lease calls).
        timeout: seconds per request (long-polls add their wait).
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = (url or os.environ.get("MIXOPT_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("MIXOPT_TOKEN")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MixoptClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """One call; returns the decoded JSON (``None`` for 204)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            r = self._http.request(method, path, json=json, params=params, headers=headers,
                                   timeout=timeout or self.timeout)
        except (httpx.TransportError, httpx.TimeoutException) as e:
            raise ServerUnavailable(f"{method} {self.url}{path}: {type(e).__name__}: {e}") from e
        if r.status_code == 204:
            return None
        try:
            body = r.json()
        except ValueError:
            body = r.text
        if r.status_code >= 400:
            detail = body.get("detail", body) if isinstance(body, dict) else body
            raise ApiError(r.status_code, detail, method, path)
        return body

    # -- health ---------------------------------------------------------------------------------
    def health(self) -> dict:
        """``GET /healthz``: liveness and database reachability."""
        return self.request("GET", "/healthz")

    def metrics(self) -> str:
        """``GET /metrics``: every series in the Prometheus text format."""
        return self.request("GET", "/metrics")

    # -- studies --------------------------------------------------------------------------------
    def create_study(self, body: Mapping[str, Any], *, start: bool = False) -> dict:
        """``POST /api/v1/studies``: create a study (see ``StudyCreate``); ``start`` runs it at once."""
        return self.request("POST", "/api/v1/studies", json={**body, "start": start or body.get("start", False)})

    def list_studies(self, state: str | None = None, limit: int = 100, offset: int = 0) -> dict:
        """``GET /api/v1/studies``: ``{"items": [...], "total": n}``, newest first."""
        params = {"limit": limit, "offset": offset, **({"state": state} if state else {})}
        return self.request("GET", "/api/v1/studies", params=params)

    def get_study(self, study_id: int) -> dict:
        """``GET /api/v1/studies/{id}``: the study with budget spent, counts and recommendation."""
        return self.request("GET", f"/api/v1/studies/{study_id}")

    def start(self, study_id: int) -> dict:
        return self.request("POST", f"/api/v1/studies/{study_id}/start")

    def pause(self, study_id: int) -> dict:
        return self.request("POST", f"/api/v1/studies/{study_id}/pause")

    def resume(self, study_id: int) -> dict:
        return self.request("POST", f"/api/v1/studies/{study_id}/resume")

    def cancel(self, study_id: int, reason: str | None = None) -> dict:
        return self.request("POST", f"/api/v1/studies/{study_id}/cancel", json={"reason": reason})

    def ask(self, study_id: int, n: int = 1, client: str | None = None, lease_seconds: float | None = None,
            wait_s: float | None = None, retries: int = 2) -> list[dict]:
        """``POST /api/v1/studies/{id}/ask``: up to ``n`` trials leased to you (may be empty).

        The server waits up to ``wait_s`` (default: its own setting) for the strategy's proposals.
        Each call carries a fresh ``request_id``; a call that times out or meets a 5xx is repeated
        (``retries`` times) with the same id, so the trials it leased are returned, not stranded."""
        body = {"n": n, "client": client, "lease_seconds": lease_seconds, "wait_s": wait_s,
                "request_id": uuid.uuid4().hex}
        timeout, attempt = self.timeout + (wait_s or 0), 0
        while True:
            try:
                return self.request("POST", f"/api/v1/studies/{study_id}/ask", json=body, timeout=timeout)["trials"]
            except (ServerUnavailable, ApiError) as e:
                if attempt >= retries or (isinstance(e, ApiError) and not e.retryable):
                    raise
                time.sleep(min(2.0 ** attempt, 10.0))
                attempt += 1

    def create_trial(self, study_id: int, mixture: Mapping[str, float], fidelity: str,
                     result: Mapping[str, Any] | None = None) -> dict:
        """``POST /api/v1/studies/{id}/trials``: queue your own mixture, or record a run done
        elsewhere by passing its ``result`` (``{"losses": ..., "metrics": ...}``)."""
        body = {"mixture": dict(mixture), "fidelity": fidelity, "result": None if result is None else dict(result)}
        return self.request("POST", f"/api/v1/studies/{study_id}/trials", json=body)

    def list_trials(self, study_id: int, *, state: str | None = None, fidelity: str | None = None,
                    after_id: int | None = None, limit: int = 100) -> dict:
        """``GET /api/v1/studies/{id}/trials``: one page ``{"items", "total", "next_after_id"}``."""
        params = {"limit": limit, **{k: v for k, v in
                                     {"state": state, "fidelity": fidelity, "after_id": after_id}.items() if v is not None}}
        return self.request("GET", f"/api/v1/studies/{study_id}/trials", params=params)

    def iter_trials(self, study_id: int, **filters: Any) -> Iterator[dict]:
        """Every trial of the study, following the pages."""
        after = None
        while True:
            page = self.list_trials(study_id, after_id=after, limit=1000, **filters)
            yield from page["items"]
            after = page["next_after_id"]
            if after is None:
                return

    def recommendation(self, study_id: int) -> dict:
        """``GET /api/v1/studies/{id}/recommendation``: ``{mixture, predicted, uncertainty, ...}``."""
        return self.request("GET", f"/api/v1/studies/{study_id}/recommendation")

    # -- trials ---------------------------------------------------------------------------------
    def get_trial(self, trial_id: int) -> dict:
        return self.request("GET", f"/api/v1/trials/{trial_id}")

    def curve(self, trial_id: int) -> list[dict]:
        """``GET /api/v1/trials/{id}/curve``: the loss-curve points."""
        return self.request("GET", f"/api/v1/trials/{trial_id}/curve")["points"]

    def report_result(self, trial_id: int, losses: Mapping[str, float], metrics: Mapping[str, float] | None = None,
                      *, lease_id: str | None = None, **extra: Any) -> dict:
        """``POST /api/v1/trials/{id}/result`` for an asked trial (``extra``: tokens, wall_s, curve)."""
        body = {"losses": dict(losses), "metrics": dict(metrics or {}), "lease_id": lease_id, **extra}
        return self.request("POST", f"/api/v1/trials/{trial_id}/result", json=body)

    def report_failure(self, trial_id: int, reason: str, *, retryable: bool = False, lease_id: str | None = None) -> dict:
        """``POST /api/v1/trials/{id}/fail`` for an asked trial."""
        body = {"reason": clean_text(reason, REASON_CHARS), "retryable": retryable, "lease_id": lease_id}
        return self.request("POST", f"/api/v1/trials/{trial_id}/fail", json=body)

    # -- workers and leases (worker token) ----------------------------------------------------------
    def register_worker(self, name: str, join_secret: str, capabilities: Mapping[str, Any] | None = None) -> dict:
        """``POST /api/v1/workers``: ``{"id", "token"}``; use the token for the lease calls. Sent
        while ``self.token`` is the worker's old token (expired, or from before the join secret
        changed), it renews that worker's token: same id, same leases."""
        body = {"name": name, "join_secret": join_secret, "capabilities": dict(capabilities or {})}
        return self.request("POST", "/api/v1/workers", json=body)

    def list_workers(self) -> list[dict]:
        return self.request("GET", "/api/v1/workers")["items"]

    def me(self) -> dict:
        """``GET /api/v1/workers/me``: the worker this token belongs to."""
        return self.request("GET", "/api/v1/workers/me")

    def segments(self, trial_id: int) -> list[dict]:
        """``GET /api/v1/trials/{id}/segments``: an online trial's segments, all attempts."""
        return self.request("GET", f"/api/v1/trials/{trial_id}/segments")["items"]

    def get_worker(self, worker_id: int) -> dict:
        return self.request("GET", f"/api/v1/workers/{worker_id}")

    def worker_tokens(self) -> list[dict]:
        """``GET /api/v1/workers/tokens`` (admin): every worker's token state, never its value."""
        return self.request("GET", "/api/v1/workers/tokens")["items"]

    def revoke_worker(self, worker_id: int) -> dict:
        """``POST /api/v1/workers/{id}/revoke`` (admin): its token stops working; its leases end."""
        return self.request("POST", f"/api/v1/workers/{worker_id}/revoke")

    def lease(self, wait_s: float | None = None, max_trials: int = 1, model: str | None = None) -> dict | None:
        """``POST /api/v1/leases``: the next trial for this worker, or ``None`` after ``wait_s``.
        ``max_trials`` > 1: up to that many trials with the first one's training settings, all in
        the answer's ``leases`` (the first also at the top level); ``model``: only that preset."""
        body: dict[str, Any] = {"wait_s": wait_s}
        if max_trials != 1:
            body["max_trials"] = max_trials
        if model is not None:
            body["model"] = model
        return self.request("POST", "/api/v1/leases", json=body, timeout=self.timeout + (wait_s or 0) + 5)

    def heartbeat(self, lease_id: str, progress: Mapping[str, Any] | None = None,
                  curve: list[Mapping[str, Any]] | None = None, log_tail: str | None = None) -> dict:
        """``POST /api/v1/leases/{id}/heartbeat``: ``{"action": "continue"|"stop", "expires_at"}``."""
        progress = dict(progress or {})
        if isinstance(progress.get("message"), str):
            progress["message"] = clean_text(progress["message"], MESSAGE_CHARS)
        body = {"progress": progress, "curve": list(curve or []),
                "log_tail": clean_text(log_tail, LOG_TAIL_CHARS, keep_end=True)}
        return self.request("POST", f"/api/v1/leases/{lease_id}/heartbeat", json=body)

    def segment(self, lease_id: str, completed_index: int | None, losses: Mapping[str, float] | None,
                step: int | None = None) -> dict:
        """``POST /api/v1/leases/{id}/segment`` (online trials): report the losses at the end of
        segment ``completed_index`` (``None`` on the first call), get ``{"done", "segment"}``."""
        body = {"completed_index": completed_index, "losses": None if losses is None else dict(losses), "step": step}
        return self.request("POST", f"/api/v1/leases/{lease_id}/segment", json=body)

    def complete(self, lease_id: str, result: Mapping[str, Any]) -> dict:
        """``POST /api/v1/leases/{id}/complete``: final results; safe to repeat."""
        return self.request("POST", f"/api/v1/leases/{lease_id}/complete", json=dict(result))

    def fail(self, lease_id: str, reason: str, retryable: bool = False) -> dict:
        body = {"reason": clean_text(reason, REASON_CHARS), "retryable": retryable}
        return self.request("POST", f"/api/v1/leases/{lease_id}/fail", json=body)

    def release(self, lease_id: str) -> dict:
        """Give the trial back without counting an attempt."""
        return self.request("POST", f"/api/v1/leases/{lease_id}/release")
