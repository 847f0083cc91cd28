"""Leases (``/leases``): a slice rented under a catalogue product at a pinned price. Plant managers ask for a
quote, read the price, and confirm by naming the price version they read; a price that changed in between
is a 409 ``price_changed``, so nobody is billed a price they did not see."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from sqlmodel import col, select

from control_plane import catalogue, funds
from control_plane.api.deps import (
    IdFilter,
    IdPath,
    PageDep,
    SessionDep,
    UtcNowDep,
    allowed,
    get_or_404,
    own_tenant,
    scoped_get,
)
from control_plane.models import Lease, LeaseBuy, Product, ProductPrice, QuoteIn, Slice
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/leases", tags=["leases"])


def shown(session: SessionDep, lease: Lease) -> dict[str, Any]:
    product = session.get(Product, lease.product_id)
    price = session.get(ProductPrice, lease.price_id)
    assert product is not None
    assert price is not None
    return {
        "id": lease.id, "tenant_id": lease.tenant_id, "slice_id": lease.slice_id, "product_id": product.id,
        "sku": product.sku, "product": product.name, "unit": product.unit, "price_id": price.id,
        "price_version": price.version, "currency": price.currency, "terms": price.terms,
        "starts_at": lease.starts_at, "ends_at": lease.ends_at, "running": lease.ends_at is None,
    }  # fmt: skip


@router.post("/quote")
def quote(
    body: QuoteIn,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_CATALOGUE, "asking for a quote")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """The price a lease bought now would pin, with examples; confirm with ``POST /leases`` and its ``price_id``."""
    item = scoped_get(session, Slice, body.slice_id, caller) if body.slice_id is not None else None
    product = get_or_404(session, Product, body.product_id)
    return catalogue.quote(session, product, item, now)


@router.post("", status_code=201)
def buy(
    body: LeaseBuy,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.BUY_LEASES, "buying a lease")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """Lease a product for your slice (or change its lease) from now, at the quoted price."""
    item = scoped_get(session, Slice, body.slice_id, caller)
    funds.refuse_if_out_of_funds(session, item.tenant_id)
    product = get_or_404(session, Product, body.product_id)
    lease = catalogue.buy(session, item, product, price_id=body.price_id, now=now, user_id=caller.user_id)
    session.commit()
    return shown(session, lease)


@router.get("")
def list_leases(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_BILLING, "reading leases")],
    page: PageDep,
    slice_id: IdFilter = None,
) -> list[dict[str, Any]]:
    """Your tenant's leases, current and ended, by id (operators: all), a page at a time."""
    query = own_tenant(select(Lease), Lease, caller)
    if slice_id is not None:
        query = query.where(Lease.slice_id == slice_id)
    return [shown(session, lease) for lease in page.of(session, query.order_by(col(Lease.id)), Lease)]


@router.get("/{lease_id}")
def get_lease(
    lease_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_BILLING, "reading leases")],
) -> dict[str, Any]:
    return shown(session, scoped_get(session, Lease, lease_id, caller))
