"""Tenants (factories) and their users and API tokens."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from control_plane.api.deps import CurrentUser, SessionDep, insert, own_tenant, scoped_get
from control_plane.errors import Conflict, ControlPlaneError, Forbidden, NotFound
from control_plane.models import (
    ApiToken,
    Role,
    Tenant,
    TenantCreate,
    TenantPublic,
    TokenCreate,
    TokenIssued,
    User,
    UserCreate,
    UserPublic,
    UserWithToken,
    utcnow,
)
from control_plane.security import CAN, hash_password, new_token, token_hash

router = APIRouter(tags=["tenants and users"])


@router.post("/tenants", response_model=TenantPublic, status_code=201)
def create_tenant(body: TenantCreate, session: SessionDep, caller: CurrentUser) -> Tenant:
    """Operators add a factory."""
    caller.require(*CAN["manage_tenants"], action="creating tenants")
    tenant = Tenant(slug=body.slug, name=body.name)
    return insert(session, tenant, conflict=f"tenant {body.slug!r} already exists; pick another slug")


@router.get("/tenants", response_model=list[TenantPublic])
def list_tenants(session: SessionDep, caller: CurrentUser) -> list[Tenant]:
    query = select(Tenant).order_by(Tenant.id)  # type: ignore[arg-type]
    if not caller.is_operator:
        query = query.where(Tenant.id == caller.tenant_id)
    return list(session.exec(query))


@router.get("/tenants/{tenant_id}", response_model=TenantPublic)
def get_tenant(tenant_id: int, session: SessionDep, caller: CurrentUser) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or not caller.sees_tenant(tenant.id):
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


def issue_token(session: SessionDep, user_id: int, name: str,
                expires_at: datetime | None = None) -> tuple[ApiToken, str]:  # fmt: skip
    token = new_token("api")
    row = ApiToken(user_id=user_id, name=name, token_hash=token_hash(token), prefix=token[:8], expires_at=expires_at)
    session.add(row)
    return row, token


@router.post("/users", response_model=UserWithToken, status_code=201)
def create_user(body: UserCreate, session: SessionDep, caller: CurrentUser) -> UserWithToken:
    """Operators add users to any tenant; plant managers to their own (never operators)."""
    caller.require(*CAN["manage_users"], action="creating users")
    if caller.is_operator:
        tenant_id = None if body.role is Role.OPERATOR else body.tenant_id
        if body.role is not Role.OPERATOR:
            if tenant_id is None:
                raise ControlPlaneError("tenant_id is required for plant_manager and factory_it users")
            scoped_get(session, Tenant, tenant_id, caller)
    else:
        if body.role is Role.OPERATOR:
            raise Forbidden("only operators can create operator users")
        if body.tenant_id not in (None, caller.tenant_id):
            raise NotFound(f"tenant {body.tenant_id} not found")
        tenant_id = caller.tenant_id
    password_hash = hash_password(body.password) if body.password else None
    user = User(email=body.email, role=body.role, tenant_id=tenant_id, password_hash=password_hash)
    session.add(user)
    try:
        session.flush()
    except IntegrityError as e:
        raise Conflict(f"a user {body.email!r} already exists") from e
    assert user.id is not None
    _, token = issue_token(session, user.id, "initial")
    session.commit()
    session.refresh(user)
    return UserWithToken(**UserPublic.model_validate(user).model_dump(), token=token)


@router.get("/users", response_model=list[UserPublic])
def list_users(session: SessionDep, caller: CurrentUser) -> list[User]:
    return list(session.exec(own_tenant(select(User).order_by(col(User.id)), User, caller)))


@router.get("/users/me", response_model=UserPublic)
def me(session: SessionDep, caller: CurrentUser) -> User:
    user = session.get(User, caller.user_id)
    assert user is not None
    return user


@router.post("/users/me/tokens", response_model=TokenIssued, status_code=201)
def create_token(body: TokenCreate, session: SessionDep, caller: CurrentUser) -> TokenIssued:
    """A further API token for the caller (e.g. one per script); shown once."""
    row, token = issue_token(session, caller.user_id, body.name)
    session.commit()
    assert row.id is not None
    return TokenIssued(id=row.id, name=row.name, token=token)


@router.delete("/users/me/tokens/{token_id}", status_code=204)
def revoke_token(token_id: int, session: SessionDep, caller: CurrentUser) -> None:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != caller.user_id:
        raise NotFound(f"token {token_id} not found")
    row.revoked_at = row.revoked_at or utcnow()
    session.commit()
