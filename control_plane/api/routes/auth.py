"""Dashboard login: e-mail and password for a session cookie (HttpOnly, SameSite=Strict).

A session is an API token with an expiry, kept in a cookie instead of a
header, so every route sees the same caller and the same roles whether it is
called by a script or by the dashboard.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response
from sqlmodel import select

from control_plane.api.deps import SESSION_COOKIE, CurrentUser, SessionDep, SettingsDep
from control_plane.api.routes.tenants import issue_token
from control_plane.errors import Unauthenticated
from control_plane.models import ApiToken, Login, PasswordSet, User, UserPublic, utcnow
from control_plane.security import check_password, hash_password, token_hash

router = APIRouter(prefix="/auth", tags=["dashboard login"])


@router.post("/login", response_model=UserPublic)
def login(body: Login, request: Request, response: Response, session: SessionDep, settings: SettingsDep) -> User:
    """Check the password and set the session cookie the dashboard's pages use."""
    user = session.exec(select(User).where(User.email == body.email.strip().lower())).first()
    if user is None or not check_password(body.password, user.password_hash):
        raise Unauthenticated("wrong e-mail or password (users without a password log in with an API token)")
    assert user.id is not None
    _, token = issue_token(session, user.id, "dashboard", utcnow() + timedelta(seconds=settings.session_ttl_s))
    session.commit()
    response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.session_ttl_s), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")  # fmt: skip
    return user


@router.post("/logout", status_code=204)
def logout(request: Request, response: Response, session: SessionDep) -> None:
    """End the dashboard session (its token is revoked, the cookie cleared)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == token_hash(cookie))).first()
        if row is not None and row.revoked_at is None:
            row.revoked_at = utcnow()
            session.commit()
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.put("/password", status_code=204)
def set_password(body: PasswordSet, session: SessionDep, caller: CurrentUser) -> None:
    """Set the caller's dashboard password (authenticate with an API token or a session)."""
    user = session.get(User, caller.user_id)
    assert user is not None
    user.password_hash = hash_password(body.password)
    session.commit()
