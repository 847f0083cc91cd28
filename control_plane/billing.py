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

Records are rated in batches by ``rating`` (the volume path: plain columns, a few queries per batch).
Who pays a charge is ``funds.fund``'s answer (vouchers, bank credits, prepaid and credit, then debt).
After a run, a tenant whose prepaid balance, credit, vouchers and credits are used up is ``held``: its
``burst`` and ``bank`` slices are held at their floor (``sites.slice_spec``) and new leases are refused
with 402 until funds return. Reserved slices keep running; their usage is recorded as debt.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func
from sqlmodel import Session, col, select

from control_plane import catalogue, funds, ledger, ledger_store, pricing, rating
from control_plane.ledger import AccountKind, Posting
from control_plane.models import (
    Account,
    BudgetAlert,
    Charge,
    Lease,
    Product,
    ScaleEvent,
    ScaleKind,
    Slice,
    TenantBilling,
    as_utc,
    utcnow,
)
from control_plane.money import Money, rate
from control_plane.rating import Group, RatingRun
from control_plane.scheduler import Priority
from control_plane.states import SliceStatus, transition

log = logging.getLogger(__name__)
__all__ = ["BATCH", "RatingRun", "alert_counts", "rate_pending", "review", "run_due", "spent"]

BATCH = 20_000
"""Usage records read per rating round; a run loops until none is left."""
BUDGET_THRESHOLDS = (80, 100)
HELD_PRIORITIES = (Priority.BURST, Priority.BANK)


def rate_pending(session: Session, now: datetime, *, batch: int = BATCH) -> RatingRun:
    """Rate every usage record not rated yet (window start before ``now``), and charge subscription fees
    due by ``now``; the caller commits. Safe to run again at any time: what is rated is never rated twice.
    The records are rated in batches of ``batch`` by ``rating.rate_records``."""
    now = as_utc(now)
    run = RatingRun()
    _subscription_fees(session, now, run)
    payers = rating.rate_records(session, now, run, batch)
    for tenant_id in sorted(run.tenants):
        review(session, tenant_id, now, payers)
    return run


# --- subscription fees -----------------------------------------------------------------------------


def _post_charge(
    session: Session,
    group: Group,
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
                group = Group(lease, product, price, period)
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


def review(session: Session, tenant_id: int, now: datetime, payers: funds.Payers | None = None) -> list[BudgetAlert]:
    """After charges: raise the month's budget alerts that are due, and hold or release the tenant's
    burst and bank slices as its funds ran out or returned. Returns the alerts raised now. ``payers``:
    the rating run's, whose balances are current (``funds.Payers``)."""
    billing = funds.settings_for(session, tenant_id)
    alerts = _budget_alerts(session, billing, pricing.month_start(now))
    available = funds.funds(session, tenant_id, now, payers)
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
            note = (f"budget: {pct}% of the {Money(billing.monthly_budget_minor, billing.currency)} monthly budget "
                    f"spent ({Money(used, billing.currency)}) in {period:%Y-%m}")  # fmt: skip
            for item in _live_slices(session, billing.tenant_id):
                _event(session, item, note, item.max_replicas)  # the slices' events: what the plant page lists
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
    for item in _live_slices(session, tenant_id):
        if item.priority not in HELD_PRIORITIES:
            continue
        why = f"held at its floor: {reason}" if held else "funds returned: no longer held at its floor"
        _event(session, item, why, item.min_replicas if held else item.max_replicas)
        item.status = transition(item.status, SliceStatus.PENDING, what=f"slice {item.slug}")
        item.generation += 1
        item.updated_at = utcnow()
        session.add(item)
        log.warning("slice %s of tenant %s %s", item.slug, tenant_id, why)


def _live_slices(session: Session, tenant_id: int) -> list[Slice]:
    return list(session.exec(select(Slice).where(
        Slice.tenant_id == tenant_id, col(Slice.status).not_in([SliceStatus.DELETING, SliceStatus.DELETED])
    ).order_by(col(Slice.id))).all())  # fmt: skip


def _event(session: Session, item: Slice, reason: str, max_after: int) -> None:
    """A billing event on the slice's event list (its bounds as stored; ``max_after``: what runs now)."""
    assert item.id is not None
    session.add(ScaleEvent(tenant_id=item.tenant_id, slice_id=item.id, kind=ScaleKind.BILLING,
                           min_before=item.min_replicas, min_after=item.min_replicas, max_before=item.max_replicas,
                           max_after=max_after, reason=reason[:500]))  # fmt: skip


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
