"""Server settings, read from ``MIXOPT_*`` environment variables (and a ``.env`` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    path = Path.home() / ".local" / "share" / "mixopt" / "mixopt.db"
    return f"sqlite:///{path}"


class Settings(BaseSettings):
    """Everything the server can be configured with. Defaults run with nothing else installed."""

    model_config = SettingsConfigDict(env_prefix="MIXOPT_", env_file=".env", extra="ignore")

    database_url: str = Field(default_factory=default_database_url, description="SQLAlchemy URL; SQLite file by default")
    host: str = Field("127.0.0.1", description="address `mixopt server` binds")
    port: int = Field(8000, description="port `mixopt server` binds")
    sweep_interval_s: float = Field(5.0, gt=0, description="how often the expiry sweeper requeues dead leases")
    lease_seconds: float = Field(60.0, gt=0, description="default lease length of a worker's trial; heartbeats renew it")
    ask_lease_seconds: float = Field(
        24 * 3600.0, gt=0, description="lease length of trials handed out by `ask` to outside trainers"
    )
    long_poll_s: float = Field(5.0, ge=0, le=60, description="how long `POST /leases` waits for work before 204")
    recommend_interval_s: float = Field(
        10.0, ge=0, description="least seconds between two recomputations of a study's recommendation"
    )
    auto_migrate: bool = Field(True, description="run the database migrations when the server starts")
    max_attempts: int = Field(3, ge=1, description="default attempts per trial before it fails")
    db_pool_size: int = Field(10, ge=1, description="connection pool size (Postgres)")
    log_json: bool = Field(False, description="structured logs as JSON lines instead of console text")
    log_level: str = Field("INFO", description="root log level")


@lru_cache
def get_settings() -> Settings:
    return Settings()
