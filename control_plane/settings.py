"""Settings of the control-plane process, read once from ``LINESIDE_*`` environment variables."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "lineside-dev-secret-change-me"


class ControlPlaneSettings(BaseSettings):
    """Everything the control plane can be told from its environment."""

    model_config = SettingsConfigDict(env_prefix="LINESIDE_", extra="ignore")

    data_dir: Path = Field(
        default=Path.home() / ".lineside", description="Holds the SQLite database and the model store."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default SQLite in data_dir.",
    )
    secret_key: SecretStr = Field(
        default=SecretStr(DEFAULT_SECRET),
        description="Derives each site's broker admin password; production refuses the default.",
    )
    bootstrap_token: SecretStr | None = Field(
        default=None,
        description="API token of the first operator, created when no operator exists (else one is generated).",
    )
    production: bool = Field(default=False, description="Refuse development defaults (secret key).")
    heartbeat_timeout_s: float = Field(default=30.0, gt=0, description="A node silent this long is marked offline.")
    join_token_ttl_s: float = Field(default=3600.0, gt=0, description="How long a node join token stays valid.")
    max_model_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="Largest ONNX upload accepted.")
    replica_hour_price: float = Field(default=0.9, ge=0, description="Price of one replica-hour on new slices.")
    planner_period_s: float = Field(default=30.0, gt=0, description="How often planned floors are applied.")
    broker_timeout_s: float = Field(default=5.0, gt=0, description="Wait for a site broker's answer to a change.")
    telemetry_period_s: float = Field(
        default=2.0, gt=0, le=300, description="How often each slice's ingress reports line telemetry."
    )
    monitor_sites: bool = Field(
        default=True, description="Subscribe to each site broker's telemetry and robot status (the dashboard)."
    )
    session_ttl_s: float = Field(default=12 * 3600.0, gt=0, description="How long a dashboard login lasts.")
    failed_parts_kept: int = Field(default=200, ge=1, description="Failed parts (with thumbnails) kept per line.")
    history_days: int = Field(default=90, ge=1, description="Days of per-minute line telemetry kept.")

    @model_validator(mode="after")
    def _no_default_secret_in_production(self) -> ControlPlaneSettings:
        if self.production and self.secret_key.get_secret_value() == DEFAULT_SECRET:
            raise ValueError("LINESIDE_SECRET_KEY must be set (not the development default) when LINESIDE_PRODUCTION=1")
        return self

    @property
    def url(self) -> str:
        """The database URL in use."""
        return self.database_url or f"sqlite:///{self.data_dir / 'lineside.db'}"

    @property
    def model_store(self) -> Path:
        """Folder of uploaded model files, named by their sha256."""
        return self.data_dir / "models"


@functools.cache
def get_settings() -> ControlPlaneSettings:
    """The process's settings, read from the environment once."""
    return ControlPlaneSettings()
