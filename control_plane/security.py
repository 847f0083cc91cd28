"""Tokens, derived broker credentials and who may do what.

API, join and node tokens are 32 random bytes shown once; only their SHA-256
is stored (they are high-entropy, so a slow hash adds nothing). People's
passwords are argon2id hashes (``verify_password``). MQTT passwords of robots,
slice ingresses and each site's broker admin are *derived*:
HMAC-SHA256(secret_key, purpose) — the database holds none of them, and the
control plane can re-create any broker credential when it reconciles a site's
broker (see ``broker_sync``). Rotating a robot bumps its ``credential_epoch``,
which changes the derived password.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from control_plane.errors import Forbidden
from control_plane.models import Role

log = logging.getLogger(__name__)

TOKEN_PREFIXES = {"api": "ls_", "join": "lsj_", "node": "lsn_"}


def new_token(kind: str) -> str:
    """A fresh random token such as ``ls_...`` (API), ``lsj_...`` (site join) or ``lsn_...`` (node)."""
    return TOKEN_PREFIXES[kind] + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_secret_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by this user only (0600, folder created 0700), whatever the umask."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def derived_secret(secret_key: str, purpose: str) -> str:
    """A URL-safe password bound to ``purpose`` (e.g. ``robot:12:1``) under the control plane's key."""
    digest = hmac.new(secret_key.encode(), purpose.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


PASSWORDS = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
"""argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): about 50 ms a check, and a
login costs that much memory while it runs. The parameters live in each hash string, so raising them
here rehashes every user's password at their next login (``check_needs_rehash``)."""

_LEGACY_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # hashes written before argon2: ``scrypt$salt$digest``


def hash_password(password: str) -> str:
    """Dashboard passwords are chosen by people, so they get a slow, salted, memory-hard hash."""
    return PASSWORDS.hash(password)


@functools.cache
def _dummy_hash() -> str:
    return PASSWORDS.hash(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str | None) -> tuple[bool, bool]:
    """``(matches, needs_rehash)``; ``needs_rehash`` means: store ``hash_password(password)`` now.

    Unknown users and users without a password cost one argon2 check too (against a dummy hash),
    so the time a login takes does not reveal whether an account exists.
    """
    if stored is not None and stored.startswith("scrypt$"):
        return _check_legacy_scrypt(password, stored), True
    if stored is None or not stored.startswith("$argon2"):
        _verify_argon2(_dummy_hash(), password)
        return False, False
    if not _verify_argon2(stored, password):
        return False, False
    return True, PASSWORDS.check_needs_rehash(stored)


def _verify_argon2(stored: str, password: str) -> bool:
    try:
        return PASSWORDS.verify(stored, password)
    except VerifyMismatchError:
        return False
    except (VerificationError, InvalidHashError):
        log.error("a stored password hash cannot be read (%s...); that user cannot log in", stored[:12])
        return False


def _check_legacy_scrypt(password: str, stored: str) -> bool:
    try:
        _, salt, digest = stored.split("$")
        given = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, **_LEGACY_SCRYPT)
        return hmac.compare_digest(given, base64.b64decode(digest))
    except ValueError:
        log.error("a stored scrypt password hash cannot be read; that user cannot log in")
        return False


class Permission(StrEnum):
    """What a route lets its caller do. Routes name a member (``deps.allowed(Permission.MANAGE_SLICES, ...)``),
    so a misspelt permission fails at import and in mypy, never as a 500 on a request."""

    MANAGE_TENANTS = "manage_tenants"
    MANAGE_USERS = "manage_users"
    MANAGE_SITES = "manage_sites"
    MANAGE_NODES = "manage_nodes"  # every node of every owner, capacity alerts, the operators' dashboard
    LEND_NODES = "lend_nodes"  # join, read, lend and take back nodes: operators any, edge operators their tenant's
    READ_SITES = "read_sites"
    MANAGE_LINES = "manage_lines"
    MANAGE_ROBOTS = "manage_robots"
    READ_ROBOTS = "read_robots"
    UPLOAD_MODELS = "upload_models"
    MANAGE_SLICES = "manage_slices"
    READ_SLICES = "read_slices"
    ROTATE_SLICE_CREDENTIALS = "rotate_slice_credentials"  # operators too: a lost node is theirs to answer
    ROLL_OUT_MODELS = "roll_out_models"  # start, advance and abort a slice's move to a new model version
    FIT_MODELS = "fit_models"  # fit an anomaly model from good photos on the tenant's site; see and cancel fits
    MANAGE_CATALOGUE = "manage_catalogue"  # products and their price versions
    READ_CATALOGUE = "read_catalogue"
    BUY_LEASES = "buy_leases"
    READ_BILLING = "read_billing"  # spend, balances, charges, budgets, invoices, voucher balances
    SET_BUDGET = "set_budget"
    MANAGE_FUNDS = "manage_funds"  # top-ups, credit limits (what a tenant paid or may owe)
    MANAGE_VOUCHERS = "manage_vouchers"  # programmes, codes, reports (for a funder)
    REDEEM_VOUCHERS = "redeem_vouchers"
    READ_BANK = "read_bank"  # a contributor's page (its own nodes' hours and credits), the bank's rules
    BANK_PAYOUT = "bank_payout"  # turn one's own bank credits into a payable

    @property
    def roles(self) -> tuple[Role, ...]:
        """The roles that may, in the order a refusal names them."""
        return ROLES_FOR[self]


ROLES_FOR: Mapping[Permission, tuple[Role, ...]] = MappingProxyType({
    Permission.MANAGE_TENANTS: (Role.OPERATOR,),
    Permission.MANAGE_USERS: (Role.OPERATOR, Role.PLANT_MANAGER),
    Permission.MANAGE_SITES: (Role.OPERATOR,),
    Permission.MANAGE_NODES: (Role.OPERATOR,),
    Permission.LEND_NODES: (Role.OPERATOR, Role.EDGE_OPERATOR),
    Permission.READ_SITES: (Role.OPERATOR, Role.PLANT_MANAGER, Role.FACTORY_IT, Role.EDGE_OPERATOR),
    Permission.MANAGE_LINES: (Role.PLANT_MANAGER, Role.FACTORY_IT),
    Permission.MANAGE_ROBOTS: (Role.FACTORY_IT,),
    Permission.READ_ROBOTS: (Role.FACTORY_IT, Role.PLANT_MANAGER, Role.OPERATOR),
    Permission.UPLOAD_MODELS: (Role.PLANT_MANAGER, Role.FACTORY_IT, Role.OPERATOR),
    Permission.MANAGE_SLICES: (Role.PLANT_MANAGER,),
    Permission.READ_SLICES: (Role.PLANT_MANAGER, Role.FACTORY_IT, Role.OPERATOR),
    Permission.ROTATE_SLICE_CREDENTIALS: (Role.OPERATOR, Role.PLANT_MANAGER),
    Permission.ROLL_OUT_MODELS: (Role.PLANT_MANAGER, Role.FACTORY_IT),
    Permission.FIT_MODELS: (Role.FACTORY_IT, Role.PLANT_MANAGER),
    Permission.MANAGE_CATALOGUE: (Role.OPERATOR,),
    Permission.READ_CATALOGUE: (Role.OPERATOR, Role.PLANT_MANAGER, Role.FACTORY_IT),
    Permission.BUY_LEASES: (Role.PLANT_MANAGER,),
    Permission.READ_BILLING: (Role.PLANT_MANAGER, Role.OPERATOR),
    Permission.SET_BUDGET: (Role.PLANT_MANAGER,),
    Permission.MANAGE_FUNDS: (Role.OPERATOR,),
    Permission.MANAGE_VOUCHERS: (Role.OPERATOR,),
    Permission.REDEEM_VOUCHERS: (Role.PLANT_MANAGER,),
    Permission.READ_BANK: (Role.OPERATOR, Role.EDGE_OPERATOR, Role.PLANT_MANAGER),
    Permission.BANK_PAYOUT: (Role.EDGE_OPERATOR, Role.PLANT_MANAGER),
})  # fmt: skip
"""Who may do what: one row per permission (a permission without one fails at import, below)."""
if missing := set(Permission) - set(ROLES_FOR):
    raise RuntimeError(f"permissions without roles: {sorted(missing)}")


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a user with a role, in a tenant (operators have none)."""

    user_id: int
    role: Role
    tenant_id: int | None
    token_id: int | None = None  # the API token or dashboard session the request came with

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR

    def may(self, permission: Permission) -> bool:
        return self.role in permission.roles

    def require(self, permission: Permission, *, action: str) -> None:
        """Raise ``Forbidden`` naming the roles that may, unless the caller's role has ``permission``."""
        if not self.may(permission):
            allowed = " or ".join(r.value for r in permission.roles)
            raise Forbidden(f"{action} needs the {allowed} role; your token is {self.role.value}")

    def sees_tenant(self, tenant_id: int | None) -> bool:
        """Operators see every tenant; everyone else only their own."""
        return self.is_operator or (tenant_id is not None and tenant_id == self.tenant_id)
