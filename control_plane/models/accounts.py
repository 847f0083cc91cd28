"""Tenants (factories), users and their roles, API tokens and dashboard logins."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import field_validator
from sqlmodel import Field, SQLModel

from control_plane.models._common import Input, RowId, topic_safe_name, utcnow

_EMAIL = re.compile(
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"  # local part: RFC 5322 dot-atoms, no quotes
    r"@([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",  # host names with a dot
    re.IGNORECASE,
)  # no <, >, quotes, spaces or backslashes: an e-mail is shown on pages and in logs


class Role(StrEnum):
    OPERATOR = "operator"
    PLANT_MANAGER = "plant_manager"
    FACTORY_IT = "factory_it"
    EDGE_OPERATOR = "edge_operator"  # runs its tenant's own nodes: joins them, lends their windows, takes them back


class TenantCreate(Input):
    slug: str = Field(description="Topic-safe short name, e.g. 'acme'; appears in MQTT topics.")
    name: str = Field(min_length=1, max_length=200, description="Display name of the factory.")
    _check_slug = field_validator("slug")(topic_safe_name)


class Tenant(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(index=True, unique=True, max_length=63)
    name: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)


class TenantPublic(SQLModel):
    id: int
    slug: str
    name: str
    created_at: datetime


class UserCreate(Input):
    email: str = Field(max_length=320, description="Login name (an e-mail address).")
    role: Role = Field(description="operator, plant_manager, factory_it or edge_operator.")
    tenant_id: RowId | None = Field(default=None, description="Operators only: the tenant of the new user.")
    password: str | None = Field(
        default=None, min_length=10, max_length=200, description="Dashboard password (10+ characters); optional."
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not _EMAIL.fullmatch(value):
            raise ValueError(f"email {value!r} is not an e-mail address (name@domain)")
        return value.lower()


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int | None = Field(default=None, foreign_key="tenant.id", index=True)
    email: str = Field(unique=True, index=True, max_length=320)
    role: Role
    password_hash: str | None = Field(default=None, max_length=200)  # argon2id; None: API tokens only
    created_at: datetime = Field(default_factory=utcnow)
    failed_logins: int = 0  # consecutive wrong passwords; reset by a good one
    locked_until: datetime | None = None  # logins refused until then (too many wrong passwords)


class UserPublic(SQLModel):
    id: int
    tenant_id: int | None
    email: str
    role: Role


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    name: str = Field(max_length=100)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    expires_at: datetime | None = None  # None (tokens from before expiry existed): created_at + api_token_ttl_days


class Login(Input):
    email: str = Field(max_length=320, description="Login name.")
    password: str = Field(max_length=200)


class PasswordSet(Input):
    password: str = Field(min_length=10, max_length=200, description="New dashboard password (10+ characters).")
    current_password: str | None = Field(
        default=None, max_length=200, description="Your current password; required unless you have none yet."
    )


MAX_TOKEN_DAYS = 366


class TokenCreate(Input):
    name: str = Field(default="api", min_length=1, max_length=100, description="What the token is for.")
    expires_in_days: int | None = Field(
        default=None, ge=1, le=MAX_TOKEN_DAYS,
        description=f"Lifetime in days (1 to {MAX_TOKEN_DAYS}); default: the control plane's api_token_ttl_days.",
    )  # fmt: skip


class TokenPublic(SQLModel):
    """One of your API tokens or dashboard sessions, as listed: never the token or its hash."""

    id: int
    name: str
    prefix: str = Field(description="The token's first characters, to tell tokens apart.")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenIssued(SQLModel):
    id: int
    name: str
    token: str = Field(description="Shown once; only its hash is stored.")


class UserWithToken(UserPublic):
    token: str = Field(description="API token of the new user, shown once.")
