"""Rating, budgets and holds (issue 13, sections 3 and 5): usage records become charges, charges become postings.

How a rating run works (``rate_pending``), and why it can run any number of times:

- It reads the usage records that no ``ChargedUsage`` row names yet, finds the lease each fell under
  (the slice's lease in force at the record's window start) and the price version of that billing
  month (``catalogue.price_for_period``), and groups them by lease, month and measure.
- Per group and hour it posts the marginal cost: the month-to-date amount after the hour's quantity
  minus the one before it, each rounded once (``pricing.amount_to_date``). However records arrive (late,
  reordered, in several runs), the postings of a lease's month add up to the month's total rounded
  once, which is what an invoice line shows.
- Each charge's usage keys are inserted into ``ChargedUsage`` (primary key: the usage key) in the same
  transaction as its journal transaction; a second rater racing on the same records fails on that key
  and rolls back, so no record is ever billed twice. Records with nothing to bill (capacity under a
  usage or subscription product) are marked with no charge.
- A subscription's monthly fee is charged once per lease and month (its first hour in the month).

Who pays a charge is ``funds.fund``'s answer (vouchers, bank credits, prepaid and credit, then debt).
After a run, a tenant whose prepaid balance, credit, vouchers and credits are used up is ``held``: its
``burst`` and ``bank`` slices are held at their floor (``sites.slice_spec``) and new leases are refused
with 402 until funds return. Reserved slices keep running; their usage is recorded as debt.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func
from sqlmodel import Session, col, select

from contracts.wire import ErrorCode
from control_plane import catalogue, funds, ledger, ledger_store, pricing
from control_plane.ledger import AccountKind, Posting
from control_plane.models import (
    Account,
    BudgetAlert,
    Charge,
    ChargedUsage,
    Lease,
    Product,
    ProductPrice,
    ScaleEvent,
    ScaleKind,
    Slice,
    TenantBilling,
    UsageRecord,
    as_utc,
    utcnow,
)
from control_plane.money import Money, rate
from control_plane.scheduler import Priority
from control_plane.states import SliceStatus, transition

log = logging.getLogger(__name__)

BATCH = 20_000
"""Usage records read per rating round; a run loops until none is left."""
BUDGET_THRESHOLDS = (80, 100)
RATED_SOURCES = ("capacity", "verdicts")  # metering also stores "gap" records: shown on bills, never rated
HELD_PRIORITIES = (Priority.BURST, Priority.BANK)


@dataclass
class RatingRun:
    """What one ``rate_pending`` call did."""

    records: int = 0  # usage records rated (billed or marked as included)
    charges: int = 0
    amount_minor: dict[str, int] = field(default_factory=dict)  # per currency
    unleased: int = 0  # records of slices with no lease at their time: left unbilled
    tenants: set[int] = field(default_factory=set)


# --- rating ----------------------------------------------------------------------------------------


@dataclass
class _Group:
    lease: Lease
    product: Product
    price: ProductPrice
    period: date
    hours: dict[datetime, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))  # key, quantity


def rate_pending(session: Session, now: datetime, *, batch: int = BATCH) -> RatingRun:
    """Rate every usage record not rated yet (window start before ``now``), and charge subscription fees
    due by ``now``; the caller commits. Safe to run again at any time: what is rated is never rated twice."""
    now = as_utc(now)
    run = RatingRun()
    _subscription_fees(session, now, run)
    while True:
        rows = session.exec(
            select(UsageRecord)
            .outerjoin(ChargedUsage, col(ChargedUsage.usage_key) == col(UsageRecord.key))
            .where(col(ChargedUsage.usage_key).is_(None), col(UsageRecord.window_start) < now)
            .where(col(UsageRecord.source).in_(RATED_SOURCES))
            .order_by(col(UsageRecord.slice_id), col(UsageRecord.window_start), col(UsageRecord.id))
            .limit(batch)
        ).all()
        before = run.records
        _rate(session, rows, run)
        if len(rows) < batch or run.records == before:
            break
    for tenant_id in sorted(run.tenants):
        review(session, tenant_id, now)
    return run


def _rate(session: Session, rows: Iterable[UsageRecord], run: RatingRun) -> None:
    leases = _leases(session, {row.slice_id for row in rows})
    slices = {s.id: s for s in session.exec(select(Slice).where(col(Slice.id).in_({row.slice_id for row in rows})))}
    groups: dict[tuple[int, date, str], _Group] = {}
    included: list[str] = []
    prices: dict[tuple[int, date], tuple[Product, ProductPrice]] = {}
    for row in rows:
        start = as_utc(row.window_start)
        lease = next((x for x in leases.get(row.slice_id, []) if _covers(x, start)), None)
        if lease is None:
            run.unleased += 1
            continue
        assert lease.id is not None
        period = pricing.month_start(start)
        if (lease.id, period) not in prices:
            prices[lease.id, period] = catalogue.price_for_period(session, lease, period)
        product, price = prices[lease.id, period]
        terms = catalogue.terms_of(price)
        record = _as_pricing_record(row, slices[row.slice_id])
        measure = pricing.measure_of(record, terms)
        run.records += 1
        if measure is None:
            included.append(row.key)
            continue
        quantity = pricing.quantities([record], terms).get(measure, 0)
        group = groups.setdefault((lease.id, period, measure), _Group(lease, product, price, period))
        group.hours[start.replace(minute=0, second=0, microsecond=0)].append((row.key, quantity))
    for (_, _, measure), group in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2])):
        _charge_group(session, group, measure, run)
    for key in included:
        session.add(ChargedUsage(usage_key=key, charge_id=None))
    session.flush()


def _covers(lease: Lease, at: datetime) -> bool:
    return as_utc(lease.starts_at) <= at and (lease.ends_at is None or at < as_utc(lease.ends_at))


def _leases(session: Session, slice_ids: set[int]) -> dict[int, list[Lease]]:
    result: dict[int, list[Lease]] = defaultdict(list)
    for lease in session.exec(select(Lease).where(col(Lease.slice_id).in_(slice_ids)).order_by(col(Lease.id))):
        result[lease.slice_id].append(lease)
    return result


def _as_pricing_record(row: UsageRecord, item: Slice) -> pricing.CapacityRecord | pricing.VerdictRecord:
    start = as_utc(row.window_start)
    if row.source == "capacity":
        return pricing.CapacityRecord(
            str(row.slice_id), str(row.node_id), start, row.replica_seconds, Priority(item.priority)
        )
    counts = {k: int(v) for k, v in row.verdicts.items() if k in pricing.VERDICTS}
    for code, number in (row.verdicts.get("error_codes") or {}).items():
        if code in set(ErrorCode):
            counts[code] = int(number)
    return pricing.VerdictRecord(str(row.slice_id), str(row.line_id), start, counts)


def _posted(session: Session, lease_id: int, period: date, measure: str) -> int:
    total = session.exec(
        select(func.coalesce(func.sum(Charge.quantity), 0)).where(
            Charge.lease_id == lease_id, Charge.period == period, Charge.measure == measure
        )
    ).one()
    return int(total)


def _charge_group(session: Session, group: _Group, measure: str, run: RatingRun) -> None:
    assert group.lease.id is not None
    terms = catalogue.terms_of(group.price)
    currency = group.price.currency
    so_far = _posted(session, group.lease.id, group.period, measure)
    for hour in sorted(group.hours):
        items = group.hours[hour]
        quantity = sum(q for _, q in items)
        after = so_far + quantity
        amount = pricing.amount_to_date(terms, measure, after, currency) - pricing.amount_to_date(
            terms, measure, so_far, currency
        )
        unit, price, per = pricing.unit_price(terms, measure, after)
        keys = sorted(key for key, _ in items)
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
        key = f"charge:{group.lease.id}:{measure}:{hour:%Y%m%dT%H}:{digest}"
        charge = _post_charge(session, group, hour, measure, quantity, unit, price, per, amount, key, run)
        session.add_all([ChargedUsage(usage_key=k, charge_id=charge.id) for k in keys])
        so_far = after


def _post_charge(
    session: Session,
    group: _Group,
    hour: datetime,
    measure: str,
    quantity: int,
    unit: str,
    price: Decimal,
    per: str,
    amount: Money,
    key: str,
    run: RatingRun,
) -> Charge:
    lease = group.lease
    assert lease.id is not None
    sources: list[tuple[int, int]] = []
    transaction_id = None
    if amount.minor != 0:
        sources = funds.fund(session, lease.tenant_id, group.product, amount, hour)
        revenue = funds.platform_account(session, AccountKind.REVENUE, amount.currency)
        assert revenue.id is not None
        postings = [Posting(account, Money(-minor, amount.currency)) for account, minor in sources]
        memo = f"{measure} of lease {lease.id} ({group.product.sku}), {hour:%Y-%m-%d %H}:00 UTC"
        row = ledger_store.record(
            session, ledger.post(key, ledger.CHARGE, [*postings, Posting(revenue.id, amount)], memo)
        )
        transaction_id = row.id
    kinds = _kinds(session, [account for account, _ in sources])
    charge = Charge(
        tenant_id=lease.tenant_id,
        lease_id=lease.id,
        period=group.period,
        hour_start=hour,
        measure=measure,
        quantity=quantity,
        unit=unit,
        unit_price=str(price),
        price_per=per,
        amount_minor=amount.minor,
        currency=amount.currency,
        transaction_id=transaction_id,
        voucher_minor=sum(m for a, m in sources if kinds[a] == AccountKind.VOUCHER),
        credits_minor=sum(m for a, m in sources if kinds[a] == AccountKind.BANK_CREDITS),
    )
    session.add(charge)
    session.flush()
    run.charges += 1
    run.amount_minor[amount.currency] = run.amount_minor.get(amount.currency, 0) + amount.minor
    run.tenants.add(lease.tenant_id)
    return charge


def _kinds(session: Session, ids: list[int]) -> dict[int, str]:
    if not ids:
        return {}
    return {a.id: a.kind for a in session.exec(select(Account).where(col(Account.id).in_(ids))) if a.id is not None}


def _subscription_fees(session: Session, now: datetime, run: RatingRun) -> None:
    """Each subscription lease's monthly fee, once per month it runs in, in its first hour of that month."""
    subscriptions = session.exec(
        select(Lease, Product)
        .join(Product, col(Product.id) == col(Lease.product_id))
        .where(Product.unit == pricing.UnitKind.SUBSCRIPTION, col(Lease.starts_at) <= now)
    ).all()
    for lease, product in subscriptions:
        assert lease.id is not None
        start = as_utc(lease.starts_at)
        end = min(now, as_utc(lease.ends_at)) if lease.ends_at is not None else now
        period = pricing.month_start(start)
        while datetime.combine(period, datetime.min.time(), UTC) <= end and (start < end or period == start.date()):
            exists = session.exec(
                select(Charge.id).where(
                    Charge.lease_id == lease.id, Charge.period == period, Charge.measure == "subscription_fee"
                )
            ).first()
            if exists is None:
                _, price = catalogue.price_for_period(session, lease, period)
                terms = catalogue.terms_of(price)
                assert isinstance(terms, pricing.SubscriptionTerms)
                hour = max(start, datetime.combine(period, datetime.min.time(), UTC)).replace(
                    minute=0, second=0, microsecond=0
                )
                fee = rate(terms.monthly_fee, Decimal(1), price.currency)
                group = _Group(lease, product, price, period)
                _post_charge(
                    session,
                    group,
                    hour,
                    "subscription_fee",
                    1,
                    "month",
                    terms.monthly_fee,
                    "month",
                    fee,
                    f"fee:{lease.id}:{period:%Y-%m}",
                    run,
                )
            period = pricing.month_start(datetime.combine(period, datetime.min.time(), UTC) + timedelta(days=32))


# --- budgets and holds -----------------------------------------------------------------------------


def spent(session: Session, tenant_id: int, period: date) -> int:
    """Minor units charged to the tenant for usage in ``period`` (its month), whoever pays them."""
    total = session.exec(
        select(func.coalesce(func.sum(Charge.amount_minor), 0)).where(
            Charge.tenant_id == tenant_id, Charge.period == period
        )
    ).one()
    return int(total)


def review(session: Session, tenant_id: int, now: datetime) -> list[BudgetAlert]:
    """After charges: raise the month's budget alerts that are due, and hold or release the tenant's
    burst and bank slices as its funds ran out or returned. Returns the alerts raised now."""
    billing = funds.settings_for(session, tenant_id)
    alerts = _budget_alerts(session, billing, pricing.month_start(now))
    available = funds.funds(session, tenant_id, now)
    held = available.available <= 0
    if held != billing.held:
        reason = (
            (
                f"funds used up: prepaid {Money(available.prepaid, available.currency)} with a credit limit of "
                f"{Money(available.credit_limit, available.currency)}, no vouchers or credits left"
            )
            if held
            else ""
        )
        billing.held, billing.held_reason, billing.updated_at = held, reason[:500], utcnow()
        session.add(billing)
        _apply_hold(session, tenant_id, held, reason)
    session.flush()
    return alerts


def _budget_alerts(session: Session, billing: TenantBilling, period: date) -> list[BudgetAlert]:
    if not billing.monthly_budget_minor:
        return []
    used = spent(session, billing.tenant_id, period)
    raised = set(
        session.exec(
            select(BudgetAlert.threshold_pct).where(
                BudgetAlert.tenant_id == billing.tenant_id, BudgetAlert.period == period
            )
        ).all()
    )
    alerts = []
    for pct in BUDGET_THRESHOLDS:
        if pct not in raised and used * 100 >= billing.monthly_budget_minor * pct:
            alert = BudgetAlert(
                tenant_id=billing.tenant_id,
                period=period,
                threshold_pct=pct,
                spent_minor=used,
                budget_minor=billing.monthly_budget_minor,
                currency=billing.currency,
            )
            session.add(alert)
            alerts.append(alert)
            log.warning(
                "tenant %s spent %s of its %s budget for %s (%s%%)",
                billing.tenant_id,
                Money(used, billing.currency),
                Money(billing.monthly_budget_minor, billing.currency),
                period.strftime("%Y-%m"),
                pct,
            )
    return alerts


def _apply_hold(session: Session, tenant_id: int, held: bool, reason: str) -> None:
    """A new generation for each live burst/bank slice, whose spec now holds (or frees) it at its floor."""
    items = session.exec(
        select(Slice).where(
            Slice.tenant_id == tenant_id,
            col(Slice.priority).in_(HELD_PRIORITIES),
            col(Slice.status).not_in([SliceStatus.DELETING, SliceStatus.DELETED]),
        )
    ).all()
    for item in items:
        assert item.id is not None
        why = f"held at its floor: {reason}" if held else "funds returned: no longer held at its floor"
        session.add(
            ScaleEvent(
                tenant_id=tenant_id,
                slice_id=item.id,
                kind=ScaleKind.BILLING,
                min_before=item.min_replicas,
                min_after=item.min_replicas,
                max_before=item.max_replicas,
                max_after=item.min_replicas if held else item.max_replicas,
                reason=why[:500],
            )
        )
        item.status = transition(item.status, SliceStatus.PENDING, what=f"slice {item.slug}")
        item.generation += 1
        item.updated_at = utcnow()
        session.add(item)
        log.warning("slice %s of tenant %s %s", item.slug, tenant_id, why)


def alert_counts(session: Session) -> tuple[dict[int, int], int]:
    """Budget alerts raised per threshold, and how many tenants are held now (for /metrics)."""
    rows = session.exec(select(BudgetAlert.threshold_pct, func.count()).group_by(col(BudgetAlert.threshold_pct)))
    held = session.exec(select(func.count()).select_from(TenantBilling).where(col(TenantBilling.held).is_(True))).one()
    return {int(pct): int(n) for pct, n in rows.all()}, int(held)


def run_due(session: Session, now: datetime) -> RatingRun:
    """The background pass: rate what is pending, then commit."""
    run = rate_pending(session, now)
    session.commit()
    if run.charges:
        log.info("rated %s usage records into %s charges (%s)", run.records, run.charges, run.amount_minor)
    return run
