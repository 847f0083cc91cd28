"""Settings of the control-plane process, read once from ``LINESIDE_*`` environment variables."""

from __future__ import annotations

import functools
import os
import re
import secrets
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_LENGTH = 32
"""Every broker password is an HMAC under the key: a short key can be guessed offline from one of them."""
SECRET_KEY_FILE = "secret_key"


def _topic_safe(name: str) -> str:
    """``name`` as a broker login part: lower-case letters, digits and dashes (no '.', which splits logins)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63] or "control-plane"


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
    secret_key: SecretStr | None = Field(
        default=None,
        description=(
            f"Derives every broker password (admins', robots', slices'); at least {MIN_SECRET_LENGTH} characters. "
            f"Unset: generated once into <data_dir>/{SECRET_KEY_FILE} (0600); production refuses to start without it."
        ),
    )
    bootstrap_token: SecretStr | None = Field(
        default=None,
        description="API token of the first operator, created when no operator exists (else one is generated).",
    )
    db_pool_size: int = Field(default=10, ge=1, le=1000, description="PostgreSQL connections kept open.")
    db_max_overflow: int = Field(default=20, ge=0, le=1000, description="PostgreSQL connections opened beyond the pool "
                                 "under load, closed when returned.")  # fmt: skip
    db_pool_timeout_s: float = Field(default=30.0, gt=0, le=600, description="How long a request waits for a "
                                     "PostgreSQL connection before it is answered 503.")  # fmt: skip
    production: bool = Field(default=False, description="Refuse development defaults (secret key).")
    heartbeat_timeout_s: float = Field(default=30.0, gt=0, description="A node silent this long is marked offline.")
    join_token_ttl_s: float = Field(default=3600.0, gt=0, description="How long a node join token stays valid.")
    max_model_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="Largest ONNX upload accepted.")
    validator_concurrency: int = Field(
        default=2, ge=1, le=64, description="Model uploads validated at once per process; more answer 429."
    )
    validator_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="Wall-clock limit on validating one upload (a subprocess)."
    )
    validator_cpu_s: int = Field(
        default=60, ge=1, le=3600, description="CPU seconds the validation subprocess may use (RLIMIT_CPU)."
    )
    validator_memory_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024**3,
        description="Address space of the validation subprocess (RLIMIT_AS); must hold ONNX Runtime and two "
        "copies of the model (a 256 MB model validates within 1 GiB).",
    )
    replica_hour_price: Decimal = Field(
        default=Decimal("0.90"),
        ge=0,
        allow_inf_nan=False,
        description="Reserved replica-hour price of the standard product seeded for each new site (major units "
        "of `currency`; burst costs the same, bank half). Operators reprice it in the catalogue.",
    )
    currency: str = Field(default="EUR", pattern="^[A-Z]{3}$", description="ISO 4217 currency of new tenants.")
    default_credit_limit: Decimal = Field(
        default=Decimal("500.00"),
        ge=0,
        allow_inf_nan=False,
        description="Credit a new tenant may run up before its burst and bank slices are held at their floor "
        "and new leases are refused (402); operators change it per tenant.",
    )
    billing_period_s: float = Field(
        default=60.0, gt=0, description="How often new usage is rated, vouchers expire and months are closed."
    )
    telemetry_session_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        le=2**32 - 1,
        description="How long a site broker keeps telemetry (billed verdicts) for the control plane while it is "
        "down: its monitor's MQTT session expiry.",
    )
    planner_period_s: float = Field(default=30.0, gt=0, description="How often planned floors are applied.")
    broker_timeout_s: float = Field(default=5.0, gt=0, description="Wait for a site broker's answer to a change.")
    telemetry_period_s: float = Field(
        default=2.0, gt=0, le=300, description="How often each slice's ingress reports line telemetry."
    )
    monitor_sites: bool = Field(
        default=True, description="Subscribe to each site broker's telemetry and robot status (the dashboard)."
    )
    instance: str = Field(
        default_factory=lambda: _topic_safe(socket.gethostname()),
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="This control plane instance's name (default: the host name); each instance watches a site "
        "with its own broker login, pinned to its own client id. Give instances on one host distinct names.",
    )
    session_ttl_s: float = Field(default=12 * 3600.0, gt=0, description="How long a dashboard login lasts.")
    api_token_ttl_days: int = Field(
        default=90, ge=1, le=366, description="Lifetime of API tokens that do not ask for another (at most 366 days)."
    )
    login_max_failures: int = Field(
        default=5, ge=1, le=1000, description="Wrong passwords in a row that lock an account (or unknown e-mail)."
    )
    login_lockout_s: float = Field(
        default=900.0, gt=0, le=86400, description="How long a locked account refuses logins, right password or not."
    )
    login_attempts_per_minute: int = Field(
        default=20, ge=1, description="Login attempts one client address may make per minute (per process)."
    )
    cookie_secure: bool = Field(
        default=False,
        description="Send the session cookie only over HTTPS, and send HSTS; LINESIDE_PRODUCTION=1 forces it on.",
    )
    trusted_proxies: str = Field(
        default="127.0.0.1",
        description="Comma-separated addresses (or CIDRs, or '*') of reverse proxies whose X-Forwarded-For/-Proto "
        "are believed; empty: none. Rate limits key on the client address these headers give.",
    )
    failed_parts_kept: int = Field(default=200, ge=1, description="Failed parts (with thumbnails) kept per line.")
    history_days: int = Field(default=90, ge=1, description="Days of per-minute line telemetry kept.")

    _secret_key_source: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _resolve_secret_key(self) -> ControlPlaneSettings:
        """A configured key, or (outside production) one generated once per install: never a public default."""
        if self.secret_key is not None:
            if len(self.secret_key.get_secret_value()) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"LINESIDE_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters; "
                    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
            self._secret_key_source = "configured (LINESIDE_SECRET_KEY)"
            return self
        if self.production:
            raise ValueError(
                "LINESIDE_SECRET_KEY must be set when LINESIDE_PRODUCTION=1 (it derives every broker password); "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        key, self._secret_key_source = _install_key(self.data_dir / SECRET_KEY_FILE)
        self.secret_key = SecretStr(key)
        return self

    @property
    def key(self) -> str:
        """The secret key's value (resolved: never None once the settings exist)."""
        assert self.secret_key is not None
        return self.secret_key.get_secret_value()

    @property
    def secret_key_source(self) -> str:
        """Where the key came from: configured, generated at PATH or loaded from PATH (logged at start)."""
        return self._secret_key_source

    @model_validator(mode="after")
    def _secure_cookie_in_production(self) -> ControlPlaneSettings:
        """Production is served over HTTPS (behind a proxy or not): the session cookie never travels in clear."""
        if self.production:
            self.cookie_secure = True
        return self

    def proxy_options(self) -> dict[str, Any]:
        """uvicorn's options for believing forwarded headers: only from ``trusted_proxies``, else never."""
        trusted = ",".join(a.strip() for a in self.trusted_proxies.split(",") if a.strip())
        return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or "127.0.0.1"}

    @property
    def url(self) -> str:
        """The database URL in use."""
        return self.database_url or f"sqlite:///{self.data_dir / 'lineside.db'}"

    @property
    def model_store(self) -> Path:
        """Folder of uploaded model files, named by their sha256."""
        return self.data_dir / "models"


def _install_key(path: Path) -> tuple[str, str]:
    """This install's key from ``path``, created (0600, in a 0700 folder) on first use."""
    if path.exists():
        key = path.read_text().strip()
        if len(key) < MIN_SECRET_LENGTH:
            raise ValueError(f"{path} holds a key shorter than {MIN_SECRET_LENGTH} characters; delete it or fix it")
        return key, f"loaded from {path}"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:  # O_EXCL: never readable by others, not even briefly; a second process starting now reads the first's
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _install_key(path)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, f"generated at {path}"


@functools.cache
def get_settings() -> ControlPlaneSettings:
    """The process's settings, read from the environment once."""
    return ControlPlaneSettings()
