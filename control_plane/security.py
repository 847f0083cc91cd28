"""Tokens, derived broker credentials and who may do what.

API, join and node tokens are 32 random bytes shown once; only their SHA-256
is stored (they are high-entropy, so a slow hash adds nothing). MQTT passwords
of robots, slice ingresses and each site's broker admin are *derived*:
HMAC-SHA256(secret_key, purpose) — the database holds none of them, and the
control plane can re-create any broker credential when it reconciles a site's
broker (see ``broker_sync``). Rotating a robot bumps its ``credential_epoch``,
which changes the derived password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from control_plane.errors import Forbidden
from control_plane.models import Role

TOKEN_PREFIXES = {"api": "ls_", "join": "lsj_", "node": "lsn_"}


def new_token(kind: str) -> str:
    """A fresh random token such as ``ls_...`` (API), ``lsj_...`` (site join) or ``lsn_...`` (node)."""
    return TOKEN_PREFIXES[kind] + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def derived_secret(secret_key: str, purpose: str) -> str:
    """A URL-safe password bound to ``purpose`` (e.g. ``robot:12:1``) under the control plane's key."""
    digest = hmac.new(secret_key.encode(), purpose.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """Dashboard passwords are chosen by people, so they get a slow, salted hash (scrypt)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def check_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt, digest = stored.split("$")
    given = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, **_SCRYPT)
    return hmac.compare_digest(given, base64.b64decode(digest))


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a user with a role, in a tenant (operators have none)."""

    user_id: int
    role: Role
    tenant_id: int | None

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR

    def require(self, *roles: Role, action: str) -> None:
        """Raise ``Forbidden`` unless the caller has one of ``roles``."""
        if self.role not in roles:
            allowed = " or ".join(r.value for r in roles)
            raise Forbidden(f"{action} needs the {allowed} role; your token is {self.role.value}")

    def sees_tenant(self, tenant_id: int | None) -> bool:
        """Operators see every tenant; everyone else only their own."""
        return self.is_operator or (tenant_id is not None and tenant_id == self.tenant_id)


# Who may do what; routes call ``principal.require(*CAN[...], action=...)``.
CAN: dict[str, tuple[Role, ...]] = {
    "manage_tenants": (Role.OPERATOR,),
    "manage_users": (Role.OPERATOR, Role.PLANT_MANAGER),
    "manage_sites": (Role.OPERATOR,),
    "manage_nodes": (Role.OPERATOR,),
    "read_sites": (Role.OPERATOR, Role.PLANT_MANAGER, Role.FACTORY_IT),
    "manage_lines": (Role.PLANT_MANAGER, Role.FACTORY_IT),
    "manage_robots": (Role.FACTORY_IT,),
    "read_robots": (Role.FACTORY_IT, Role.PLANT_MANAGER, Role.OPERATOR),
    "upload_models": (Role.PLANT_MANAGER, Role.FACTORY_IT, Role.OPERATOR),
    "manage_slices": (Role.PLANT_MANAGER,),
    "read_slices": (Role.PLANT_MANAGER, Role.FACTORY_IT, Role.OPERATOR),
}
