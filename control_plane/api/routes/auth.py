"""Dashboard login: e-mail and password for a session cookie (HttpOnly, SameSite=Strict).

A session is an API token with an expiry, kept in a cookie instead of a
header, so every route sees the same caller and the same roles whether it is
called by a script or by the dashboard.

Password guessing meets three brakes (all answer 429 with ``Retry-After``):
``login_attempts_per_minute`` per client address; ``login_max_failures`` wrong
passwords in a row lock the account for ``login_lockout_s``, even against the
right password; e-mails without an account lock the same way, and take as long
to refuse, so neither the answer nor its timing tells whether an account exists.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import update
from sqlmodel import col, select

from control_plane.api.deps import SESSION_COOKIE, SESSION_TOKEN_NAME, CurrentUser, SessionDep, SettingsDep
from control_plane.api.routes.users import issue_token
from control_plane.errors import Forbidden, TooManyRequests, Unauthenticated
from control_plane.login_guard import LoginGuard, retry_after
from control_plane.models import ApiToken, Login, PasswordSet, User, UserPublic, as_utc, utcnow
from control_plane.security import hash_password, token_hash, verify_password
from control_plane.settings import ControlPlaneSettings

router = APIRouter(prefix="/auth", tags=["dashboard login"])

WRONG = "wrong e-mail or password (users without a password log in with an API token)"
_RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"description": "Too many attempts; wait for the Retry-After seconds."}
}


class WrongPassword(Forbidden):
    code = "wrong_password"


def guard_of(request: Request) -> LoginGuard:
    guard: LoginGuard = request.app.state.login_guard
    return guard


def _refuse_if_locked(user: User | None, email: str, guard: LoginGuard) -> None:
    if user is not None:
        wait = (as_utc(user.locked_until) - utcnow()).total_seconds() if user.locked_until else 0.0
    else:
        wait = guard.unknown_emails.locked_for(email)
    if wait > 0:
        raise TooManyRequests(
            f"too many wrong passwords for this account; try again in {retry_after(wait)} s", retry_after(wait)
        )


def _count_failure(session: SessionDep, user: User | None, email: str, guard: LoginGuard,
                   settings: ControlPlaneSettings) -> None:  # fmt: skip
    """One more wrong password; the ``login_max_failures``-th in a row locks the account."""
    if user is None:
        guard.unknown_emails.failed(email)
        return
    # One UPDATE, so concurrent guesses cannot overwrite each other's count.
    session.execute(update(User).where(col(User.id) == user.id).values(failed_logins=col(User.failed_logins) + 1))
    session.refresh(user)
    if user.failed_logins >= settings.login_max_failures:
        user.failed_logins, user.locked_until = 0, utcnow() + timedelta(seconds=settings.login_lockout_s)
    session.commit()


@router.post("/login", response_model=UserPublic, responses=_RATE_LIMITED)
def login(body: Login, request: Request, response: Response, session: SessionDep, settings: SettingsDep) -> User:
    """Check the password and set the session cookie the dashboard's pages use."""
    guard = guard_of(request)
    wait = guard.per_address.hit(request.client.host if request.client else "unknown")
    if wait > 0:
        raise TooManyRequests(
            f"too many login attempts from your address; try again in {retry_after(wait)} s", retry_after(wait)
        )
    email = body.email.strip().lower()
    user = session.exec(select(User).where(User.email == email)).first()
    _refuse_if_locked(user, email, guard)
    matches, outdated = verify_password(body.password, user.password_hash if user else None)
    if user is None or not matches:
        _count_failure(session, user, email, guard, settings)
        raise Unauthenticated(WRONG)
    assert user.id is not None
    user.failed_logins, user.locked_until = 0, None
    if outdated:  # older parameters or the scrypt of earlier versions: store today's hash
        user.password_hash = hash_password(body.password)
    expires = utcnow() + timedelta(seconds=settings.session_ttl_s)
    _, token = issue_token(session, user.id, SESSION_TOKEN_NAME, expires)
    session.commit()
    session.refresh(user)
    response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.session_ttl_s), httponly=True,
                        samesite="strict", secure=settings.cookie_secure, path="/")  # fmt: skip
    return user


@router.post("/logout", status_code=204)
def logout(request: Request, response: Response, session: SessionDep, settings: SettingsDep) -> None:
    """End the dashboard session (its token is revoked, the cookie cleared)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == token_hash(cookie))).first()
        if row is not None and row.revoked_at is None:
            row.revoked_at = utcnow()
            session.commit()
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=settings.cookie_secure)


@router.put("/password", status_code=204, responses=_RATE_LIMITED)
def set_password(body: PasswordSet, request: Request, session: SessionDep, settings: SettingsDep,
                 caller: CurrentUser) -> None:  # fmt: skip
    """Set the caller's dashboard password (authenticate with an API token or a session).

    Changing a password asks for the current one and ends every other session and API token of the
    user; the session or token this request came with stays valid. A first password revokes nothing.
    """
    user = session.get(User, caller.user_id)
    assert user is not None
    if user.password_hash is not None:
        if body.current_password is None:
            raise WrongPassword("send your current password as current_password to change it")
        _refuse_if_locked(user, user.email, guard_of(request))
        matches, _ = verify_password(body.current_password, user.password_hash)
        if not matches:
            _count_failure(session, user, user.email, guard_of(request), settings)
            raise WrongPassword("current_password is wrong")
        others = update(ApiToken).where(
            col(ApiToken.user_id) == user.id, col(ApiToken.revoked_at).is_(None), col(ApiToken.id) != caller.token_id
        )
        session.execute(others.values(revoked_at=utcnow()))
    user.password_hash = hash_password(body.password)
    user.failed_logins, user.locked_until = 0, None
    session.add(user)
    session.commit()
