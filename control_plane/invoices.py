"""Monthly invoices (issue 13, section 6): a tenant's rated charges of a month, frozen and numbered.

What closing a month does (``close``), and why it is safe to repeat:

- It first rates what is still unrated up to the month's end (``billing.rate_pending``), so usage that
  arrived before the close is on the invoice, not on the next one.
- It takes the tenant's charges up to the month's end that no invoice names yet. Those of an earlier
  month (usage reported after its invoice was issued) are **adjustment** lines flagged with their own
  month; the closed invoice is never touched. Lines are per lease (a slice under one product and price),
  month and measure; a line's amount is the sum of its charges, and since each hour's charge is the
  marginal month-to-date cost (``pricing.amount_to_date``), that sum is the month's cost rounded once.
- Voucher lines (per programme, read from the charges' journal entries), a bank-credit line and gap
  lines (seconds an agent was silent, billed as nothing) follow. Voucher and credit lines are negative,
  so the lines add up to the total due: subtotal - vouchers - credits, settled from the prepaid balance
  or owed.
- The number is the installation's highest plus one, taken under a lock held to commit (PostgreSQL: an
  advisory transaction lock; SQLite: its one writer lock, taken by a write before the number is read),
  so two closes never take one number, and a rolled-back close takes none: no gaps. The unique index on
  ``number`` backs this. A month without charges gets no invoice and uses no number.
- ``Invoice`` and ``InvoicedCharge`` rows are written once (migration 0007's triggers refuse UPDATE and
  DELETE); ``InvoicedCharge``'s primary key puts a charge on one invoice at most, and the unique
  (tenant, period) one invoice per tenant and month. Closing a closed month returns the invoice issued.

Times are UTC; the caller commits.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, text
from sqlmodel import Session, col, select

from control_plane import billing, pricing
from control_plane.errors import Conflict, InvalidInput
from control_plane.models import (
    Charge,
    Invoice,
    InvoicedCharge,
    JournalEntry,
    Lease,
    Product,
    Slice,
    UsageRecord,
    Voucher,
    VoucherProgramme,
    as_utc,
)

log = logging.getLogger(__name__)

NUMBER_LOCK = 0x4C53494E  # "LSIN": the advisory lock key that serialises invoice numbering on PostgreSQL
FIRST_YEAR, LAST_YEAR = 2000, 2999  # months anyone could bill; beyond, date arithmetic would overflow
GAP = "gap"  # UsageRecord.source of a window an agent was silent in (window_s: the silent seconds)


def period_of(month: str) -> date:
    """``YYYY-MM`` as the month's 1st; a typo is a 422 that says what is expected."""
    try:
        period = datetime.strptime(month, "%Y-%m").date()
    except ValueError:
        raise InvalidInput(f"month {month[:20]!r} is not YYYY-MM, e.g. 2026-11") from None
    if not FIRST_YEAR <= period.year <= LAST_YEAR:
        raise InvalidInput(f"month {month} is outside {FIRST_YEAR}-01 to {LAST_YEAR}-12")
    return period


def month_text(period: date) -> str:
    return f"{period:%Y-%m}"


def bounds(period: date) -> tuple[datetime, datetime]:
    """The month ``[start, end)`` in UTC."""
    start = datetime.combine(period, datetime.min.time(), UTC)
    return start, datetime.combine(next_period(period), datetime.min.time(), UTC)


def next_period(period: date) -> date:
    return (period.replace(day=1) + timedelta(days=32)).replace(day=1)


def label(number: int) -> str:
    """How people quote an invoice number (file names, PDF, CSV)."""
    return f"INV-{number:06d}"


def _check_ended(period: date, now: datetime) -> None:
    if period.day != 1:
        raise InvalidInput(f"a billing period starts on a month's 1st, not {period}")
    _, end = bounds(period)
    if now < end:
        raise InvalidInput(
            f"{month_text(period)} is not over: it closes on {end:%Y-%m-%d} 00:00 UTC; close an earlier month"
        )


def close(session: Session, tenant_id: int, period: date, now: datetime) -> Invoice | None:
    """The tenant's invoice for ``period`` (a month's 1st), issued now if not yet; None: nothing to bill."""
    invoice, _ = _close(session, tenant_id, period, as_utc(now), rate=True)
    return invoice


def close_month(session: Session, period: date, now: datetime) -> list[Invoice]:
    """Close ``period`` for every tenant with unbilled charges; returns the invoices issued now.
    Charges of earlier months not invoiced yet go on as adjustments (``close_due`` closes those first)."""
    now = as_utc(now)
    _check_ended(period, now)
    _, end = bounds(period)
    billing.rate_pending(session, min(now, end))
    return _close_all(session, [(period, tenant_id) for tenant_id in _tenants(session, end)], now)


def close_due(session: Session, now: datetime) -> list[Invoice]:
    """On or after a month's 1st (by ``now``), close the month before for every tenant, and any earlier
    month a tenant has unbilled charges of and no invoice for; idempotent. Returns the invoices issued now.

    Only tenants with unbilled charges before this month can get an invoice (a lease that ran nothing bills
    nothing), so once every invoice is out a pass reads no more than that and takes no lock."""
    now = as_utc(now)
    current = pricing.month_start(now)
    previous = pricing.month_start(datetime.combine(current, datetime.min.time(), UTC) - timedelta(days=1))
    start, _ = bounds(current)
    billing.rate_pending(session, start)
    unbilled = session.exec(
        select(col(Charge.period), col(Charge.tenant_id))
        .outerjoin(InvoicedCharge, col(InvoicedCharge.charge_id) == col(Charge.id))
        .where(col(InvoicedCharge.charge_id).is_(None), col(Charge.period) < current)
        .distinct()
    ).all()
    due = {(period, tenant_id) for period, tenant_id in unbilled} | {(previous, tenant_id) for _, tenant_id in unbilled}
    if not due:
        return []
    closed = session.exec(
        select(col(Invoice.period), col(Invoice.tenant_id)).where(
            col(Invoice.period).in_({period for period, _ in due}), col(Invoice.tenant_id).in_({t for _, t in due})
        )
    ).all()
    return _close_all(session, sorted(due - {(period, tenant_id) for period, tenant_id in closed}), now)


def _close_all(session: Session, due: list[tuple[date, int]], now: datetime) -> list[Invoice]:
    """Close each (month, tenant) in order, so numbers follow months, then tenants. A tenant whose
    charges cannot go on one invoice is logged and left open; the others are still invoiced."""
    issued = []
    for period, tenant_id in due:
        try:
            invoice, created = _close(session, tenant_id, period, now, rate=False)
        except Conflict as e:
            log.error("invoice of tenant %s for %s not issued: %s", tenant_id, month_text(period), e.message)
            continue
        if created and invoice is not None:
            issued.append(invoice)
    return issued


def _tenants(session: Session, end: datetime) -> list[int]:
    charged = session.exec(
        select(Charge.tenant_id)
        .outerjoin(InvoicedCharge, col(InvoicedCharge.charge_id) == col(Charge.id))
        .where(col(InvoicedCharge.charge_id).is_(None), col(Charge.hour_start) < end)
        .distinct()
    ).all()
    return sorted(charged)


def _close(session: Session, tenant_id: int, period: date, now: datetime, *, rate: bool) -> tuple[Invoice | None, bool]:
    _check_ended(period, now)
    _, end = bounds(period)
    if rate:
        billing.rate_pending(session, min(now, end))
    _lock_numbering(session)
    issued = session.exec(select(Invoice).where(Invoice.tenant_id == tenant_id, Invoice.period == period)).first()
    if issued is not None:
        return issued, False
    charges = session.exec(
        select(Charge)
        .outerjoin(InvoicedCharge, col(InvoicedCharge.charge_id) == col(Charge.id))
        .where(Charge.tenant_id == tenant_id, col(Charge.hour_start) < end, col(InvoicedCharge.charge_id).is_(None))
        .order_by(col(Charge.period), col(Charge.lease_id), col(Charge.measure), col(Charge.hour_start), col(Charge.id))
    ).all()
    if not charges:
        return None, False
    currencies = {charge.currency for charge in charges}
    if len(currencies) > 1:
        raise Conflict(f"tenant {tenant_id}'s charges up to {end:%Y-%m-%d} are in {sorted(currencies)}; "
                       "an invoice has one currency: invoice each apart")  # fmt: skip
    currency = currencies.pop()
    lines = _charge_lines(session, charges, period)
    subtotal = sum(charge.amount_minor for charge in charges)
    vouchers = sum(charge.voucher_minor for charge in charges)
    credits = sum(charge.credits_minor for charge in charges)
    lines += _voucher_lines(session, charges, vouchers)
    if credits:
        lines.append(_line("credits", None, "Paid from bank credits", amount_minor=-credits))
    lines += _gap_lines(session, tenant_id, period)
    number = int(session.exec(select(func.coalesce(func.max(Invoice.number), 0))).one()) + 1
    invoice = Invoice(
        number=number,
        tenant_id=tenant_id,
        period=period,
        currency=currency,
        subtotal_minor=subtotal,
        voucher_minor=vouchers,
        credits_minor=credits,
        total_minor=subtotal - vouchers - credits,
        lines=lines,
        issued_at=now,
    )
    session.add(invoice)
    session.flush()
    assert invoice.id is not None
    session.add_all([InvoicedCharge(charge_id=charge.id, invoice_id=invoice.id) for charge in charges if charge.id])
    session.flush()
    log.info("invoice %s issued to tenant %s for %s: %s lines, total %s minor units of %s",
             label(number), tenant_id, month_text(period), len(lines), invoice.total_minor, currency)  # fmt: skip
    return invoice, True


def _lock_numbering(session: Session) -> None:
    """Serialise numbering until commit: PostgreSQL's advisory transaction lock; on SQLite a write that
    changes nothing takes the database's one writer lock (readers go on; other writers wait for commit)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": NUMBER_LOCK})
    else:
        session.execute(text("UPDATE invoice SET number = number WHERE 0"))  # no row: the triggers never fire


def _line(kind: str, period: date | None, description: str, **fields: Any) -> dict[str, Any]:
    month = month_text(period) if period else ""
    return {"kind": kind, "period": month, "description": description, "amount_minor": 0, **fields}


def _batches(ids: Iterable[int], size: int = 500) -> Iterable[list[int]]:
    """Ids in chunks small enough for any database's IN (...) list."""
    ordered = sorted(ids)
    return (ordered[i : i + size] for i in range(0, len(ordered), size))


def _charge_lines(session: Session, charges: Iterable[Charge], period: date) -> list[dict[str, Any]]:
    groups: dict[tuple[date, int, str], list[Charge]] = defaultdict(list)
    for charge in charges:
        groups[charge.period, charge.lease_id, charge.measure].append(charge)
    leases = _by_id(session, Lease, {lease_id for _, lease_id, _ in groups})
    slices = _by_id(session, Slice, {lease.slice_id for lease in leases.values()})
    products = _by_id(session, Product, {lease.product_id for lease in leases.values()})
    lines = []
    for (month, lease_id, measure), rows in groups.items():
        lease = leases[lease_id]
        item, product = slices[lease.slice_id], products[lease.product_id]
        last = rows[-1]  # the month-end tier's price, where tiers apply
        tiered = len({row.unit_price for row in rows}) > 1
        kind = "adjustment" if month < period else "usage"
        description = f"{measure} of slice {item.slug} ({product.name})"
        if kind == "adjustment":
            description += f", reported after {month_text(month)} was invoiced"
        if tiered:
            description += "; tiered: the unit price of the tier reached"
        lines.append(_line(
            kind, month, description, slice_id=item.id, slice=item.slug, lease_id=lease_id, product=product.sku,
            measure=measure, quantity=sum(row.quantity for row in rows), unit=last.unit, unit_price=last.unit_price,
            price_per=last.price_per, amount_minor=sum(row.amount_minor for row in rows), charges=len(rows),
        ))  # fmt: skip
    return lines


def _by_id(session: Session, model: Any, ids: set[int]) -> dict[int, Any]:
    rows: dict[int, Any] = {}
    for chunk in _batches(ids):
        rows |= {row.id: row for row in session.exec(select(model).where(col(model.id).in_(chunk)))}
    return rows


def _voucher_lines(session: Session, charges: Iterable[Charge], total: int) -> list[dict[str, Any]]:
    """Per programme, from the charges' journal entries out of voucher accounts; what cannot be traced
    to one (none should) is one line of its own, so the lines always add up to the vouchers' total."""
    if not total:
        return []
    paid: dict[int, int] = defaultdict(int)
    programmes: dict[int, VoucherProgramme] = {}
    transactions = {charge.transaction_id for charge in charges if charge.transaction_id is not None}
    for chunk in _batches(transactions):
        rows = session.exec(
            select(JournalEntry, VoucherProgramme)
            .join(Voucher, col(Voucher.account_id) == col(JournalEntry.account_id))
            .join(VoucherProgramme, col(VoucherProgramme.id) == col(Voucher.programme_id))
            .where(col(JournalEntry.transaction_id).in_(chunk))
        ).all()
        for entry, programme in rows:
            assert programme.id is not None
            paid[programme.id] -= entry.amount_minor  # out of the voucher account: negative entries
            programmes[programme.id] = programme
    lines = []
    for programme_id, minor in sorted(paid.items()):
        programme = programmes[programme_id]
        description = f"Voucher {programme.name} ({programme.funder})"
        lines.append(_line("voucher", None, description, programme=programme.name, amount_minor=-minor))
    untraced = total - sum(paid.values())
    if untraced:
        lines.append(_line("voucher", None, "Vouchers", programme="", amount_minor=-untraced))
    return lines


def _gap_lines(session: Session, tenant_id: int, period: date) -> list[dict[str, Any]]:
    start, end = bounds(period)
    rows = session.exec(
        select(UsageRecord.slice_id, UsageRecord.node_id, func.sum(UsageRecord.window_s))
        .where(
            UsageRecord.tenant_id == tenant_id,
            UsageRecord.source == GAP,
            col(UsageRecord.window_start) >= start,
            col(UsageRecord.window_start) < end,
        )
        .group_by(col(UsageRecord.slice_id), col(UsageRecord.node_id))
        .order_by(col(UsageRecord.slice_id), col(UsageRecord.node_id))
    ).all()
    slices = _by_id(session, Slice, {slice_id for slice_id, _, _ in rows})
    lines = []
    for slice_id, node_id, seconds in rows:
        slug = slices[slice_id].slug if slice_id in slices else str(slice_id)
        description = f"slice {slug}: node {node_id} sent no report (not billed)"
        lines.append(_line(GAP, period, description, slice_id=slice_id, slice=slug, node_id=node_id,
                           quantity=int(seconds or 0), unit="silent second"))  # fmt: skip
    return lines
