"""Server settings, read from ``MIXOPT_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "mixopt"


def default_database_url() -> str:
    return f"sqlite:///{default_data_dir() / 'mixopt.db'}"


MIN_SECRET_LENGTH = 16
"""Shortest admin token or join secret the server starts with."""


class Settings(BaseSettings):
    """Everything the server can be configured with. Defaults run with nothing else installed."""

    # No .env file: docker compose keeps its secrets in ./.env, which must not configure a local server.
    model_config = SettingsConfigDict(env_prefix="MIXOPT_", extra="ignore")

    database_url: str = Field(default_factory=default_database_url, description="SQLAlchemy URL; SQLite file by default")
    data_dir: Path = Field(default_factory=default_data_dir, description="where local state (join secret) is kept")
    join_secret: SecretStr | None = Field(
        None, description="secret workers present to register; default: generated once into data_dir/join-secret"
    )
    auth_enabled: bool = Field(
        False, description="require API tokens (`mixopt token create`) for the REST API and the dashboard"
    )
    public_read: bool = Field(False, description="with auth enabled, let anyone read (GETs, dashboard)")
    admin_token: SecretStr | None = Field(None, description="a bootstrap token with admin scope (compose, k8s)")
    metrics_token: SecretStr | None = Field(
        None, description="a bearer token that may read /metrics only (for Prometheus), besides read-scope tokens"
    )
    allow_open_network: bool = Field(
        False, description="allow binding a non-loopback address without auth (e.g. behind an authenticating proxy)"
    )
    host: str = Field("127.0.0.1", description="address `mixopt server` binds")
    port: int = Field(8000, description="port `mixopt server` binds")
    sweep_interval_s: float = Field(5.0, gt=0, description="how often the expiry sweeper requeues dead leases")
    lease_seconds: float = Field(60.0, gt=0, description="default lease length of a worker's trial; heartbeats renew it")
    ask_lease_seconds: float = Field(
        24 * 3600.0, gt=0, description="lease length of trials handed out by `ask` to outside trainers"
    )
    long_poll_s: float = Field(5.0, ge=0, le=60, description="how long `POST /leases` waits for work before 204")
    ask_wait_s: float = Field(
        10.0, ge=0, le=600, description="how long `ask` waits for the strategy's proposals when the caller gives no wait_s"
    )
    ask_max_wait_s: float = Field(
        25.0, ge=0, le=600, description="the longest `ask` waits for proposals, whatever wait_s the caller asks for"
    )
    strategy_slow_s: float = Field(30.0, gt=0, description="a strategy computing longer than this is logged as slow")
    strategy_timeout_s: float = Field(
        900.0, gt=0, description="a strategy computing longer than this is abandoned and its study failed with the reason"
    )
    keep_alive_s: int = Field(
        75, gt=0, description="how long an idle HTTP connection stays open: longer than a worker's heartbeat "
        "interval, so that workers reuse their connection instead of racing its close"
    )
    shutdown_grace_s: float = Field(
        5.0, ge=0, description="on SIGTERM, seconds requests in flight (long-polls) get before they are cut off"
    )
    recommend_interval_s: float = Field(
        10.0, ge=0, description="least seconds between two recomputations of a study's recommendation"
    )
    auto_migrate: bool = Field(True, description="run the database migrations when the server starts")
    db_pool_size: int = Field(20, ge=2, description="database connections each server process keeps open (Postgres): "
                              "MIXOPT_DB_THREADS of them for the workers' calls, the rest for the engine's runner "
                              "and the other routes")
    db_threads: int = Field(
        8, ge=1, description="threads each server process runs the workers' database calls on (at most "
        "MIXOPT_DB_POOL_SIZE); half of them at most serve the lease attempts that wake-ups of waiting workers start. "
        "Few are enough: one thread at a time runs Python, the others wait on the database, and each thread more "
        "takes the interpreter from the requests and from the runner that refills the queue"
    )
    worker_fast_path: bool = Field(
        True, description="serve the workers' lease, heartbeat and complete calls without FastAPI's per-request "
        "machinery when they are the common case (known worker, valid body); the answers are the same. "
        "False: every call through the documented routes"
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest request body accepted (bytes); larger ones get a 413"
    )
    log_json: bool = Field(False, description="structured logs as JSON lines instead of console text")
    log_level: str = Field("INFO", description="root log level")

    # Limits against abuse (see docs/security.md). Defaults suit a team's server; each is an env var.
    unauthenticated_body_bytes: int = Field(
        64 * 1024, ge=1024, description="largest body of a request without a valid token (worker registration, "
        "and every request when auth is enabled): checked from the headers, before the body is read"
    )
    auth_failures_max: int = Field(
        30, ge=1, description="failed secrets (401: join secret, API or worker token, dashboard login) one client "
        "address may send within auth_failure_window_s before it is locked out"
    )
    auth_failure_window_s: float = Field(60.0, gt=0, description="window of auth_failures_max (seconds)")
    auth_lockout_s: float = Field(300.0, ge=0, description="how long a locked-out address gets 429 (seconds)")
    body_timeout_s: float = Field(
        30.0, gt=0, description="seconds a request's body may take to arrive; slower ones get 408"
    )
    limit_concurrency: int = Field(
        4096, ge=1, description="uvicorn: most connections and tasks at once per process; beyond it, 503 (a fleet "
        "of N workers keeps about N connections open between heartbeats)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a new connection has to send its first request's line and headers; "
        "slower ones are closed (slow-header attacks)"
    )
    h11_max_incomplete_event_size: int = Field(
        64 * 1024, ge=1024, description="uvicorn: largest request line plus headers (bytes)"
    )
    worker_token_ttl_s: float | None = Field(
        None, gt=0, description="seconds a worker token stays valid after it was issued (none: until revoked or "
        "the join secret changes); a worker daemon with the join secret renews it by itself"
    )
    max_leases_per_worker: int = Field(
        256, ge=1, description="most trials one worker may hold leased at once (a batched worker holds one per "
        "trial of its batch); a lease call beyond it gets 409"
    )
    secure_cookies: bool = Field(
        False, description="always mark the dashboard cookie Secure (set it behind a TLS-terminating proxy)"
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="uvicorn: proxies whose X-Forwarded-For/-Proto are trusted (comma-separated; "
        "the client address and https scheme then come from them)"
    )



@lru_cache
def get_settings() -> Settings:
    return Settings()


def resolve_join_secret(settings: Settings) -> str:
    """The join secret: from the settings, else from ``data_dir/join-secret``, created on first use
    (readable by its owner only) so that local workers find it without configuration."""
    if settings.join_secret is not None:
        return settings.join_secret.get_secret_value()
    path = settings.data_dir / "join-secret"
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def known_join_secret(settings: Settings) -> str | None:
    """The join secret if one is set or was generated already (unlike :func:`resolve_join_secret`,
    never creates one): for tools that only inspect tokens."""
    if settings.join_secret is not None:
        return settings.join_secret.get_secret_value()
    path = settings.data_dir / "join-secret"
    return path.read_text().strip() if path.exists() else None


def check_secrets(settings: Settings) -> None:
    """Refuse to serve with a short admin token, join secret or metrics token: they fall to guessing even with
    the lockout on failed secrets."""
    for name in ("admin_token", "join_secret", "metrics_token"):
        value = getattr(settings, name)
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"MIXOPT_{name.upper()}: at least {MIN_SECRET_LENGTH} characters, e.g. "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to serve an open API beyond this machine: a non-loopback bind needs auth."""
    if host not in LOOPBACK and not settings.auth_enabled and not settings.allow_open_network:
        raise ValueError(
            f"refusing to serve on {host} without authentication: set MIXOPT_AUTH_ENABLED=true and create "
            "tokens with `mixopt token create`, or set MIXOPT_ALLOW_OPEN_NETWORK=true behind your own auth"
        )
