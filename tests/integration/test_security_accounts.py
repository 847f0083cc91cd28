"""Logins and accounts (issue 11, items 10 and 11): argon2 hashes, lockout, rate limits, timing that
reveals nothing, password changes that end other sessions, expiring tokens, deleting users.

Every test runs a real control plane app on SQLite and on PostgreSQL; no broker is needed, since
nothing here touches a site.
"""

from __future__ import annotations

import base64
import hashlib
import os
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from control_plane.app import create_app
from control_plane.models import ApiToken, User
from control_plane.security import PASSWORDS
from control_plane.settings import ControlPlaneSettings
from tests.integration.cp_fixtures import BOOT, bearer, ok

PASSWORD = "correct horse battery"
CSRF = {"X-Lineside-Request": "1"}


class Accounts:
    """An app with an operator, tenants ``acme`` and ``globex``, and a way to add users."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.op = bearer(BOOT)
        self.tenants = {
            slug: ok(client.post("/tenants", json={"slug": slug, "name": slug}, headers=self.op), 201)["id"]
            for slug in ("acme", "globex")
        }

    def user(self, email: str, role: str = "plant_manager", tenant: str | None = "acme",
             password: str | None = PASSWORD) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {"email": email, "role": role, "password": password}
        if tenant is not None:
            body["tenant_id"] = self.tenants[tenant]
        return ok(self.client.post("/users", json=body, headers=self.op), 201)

    def login(self, email: str, password: str = PASSWORD, client: TestClient | None = None) -> Any:
        return (client or self.client).post("/auth/login", json={"email": email, "password": password})

    def db(self) -> Session:
        return Session(self.client.app.state.engine)  # type: ignore[attr-defined]

    def stored_user(self, email: str) -> User:
        with self.db() as session:
            return session.exec(select(User).where(User.email == email)).one()


def _settings(database_url: str, tmp_path: Path, **overrides: Any) -> ControlPlaneSettings:
    return ControlPlaneSettings(data_dir=tmp_path / "data", database_url=database_url, bootstrap_token=BOOT,
                                monitor_sites=False, **overrides)  # fmt: skip


@pytest.fixture
def make_accounts(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """``make_accounts(**settings)``: a started app with those settings (each call a new app on the same db)."""
    apps = []

    def make(**overrides: Any) -> Accounts:
        app = create_app(_settings(database_url, tmp_path, **overrides))
        apps.append(app)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return Accounts(client)

    clients: list[TestClient] = []
    yield make
    for client in clients:
        client.__exit__(None, None, None)
    for app in apps:
        app.state.engine.dispose()


# --- item 10: logins ----------------------------------------------------------------------------


def _median_s(call: Any, tries: int) -> float:
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_unknown_email_answers_as_slowly_as_a_known_one(make_accounts: Any) -> None:
    """Timing must not tell whether an account exists: medians within 3x of each other, same run."""
    acc = make_accounts(login_max_failures=1000, login_attempts_per_minute=1000)
    acc.user("known@acme.example")
    known = lambda: acc.login("known@acme.example", "wrong password 1")  # noqa: E731
    unknown = lambda: acc.login("nobody@acme.example", "wrong password 1")  # noqa: E731
    assert known().status_code == unknown().status_code == 401  # warm up; same answer either way
    known_s, unknown_s = _median_s(known, 7), _median_s(unknown, 7)
    assert known_s / 3 < unknown_s < known_s * 3, f"known {known_s * 1000:.1f} ms, unknown {unknown_s * 1000:.1f} ms"
    assert known().json() == unknown().json()


def test_wrong_passwords_lock_the_account_even_against_the_right_one(make_accounts: Any) -> None:
    acc = make_accounts(login_max_failures=3, login_lockout_s=600)
    acc.user("pm@acme.example")
    for _ in range(3):
        assert acc.login("pm@acme.example", "wrong password").status_code == 401
    locked = acc.login("pm@acme.example", PASSWORD)
    assert locked.status_code == 429, locked.text
    assert locked.json()["code"] == "too_many_requests" and "try again" in locked.json()["detail"]
    assert 0 < int(locked.headers["Retry-After"]) <= 600
    assert "lineside_session" not in acc.client.cookies
    # An unknown e-mail locks the same way, so a lockout does not reveal that an account exists.
    for _ in range(3):
        assert acc.login("ghost@acme.example", "wrong password").status_code == 401
    assert acc.login("ghost@acme.example", "wrong password").status_code == 429
    # The lock lifts when its time is up; a good password then clears the count.
    with acc.db() as session:
        user = session.exec(select(User).where(User.email == "pm@acme.example")).one()
        user.locked_until = datetime.now(UTC) - timedelta(seconds=1)
        session.add(user)
        session.commit()
    ok(acc.login("pm@acme.example", PASSWORD))
    assert acc.stored_user("pm@acme.example").failed_logins == 0


def test_one_address_is_limited_across_accounts(make_accounts: Any) -> None:
    acc = make_accounts(login_attempts_per_minute=5, login_max_failures=100)
    for i in range(5):
        assert acc.login(f"guess{i}@acme.example", "wrong password").status_code == 401
    limited = acc.login("guess9@acme.example", "wrong password")
    assert limited.status_code == 429 and limited.json()["code"] == "too_many_requests", limited.text
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    other = TestClient(acc.client.app, client=("192.0.2.7", 40000))
    assert acc.login("guess9@acme.example", "wrong password", client=other).status_code == 401


def _old_scrypt_hash(password: str) -> str:
    """What the control plane stored before argon2 (scrypt N=2^14, r=8, p=1, parameters implied)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


@pytest.mark.parametrize("old", ["scrypt", "weak_argon2"])
def test_old_hashes_still_log_in_and_are_rehashed(make_accounts: Any, old: str) -> None:
    acc = make_accounts()
    acc.user("old@acme.example", password=None)
    stored = (
        _old_scrypt_hash(PASSWORD) if old == "scrypt" else PasswordHasher(time_cost=1, memory_cost=1024).hash(PASSWORD)
    )
    with acc.db() as session:
        user = session.exec(select(User).where(User.email == "old@acme.example")).one()
        user.password_hash = stored
        session.add(user)
        session.commit()
    assert acc.login("old@acme.example", "not it at all").status_code == 401
    assert acc.stored_user("old@acme.example").password_hash == stored
    ok(acc.login("old@acme.example", PASSWORD))
    new = acc.stored_user("old@acme.example").password_hash
    assert new is not None and new.startswith("$argon2id$") and new != stored
    assert not PASSWORDS.check_needs_rehash(new)
    ok(acc.login("old@acme.example", PASSWORD, client=TestClient(acc.client.app)))


# --- item 11: accounts --------------------------------------------------------------------------


def test_changing_a_password_needs_the_current_one(make_accounts: Any) -> None:
    acc = make_accounts()
    me = bearer(acc.user("pm@acme.example")["token"])
    missing = acc.client.put("/auth/password", json={"password": "a new password 1"}, headers=me)
    assert missing.status_code == 403 and "current_password" in missing.json()["detail"], missing.text
    wrong = acc.client.put("/auth/password", json={"password": "a new password 1", "current_password": "nope"},
                           headers=me)  # fmt: skip
    assert wrong.status_code == 403 and wrong.json()["code"] == "wrong_password"
    ok(acc.client.put("/auth/password", json={"password": "a new password 1", "current_password": PASSWORD},
                      headers=me), 204)  # fmt: skip
    assert acc.login("pm@acme.example").status_code == 401
    ok(acc.login("pm@acme.example", "a new password 1"))
    # A user who has no password yet (API tokens only) sets a first one without it.
    first = bearer(acc.user("it@acme.example", role="factory_it", password=None)["token"])
    ok(acc.client.put("/auth/password", json={"password": PASSWORD}, headers=first), 204)


def test_a_password_change_ends_every_other_session_and_token(make_accounts: Any) -> None:
    acc = make_accounts()
    initial = bearer(acc.user("pm@acme.example")["token"])
    script = bearer(ok(acc.client.post("/users/me/tokens", json={"name": "script"}, headers=initial), 201)["token"])
    laptop, phone = TestClient(acc.client.app), TestClient(acc.client.app)
    ok(acc.login("pm@acme.example", client=laptop))
    ok(acc.login("pm@acme.example", client=phone))
    body = {"password": "a new password 1", "current_password": PASSWORD}
    ok(laptop.put("/auth/password", json=body, headers=CSRF), 204)
    assert ok(laptop.get("/users/me"))["email"] == "pm@acme.example"  # the session that changed it stays
    for other in (phone.get("/users/me"), acc.client.get("/users/me", headers=initial),
                  acc.client.get("/users/me", headers=script)):  # fmt: skip
        assert other.status_code == 401, other.text


def test_api_tokens_expire(make_accounts: Any) -> None:
    acc = make_accounts(api_token_ttl_days=90)
    created = acc.user("pm@acme.example")
    me = bearer(created["token"])
    tokens = ok(acc.client.get("/users/me/tokens", headers=me))
    assert [t["name"] for t in tokens] == ["initial"]
    expires = datetime.fromisoformat(tokens[0]["expires_at"]).replace(tzinfo=UTC)
    assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)
    short = ok(acc.client.post("/users/me/tokens", json={"name": "ci", "expires_in_days": 1}, headers=me), 201)
    listed = {t["name"]: t for t in ok(acc.client.get("/users/me/tokens", headers=me))}
    expires = datetime.fromisoformat(listed["ci"]["expires_at"]).replace(tzinfo=UTC)
    assert expires - datetime.now(UTC) <= timedelta(days=1)
    too_long = acc.client.post("/users/me/tokens", json={"name": "x", "expires_in_days": 100000}, headers=me)
    assert too_long.status_code == 422
    with acc.db() as session:
        row = session.get(ApiToken, short["id"])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(minutes=1)
        session.add(row)
        session.commit()
    expired = acc.client.get("/users/me", headers=bearer(short["token"]))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


def test_users_list_and_revoke_their_tokens(make_accounts: Any) -> None:
    acc = make_accounts()
    me = bearer(acc.user("pm@acme.example")["token"])
    other = bearer(acc.user("pm2@acme.example")["token"])
    script = ok(acc.client.post("/users/me/tokens", json={"name": "script"}, headers=me), 201)
    tokens = ok(acc.client.get("/users/me/tokens", headers=me))
    assert {t["name"] for t in tokens} == {"initial", "script"}
    for t in tokens:
        assert set(t) == {"id", "name", "prefix", "created_at", "expires_at", "revoked_at"}
        assert t["prefix"].startswith("ls_") and len(t["prefix"]) <= 8
    assert acc.client.delete(f"/users/me/tokens/{script['id']}", headers=other).status_code == 404
    ok(acc.client.delete(f"/users/me/tokens/{script['id']}", headers=me), 204)
    assert acc.client.get("/users/me", headers=bearer(script["token"])).status_code == 401
    revoked = {t["name"]: t for t in ok(acc.client.get("/users/me/tokens", headers=me))}["script"]
    assert revoked["revoked_at"] is not None


def test_deleting_users(make_accounts: Any) -> None:
    acc = make_accounts()
    pm = acc.user("pm@acme.example")
    it = acc.user("it@acme.example", role="factory_it")
    foreign = acc.user("pm@globex.example", tenant="globex")
    other_op = acc.user("op2@lineside.example", role="operator", tenant=None)
    it_session = TestClient(acc.client.app)
    ok(acc.login("it@acme.example", client=it_session))
    pm_h, it_h = bearer(pm["token"]), bearer(it["token"])
    assert acc.client.delete(f"/users/{pm['id']}", headers=it_h).status_code == 403  # factory IT may not
    assert acc.client.delete(f"/users/{foreign['id']}", headers=pm_h).status_code == 404  # another tenant's
    assert acc.client.delete(f"/users/{other_op['id']}", headers=pm_h).status_code == 404  # an operator
    assert acc.client.delete(f"/users/{pm['id']}", headers=pm_h).status_code == 409  # oneself
    ok(acc.client.delete(f"/users/{it['id']}", headers=pm_h), 204)
    assert acc.client.get("/users/me", headers=it_h).status_code == 401
    assert it_session.get("/users/me").status_code == 401
    assert acc.login("it@acme.example").status_code == 401
    assert "it@acme.example" not in {u["email"] for u in ok(acc.client.get("/users", headers=pm_h))}
    ok(acc.client.delete(f"/users/{other_op['id']}", headers=acc.op), 204)  # operators: any user
    ok(acc.client.delete(f"/users/{foreign['id']}", headers=acc.op), 204)
    with acc.db() as session:
        assert session.exec(select(ApiToken).where(ApiToken.user_id == it["id"])).all() == []
    # The e-mail can be given to a new user afterwards.
    acc.user("it@acme.example", role="factory_it")
