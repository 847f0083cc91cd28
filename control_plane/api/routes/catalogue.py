"""The catalogue (``/catalogue``): the products each site sells and their price versions. Operators add
products and reprice them; everyone signed in reads them, since a plant manager compares before buying."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from sqlmodel import col, select

from control_plane import catalogue
from control_plane.api.deps import IdFilter, IdPath, PageDep, SessionDep, UtcNowDep, allowed, get_or_404
from control_plane.errors import Conflict, InvalidInput
from control_plane.models import PriceCreate, Product, ProductCreate, ProductPrice, Site
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/catalogue", tags=["catalogue"])


def _shown(session: SessionDep, product: Product, now: UtcNowDep, history: bool = False) -> dict[str, Any]:
    site = session.get(Site, product.site_id)
    prices = session.exec(select(ProductPrice).where(ProductPrice.product_id == product.id)
                          .order_by(col(ProductPrice.version))).all()  # fmt: skip
    current = next((p for p in prices if p.id == _in_force_id(session, product, now)), None)
    shown: dict[str, Any] = {
        "id": product.id, "sku": product.sku, "name": product.name, "site_id": product.site_id,
        "site": site.name if site else None, "hardware_class": product.hardware_class, "unit": product.unit,
        "active": product.active, "price": _price(current) if current else None,
        "upcoming": [_price(p) for p in prices if current is None or p.version > current.version],
    }  # fmt: skip
    if history:
        shown["versions"] = [_price(p) for p in prices]
    return shown


def _in_force_id(session: SessionDep, product: Product, now: UtcNowDep) -> int | None:
    try:
        return catalogue.price_in_force(session, product, now).id
    except Conflict:
        return None


def _price(row: ProductPrice) -> dict[str, Any]:
    return {"price_id": row.id, "version": row.version, "effective_from": row.effective_from,
            "currency": row.currency, "terms": row.terms}  # fmt: skip


@router.get("")
def list_products(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_CATALOGUE, "reading the catalogue")],
    now: UtcNowDep,
    page: PageDep,
    site_id: IdFilter = None,
) -> list[dict[str, Any]]:
    """Products with the price in force now (and any announced for later), by id, a page at a time
    (X-Next-Cursor); plant managers see those on sale, operators also the retired ones."""
    query = select(Product)
    if site_id is not None:
        query = query.where(Product.site_id == site_id)
    if not caller.is_operator:
        query = query.where(col(Product.active).is_(True))
    return [_shown(session, p, now) for p in page.of(session, query, Product)]


@router.get("/{product_id}")
def get_product(
    product_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_CATALOGUE, "reading the catalogue")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """A product with every price version it has had."""
    return _shown(session, get_or_404(session, Product, product_id), now, history=True)


@router.post("", status_code=201)
def create_product(
    body: ProductCreate,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_CATALOGUE, "adding products")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """A product of a site with its first price version."""
    product = catalogue.add_product(session, sku=body.sku, site_id=body.site_id, name=body.name,
                                    hardware_class=body.hardware_class, unit=body.unit)  # fmt: skip
    _add_price(session, product, body.price, now)
    session.commit()
    return _shown(session, product, now, history=True)


@router.post("/{product_id}/prices", status_code=201)
def add_price(
    product_id: IdPath,
    body: PriceCreate,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_CATALOGUE, "repricing products")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """A new price version. New leases get it from ``effective_from``; running leases from their first
    billing month that starts on or after it, never retroactively."""
    product = get_or_404(session, Product, product_id)
    _add_price(session, product, body, now)
    session.commit()
    return _shown(session, product, now, history=True)


def _add_price(session: SessionDep, product: Product, body: PriceCreate, now: UtcNowDep) -> ProductPrice:
    try:
        return catalogue.add_price(session, product, effective_from=body.effective_from, currency=body.currency,
                                   terms=body.terms, today=now.date())  # fmt: skip
    except ValueError as e:  # pydantic's ValidationError: the terms' own messages name the field
        raise InvalidInput(f"price terms refused: {_first_error(e)}") from e


def _first_error(error: ValueError) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))
    return str(error)
