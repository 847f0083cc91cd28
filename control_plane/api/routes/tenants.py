"""Tenants (``/tenants``): the factories renting capacity. Operators add them; others see their own.

A tenant's users and their API tokens are under ``/users``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from sqlmodel import select

from control_plane import funds
from control_plane.api.deps import CurrentUser, IdPath, PageDep, SessionDep, SettingsDep, allowed, insert
from control_plane.errors import NotFound
from control_plane.models import Tenant, TenantCreate, TenantPublic
from control_plane.money import Money
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/tenants", tags=["tenants"])


@router.post("", response_model=TenantPublic, status_code=201)
def create_tenant(
    body: TenantCreate,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_TENANTS, "creating tenants")],
) -> Tenant:
    """Operators add a factory, billed in the settings' currency with their default credit limit."""
    tenant = insert(session, Tenant(slug=body.slug, name=body.name),
                    conflict=f"tenant {body.slug!r} already exists; pick another slug")  # fmt: skip
    assert tenant.id is not None
    limit = Money.of(settings.default_credit_limit, settings.currency).minor
    funds.settings_for(session, tenant.id, currency=settings.currency, credit_limit_minor=limit)
    session.commit()
    session.refresh(tenant)
    return tenant


@router.get("", response_model=list[TenantPublic])
def list_tenants(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[Tenant]:
    """Tenants by id (operators: all; others: their own), a page at a time (X-Next-Cursor)."""
    query = select(Tenant)
    if not caller.is_operator:
        query = query.where(Tenant.id == caller.tenant_id)
    return page.of(session, query, Tenant)


@router.get("/{tenant_id}", response_model=TenantPublic)
def get_tenant(tenant_id: IdPath, session: SessionDep, caller: CurrentUser) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or not caller.sees_tenant(tenant.id):
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant
