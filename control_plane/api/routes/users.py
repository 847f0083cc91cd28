"""Users (``/users``) of a tenant, and each user's own API tokens (``/users/me/tokens``).

Operators add users to any tenant; plant managers to their own. A token is shown once: only its
hash is stored. A dashboard login (``/auth/login``) is a token too, kept in a cookie.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from control_plane.api.deps import (
    CurrentUser,
    IdPath,
    PageDep,
    SessionDep,
    SettingsDep,
    allowed,
    own_tenant,
    scoped_get,
)
from control_plane.errors import Conflict, ControlPlaneError, Forbidden, NotFound
from control_plane.models import (
    ApiToken,
    Role,
    Tenant,
    TokenCreate,
    TokenIssued,
    TokenPublic,
    User,
    UserCreate,
    UserPublic,
    UserWithToken,
    utcnow,
)
from control_plane.security import Permission, Principal, hash_password, new_token, token_hash

router = APIRouter(prefix="/users", tags=["users"])


def issue_token(session: Session, user_id: int, name: str, expires_at: datetime) -> tuple[ApiToken, str]:
    """A new API token (or dashboard session) for the user; only its hash is stored."""
    token = new_token("api")
    row = ApiToken(user_id=user_id, name=name, token_hash=token_hash(token), prefix=token[:8], expires_at=expires_at)
    session.add(row)
    return row, token


def _days(days: int) -> datetime:
    return utcnow() + timedelta(days=days)


def _tenant_for_new_user(session: Session, body: UserCreate, caller: Principal) -> int | None:
    """The tenant a new user joins: operators name it (operators join none); plant managers add to their own."""
    if caller.is_operator:
        tenant_id = None if body.role is Role.OPERATOR else body.tenant_id
        if body.role is not Role.OPERATOR:
            if tenant_id is None:
                raise ControlPlaneError("tenant_id is required for plant_manager and factory_it users")
            scoped_get(session, Tenant, tenant_id, caller)
        return tenant_id
    if body.role is Role.OPERATOR:
        raise Forbidden("only operators can create operator users")
    if body.tenant_id not in (None, caller.tenant_id):
        raise NotFound(f"tenant {body.tenant_id} not found")
    return caller.tenant_id


@router.post("", response_model=UserWithToken, status_code=201)
def create_user(
    body: UserCreate,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_USERS, "creating users")],
    settings: SettingsDep,
) -> UserWithToken:
    """Operators add users to any tenant; plant managers to their own (never operators)."""
    tenant_id = _tenant_for_new_user(session, body, caller)
    password_hash = hash_password(body.password) if body.password else None
    user = User(email=body.email, role=body.role, tenant_id=tenant_id, password_hash=password_hash)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as e:
        # E-mails are unique across tenants (they are login names): name neither the address nor its owner.
        raise Conflict("this e-mail address cannot be used for a new user; choose another") from e
    assert user.id is not None
    _, token = issue_token(session, user.id, "initial", _days(settings.api_token_ttl_days))
    session.commit()
    session.refresh(user)
    return UserWithToken(**UserPublic.model_validate(user).model_dump(), token=token)


@router.get("", response_model=list[UserPublic])
def list_users(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[User]:
    """Users by id (operators: all; others: their tenant's), a page at a time (X-Next-Cursor)."""
    return page.of(session, own_tenant(select(User), User, caller), User)


@router.get("/me", response_model=UserPublic)
def me(session: SessionDep, caller: CurrentUser) -> User:
    user = session.get(User, caller.user_id)
    assert user is not None
    return user


@router.post("/me/tokens", response_model=TokenIssued, status_code=201)
def create_token(body: TokenCreate, session: SessionDep, caller: CurrentUser, settings: SettingsDep) -> TokenIssued:
    """A further API token for the caller (e.g. one per script); shown once, valid ``expires_in_days``."""
    days = body.expires_in_days or settings.api_token_ttl_days
    row, token = issue_token(session, caller.user_id, body.name, _days(days))
    session.commit()
    assert row.id is not None
    return TokenIssued(id=row.id, name=row.name, token=token)


@router.get("/me/tokens", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[ApiToken]:
    """Your API tokens and dashboard sessions, revoked and expired ones included (never the tokens)."""
    return page.of(session, select(ApiToken).where(ApiToken.user_id == caller.user_id), ApiToken)


@router.delete("/me/tokens/{token_id}", status_code=204)
def revoke_token(token_id: IdPath, session: SessionDep, caller: CurrentUser) -> None:
    """Revoke one of your tokens (or a dashboard session) at once."""
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != caller.user_id:
        raise NotFound(f"token {token_id} not found")
    row.revoked_at = row.revoked_at or utcnow()
    session.commit()


@router.delete("/{user_id}", status_code=204)
def delete_user(
    user_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_USERS, "deleting users")],
) -> None:
    """Operators delete any user; plant managers the users of their own tenant. Nobody deletes themselves.

    The user and every API token and dashboard session of theirs are removed at once (no other
    table refers to users), so the e-mail address can be given to someone else afterwards.
    """
    user = session.get(User, user_id)
    visible = user is not None and (
        caller.is_operator or (user.role is not Role.OPERATOR and caller.sees_tenant(user.tenant_id))
    )
    if user is None or not visible:
        raise NotFound(f"user {user_id} not found")
    if user.id == caller.user_id:
        raise Conflict("you cannot delete yourself; ask another operator or plant manager")
    session.exec(delete(ApiToken).where(col(ApiToken.user_id) == user_id))
    session.delete(user)
    session.commit()
