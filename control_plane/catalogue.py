"""The catalogue and leases (issue 13, section 1): products per site, their price versions, and buying one.

Why here and not in ``pricing``: ``pricing`` is pure (values in, money out); this module reads and writes
the rows those values come from. A product's prices are only ever added (``add_price``), each with an
effective date no earlier than today, so a price can never be back-dated into a running billing period.
A lease pins the version in force when it was bought (``buy``); the buyer names the version they were
quoted, and a price that changed in between is a ``PriceChanged`` conflict, not a surprise on the bill.

Every site gets a standard capacity product when it is created (``seed_site_product``, from the
settings' replica-hour price), so a slice created without naming a product is still sold, at a price
its buyer can read before confirming.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter
from sqlmodel import Session, col, func, select

from control_plane import pricing
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.models import Lease, Product, ProductPrice, Site, Slice, as_utc
from control_plane.money import rate
from control_plane.settings import ControlPlaneSettings

TERMS: TypeAdapter[Any] = TypeAdapter(pricing.Terms)


class PriceChanged(Conflict):
    """The price the buyer confirmed is no longer the one in force: quote again, then confirm."""

    code = "price_changed"


def standard_sku(site: Site) -> str:
    return f"standard-{site.name}"[:64]


def terms_of(row: ProductPrice) -> pricing.CapacityTerms | pricing.UsageTerms | pricing.SubscriptionTerms:
    terms: pricing.CapacityTerms | pricing.UsageTerms | pricing.SubscriptionTerms = TERMS.validate_python(row.terms)
    return terms


def version_of(product: Product, row: ProductPrice) -> pricing.PriceVersion:
    return pricing.PriceVersion(sku=product.sku, version=row.version, effective_from=row.effective_from,
                                currency=row.currency, terms=terms_of(row))  # fmt: skip


def product_of(row: Product, site: Site | None = None) -> pricing.Product:
    return pricing.Product(sku=row.sku, site=site.name if site else str(row.site_id),
                           hardware_class=row.hardware_class, unit=pricing.UnitKind(row.unit))  # fmt: skip


def add_product(session: Session, *, sku: str, site_id: int, name: str, hardware_class: str, unit: str) -> Product:
    if session.get(Site, site_id) is None:
        raise NotFound(f"site {site_id} not found")
    if session.exec(select(Product).where(Product.sku == sku)).first() is not None:
        raise Conflict(f"product {sku!r} already exists; add a price version to reprice it")
    row = Product(sku=sku, site_id=site_id, name=name, hardware_class=hardware_class, unit=unit)
    session.add(row)
    session.flush()
    return row


def add_price(session: Session, product: Product, *, effective_from: date, currency: str, terms: Any,
              today: date) -> ProductPrice:  # fmt: skip
    """A new price version of ``product``; it applies to leases bought from ``effective_from`` and, for
    running leases, from the first billing month starting on or after it (``pricing.price_for_period``)."""
    if effective_from < today:
        raise InvalidInput(f"effective_from {effective_from} is in the past; prices are never back-dated")
    parsed = pricing.PriceVersion(
        sku=product.sku, version=1, effective_from=effective_from, currency=currency, terms=terms
    )  # fmt: skip  (validates terms and currency)
    if parsed.terms.kind != product.unit:
        raise InvalidInput(f"product {product.sku} is priced by {product.unit}, not by {parsed.terms.kind}")
    latest = session.exec(select(func.max(ProductPrice.version)).where(ProductPrice.product_id == product.id)).one()
    assert product.id is not None
    row = ProductPrice(product_id=product.id, version=(latest or 0) + 1, effective_from=effective_from,
                       currency=currency, terms=parsed.terms.model_dump(mode="json"))  # fmt: skip
    session.add(row)
    session.flush()
    return row


def seed_site_product(session: Session, site: Site, settings: ControlPlaneSettings, today: date) -> Product:
    """The site's standard replica product, priced from the settings (burst as reserved, bank at half)."""
    assert site.id is not None
    price = settings.replica_hour_price
    product = add_product(session, sku=standard_sku(site), site_id=site.id, name=f"Standard replica, {site.name}",
                          hardware_class="replica", unit=pricing.UnitKind.CAPACITY)  # fmt: skip
    # Bank replicas are preemptible, so bank must be the cheapest rate; a free standard product prices bank
    # at zero and the rest at a cent a thousand hours, which charges nobody a minor unit.
    paid = str(price) if price else "0.00001"
    bank = str((price / 2).quantize(Decimal("0.0001"))) if price else "0"
    terms = {"kind": "capacity", "reserved_per_hour": paid, "burst_per_hour": paid, "bank_per_hour": bank}
    add_price(session, product, effective_from=today, currency=settings.currency, terms=terms, today=today)
    return product


def price_in_force(session: Session, product: Product, at: datetime) -> ProductPrice:
    rows = session.exec(select(ProductPrice).where(ProductPrice.product_id == product.id)).all()
    try:
        chosen = pricing.price_in_force([version_of(product, r) for r in rows], as_utc(at))
    except LookupError as e:
        raise Conflict(f"product {product.sku} has no price in force yet; try again once one is effective") from e
    return next(r for r in rows if r.version == chosen.version)


def price_for_period(session: Session, lease: Lease, period: date) -> tuple[Product, ProductPrice]:
    """The price version rating a lease's billing month: its pinned one, or a later one from the month
    after it took effect (never retroactively)."""
    product = session.get(Product, lease.product_id)
    pinned = session.get(ProductPrice, lease.price_id)
    assert product is not None
    assert pinned is not None
    rows = session.exec(select(ProductPrice).where(ProductPrice.product_id == product.id)).all()
    chosen = pricing.price_for_period(version_of(product, pinned), [version_of(product, r) for r in rows], period)
    return product, next(r for r in rows if r.version == chosen.version)


def default_product(session: Session, site_id: int) -> Product:
    """The product a slice gets when its buyer names none: the site's standard capacity product."""
    site = session.get(Site, site_id)
    assert site is not None
    row = session.exec(select(Product).where(Product.sku == standard_sku(site))).first()
    if row is None or not row.active:
        raise Conflict(f"site {site.name} sells no standard product; name a product_id from GET /catalogue")
    return row


def current_lease(session: Session, slice_id: int) -> Lease | None:
    return session.exec(select(Lease).where(Lease.slice_id == slice_id, col(Lease.ends_at).is_(None))).first()


def lease_start(at: datetime) -> datetime:
    """A lease starts at the second it is bought (usage records start on whole seconds), so a slice is
    leased from the moment it exists and a lease change splits usage exactly: a record belongs to the
    lease in force at its start. (Starting at the next minute left a new slice's first seconds unbilled.)"""
    return as_utc(at).astimezone(UTC).replace(microsecond=0)


def buy(session: Session, item: Slice, product: Product, *, price_id: int | None, now: datetime,
        user_id: int | None) -> Lease:  # fmt: skip
    """Lease ``product`` for slice ``item`` from now (``lease_start``) at the price in force now, ending the
    slice's current lease then. ``price_id``: the version the buyer was quoted (None: whatever is in force)."""
    if product.site_id != item.site_id:
        raise InvalidInput(f"product {product.sku} is sold on another site than slice {item.slug}'s")
    if not product.active:
        raise Conflict(f"product {product.sku} is no longer sold; choose another from GET /catalogue")
    price = price_in_force(session, product, now)
    if price_id is not None and price_id != price.id:
        raise PriceChanged(
            f"the price of {product.sku} you confirmed (price id {price_id}) is no longer in force; "
            f"the price now is version {price.version} (id {price.id}): quote again, then confirm"
        )
    if product.unit == pricing.UnitKind.SUBSCRIPTION:
        floor = terms_of(price).replica_floor  # type: ignore[union-attr]
        if item.min_replicas < floor:
            raise InvalidInput(f"{product.sku} includes {floor} replicas; set min_replicas to at least {floor} first")
    start = lease_start(now)
    running = current_lease(session, item.id) if item.id is not None else None
    if running is not None:
        if running.product_id == product.id and running.price_id == price.id:
            return running  # buying what is already leased changes nothing
        running.ends_at = start
        session.add(running)
    assert item.id is not None
    assert product.id is not None
    assert price.id is not None
    lease = Lease(tenant_id=item.tenant_id, slice_id=item.id, product_id=product.id, price_id=price.id,
                  starts_at=start, bought_by=user_id)  # fmt: skip
    session.add(lease)
    session.flush()
    return lease


def quote(session: Session, product: Product, item: Slice | None, now: datetime) -> dict[str, Any]:
    """What buying ``product`` now would cost: the price version (to confirm with) and examples."""
    price = price_in_force(session, product, now)
    terms = terms_of(price)
    examples: dict[str, str] = {}
    if isinstance(terms, pricing.CapacityTerms) and item is not None:
        per_hour = terms.per_hour(item.priority)
        examples = {
            f"hour_at_min_replicas_{item.min_replicas}": str(
                rate(per_hour, Decimal(item.min_replicas), price.currency)
            ),
            f"hour_at_max_replicas_{item.max_replicas}": str(
                rate(per_hour, Decimal(item.max_replicas), price.currency)
            ),
        }
    elif isinstance(terms, pricing.UsageTerms):
        examples = {"first_1000_verdicts": str(rate(terms.cost(1000), Decimal(1), price.currency))}
    elif isinstance(terms, pricing.SubscriptionTerms):
        examples = {"month": str(rate(terms.monthly_fee, Decimal(1), price.currency))}
    return {
        "product_id": product.id, "sku": product.sku, "unit": product.unit, "price_id": price.id,
        "version": price.version, "effective_from": price.effective_from, "currency": price.currency,
        "terms": price.terms, "examples": examples, "starts_at": lease_start(now),
    }  # fmt: skip


def hourly_price(session: Session, item: Slice) -> tuple[Decimal, str]:
    """Per replica-hour of the slice's priority under its running lease; zero when its product is not
    priced by the hour (usage and subscription products), in the lease's currency."""
    lease = current_lease(session, item.id) if item.id is not None else None
    if lease is None:
        return Decimal(0), "EUR"
    price = session.get(ProductPrice, lease.price_id)
    assert price is not None
    terms = terms_of(price)
    per_hour = terms.per_hour(item.priority) if isinstance(terms, pricing.CapacityTerms) else Decimal(0)
    return per_hour, price.currency
