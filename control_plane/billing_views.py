"""What people read about money (issue 13, section 7): a tenant's month so far and to come, and the
operator's revenue. Read-only; every figure is derived from charges, entries and usage records.

Forecasts, and why they are estimates labelled as such: a capacity lease's rest of the month is its
replica floor over the hours left, taken from the lines' order plans where a plan and a measured profile
exist (``planner.windows``: the floors the planner will set), else from its ``min_replicas``, times the
price per replica-hour; a usage or subscription lease's is its verdicts so far, extrapolated at the same
rate, priced at the month-to-date tiers. Autoscaling above the floor is not forecast.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from control_plane import billing, capacity, catalogue, funds, planner, pricing
from control_plane.ledger import AccountKind
from control_plane.models import (
    Account,
    BudgetAlert,
    Charge,
    JournalEntry,
    Lease,
    Line,
    OrderPlan,
    Product,
    ProductPrice,
    Site,
    Slice,
    UsageRecord,
    as_utc,
)
from control_plane.money import Money, rate


def month_bounds(at: datetime) -> tuple[datetime, datetime]:
    first = datetime.combine(pricing.month_start(at), datetime.min.time(), UTC)
    return first, datetime.combine(pricing.month_start(first + timedelta(days=32)), datetime.min.time(), UTC)


def shown(minor: int, currency: str) -> dict[str, Any]:
    """An amount as the money views show it (bank too): minor units, the currency, and the text people read."""
    return {"minor": minor, "currency": currency, "text": str(Money(minor, currency))}


def summary(session: Session, tenant_id: int, now: datetime) -> dict[str, Any]:
    """The plant page's money panel: spend this month, forecast, budget, funds, cost per 1,000 parts."""
    now = as_utc(now)
    settings = funds.settings_for(session, tenant_id)
    currency, period = settings.currency, pricing.month_start(now)
    spent = billing.spent(session, tenant_id, period)
    rest = sum(_forecast_rest(session, lease, now) for lease in _running(session, tenant_id))
    money = funds.funds(session, tenant_id, now)
    alerts = session.exec(select(BudgetAlert).where(BudgetAlert.tenant_id == tenant_id, BudgetAlert.period == period)
                          .order_by(col(BudgetAlert.threshold_pct))).all()  # fmt: skip
    budget = settings.monthly_budget_minor
    return {
        "tenant_id": tenant_id, "period": period.strftime("%Y-%m"), "currency": currency,
        "spent": shown(spent, currency), "forecast_month_end": shown(spent + rest, currency),
        "budget": shown(budget, currency) if budget else None,
        "budget_used_pct": round(100 * spent / budget, 1) if budget else None,
        "alerts": [{"threshold_pct": a.threshold_pct, "at": a.created_at, "spent": shown(a.spent_minor, currency)}
                   for a in alerts],
        "funds": {"prepaid": shown(money.prepaid, currency), "credit_limit": shown(money.credit_limit, currency),
                  "vouchers": shown(money.vouchers, currency), "bank_credits": shown(money.credits, currency),
                  "debt": shown(money.debt, currency), "available": shown(money.available, currency)},
        "held": settings.held, "held_reason": settings.held_reason,
        "lines": cost_per_line(session, tenant_id, period, currency),
    }  # fmt: skip


def _running(session: Session, tenant_id: int) -> list[Lease]:
    return list(session.exec(select(Lease).where(Lease.tenant_id == tenant_id, col(Lease.ends_at).is_(None))).all())


def _forecast_rest(session: Session, lease: Lease, now: datetime) -> int:
    """Minor units the lease will likely add from ``now`` to the month's end (see the module docstring)."""
    item = session.get(Slice, lease.slice_id)
    price = session.get(ProductPrice, lease.price_id)
    if item is None or price is None:
        return 0
    start, end = month_bounds(now)
    terms = catalogue.terms_of(price)
    if isinstance(terms, pricing.CapacityTerms):
        hours = _floor_hours(session, item, now, end)
        return rate(terms.per_hour(item.priority), hours, price.currency).minor
    verdicts = _verdicts(session, item.id, start, now)
    elapsed = Decimal(int((now - start).total_seconds()) or 1)
    expected = int(Decimal(verdicts) * Decimal(int((end - start).total_seconds())) / elapsed)
    cost = terms.cost
    return (rate(cost(expected), Decimal(1), price.currency) - rate(cost(verdicts), Decimal(1), price.currency)).minor


def _floor_hours(session: Session, item: Slice, now: datetime, end: datetime) -> Decimal:
    """Replica-hours of the slice's floor over ``[now, end)``: planned windows where a plan exists."""
    total = Decimal(int((end - now).total_seconds())) / 3600 * item.min_replicas
    plans, profile = capacity.line_plans(session, item), capacity.profile_for(session, item)
    if not plans or profile is None:
        return total
    lease = planner.Lease(item.max_replicas, Decimal(0))
    days = max(1, (end - now).days + 1)
    extra = Decimal(0)
    for plan in plans.values():
        for w in planner.windows(plan, profile, lease, now.replace(tzinfo=None), days):
            overlap = min(w.end, end.replace(tzinfo=None)) - max(w.warm_from, now.replace(tzinfo=None))
            if overlap.total_seconds() > 0 and w.floor > item.min_replicas:
                extra += Decimal(int(overlap.total_seconds())) / 3600 * (w.floor - item.min_replicas)
    return total + extra


def _verdicts(session: Session, slice_id: int | None, since: datetime, until: datetime) -> int:
    rows = session.exec(select(UsageRecord.verdicts).where(
        UsageRecord.slice_id == slice_id, UsageRecord.source == "verdicts",
        col(UsageRecord.window_start) >= since, col(UsageRecord.window_start) < until)).all()  # fmt: skip
    return sum(int(v.get("pass", 0)) + int(v.get("fail", 0)) for v in rows)


def cost_per_line(session: Session, tenant_id: int, period: date, currency: str) -> list[dict[str, Any]]:
    """Per line: inspected parts this month (verdicts / views per part of its order plan) and what its
    slices cost, each slice's cost split over its lines by their share of its verdicts."""
    start = datetime.combine(period, datetime.min.time(), UTC)
    end = month_bounds(start)[1]
    cost_of: dict[int, int] = defaultdict(int)
    for slice_id, amount in session.exec(
        select(Lease.slice_id, func.sum(Charge.amount_minor)).join(Lease, col(Lease.id) == col(Charge.lease_id))
        .where(Charge.tenant_id == tenant_id, Charge.period == period, Charge.currency == currency)
        .group_by(col(Lease.slice_id))
    ).all():  # fmt: skip
        cost_of[slice_id] += int(amount or 0)
    verdicts: dict[tuple[int, int], int] = defaultdict(int)
    for slice_id, line_id, counts in session.exec(select(UsageRecord.slice_id, UsageRecord.line_id,
        UsageRecord.verdicts).where(UsageRecord.tenant_id == tenant_id, UsageRecord.source == "verdicts",
        col(UsageRecord.window_start) >= start, col(UsageRecord.window_start) < end)).all():  # fmt: skip
        if line_id is not None:
            verdicts[slice_id, line_id] += int(counts.get("pass", 0)) + int(counts.get("fail", 0))
    per_slice: dict[int, int] = defaultdict(int)
    for (slice_id, _), n in verdicts.items():
        per_slice[slice_id] += n
    lines = session.exec(select(Line).where(Line.tenant_id == tenant_id).order_by(col(Line.id))).all()
    plans = {row.line_id: capacity.to_plan(row.plan) for row in session.exec(
        select(OrderPlan).where(OrderPlan.tenant_id == tenant_id)).all()}  # fmt: skip
    result = []
    for line in lines:
        assert line.id is not None
        seen = sum(n for (s, lid), n in verdicts.items() if lid == line.id)
        cost = sum(
            cost_of[s] * n // per_slice[s] for (s, lid), n in verdicts.items() if lid == line.id and per_slice[s]
        )
        plan = plans.get(line.id)
        parts = seen // (plan.views_per_part if plan else 1)
        result.append({"line_id": line.id, "slug": line.slug, "verdicts": seen, "parts": parts,
                       "cost": shown(cost, currency),
                       "cost_per_1000_parts": shown(cost * 1000 // parts, currency) if parts else None})  # fmt: skip
    return result


def revenue(session: Session, now: datetime) -> dict[str, Any]:
    """The operator's view: revenue per site and product this month and overall, and receivables."""
    period = pricing.month_start(as_utc(now))
    rows = session.execute(  # five columns: SQLAlchemy's select (SQLModel's types stop at four)
        sa_select(Site.name, Product.sku, Charge.currency, Charge.period, func.sum(Charge.amount_minor))  # type: ignore[call-overload]
        .join(Lease, col(Lease.id) == col(Charge.lease_id)).join(Product, col(Product.id) == col(Lease.product_id))
        .join(Site, col(Site.id) == col(Product.site_id))
        .group_by(col(Site.name), col(Product.sku), col(Charge.currency), col(Charge.period))
    ).all()  # fmt: skip
    products: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: {"month": 0, "total": 0})
    for site, sku, currency, charged_in, amount in rows:
        entry = products[site, sku, currency]
        entry["total"] += int(amount or 0)
        if charged_in == period:
            entry["month"] += int(amount or 0)
    owed = session.exec(
        select(Account.tenant_id, Account.currency, func.sum(JournalEntry.amount_minor))
        .join(JournalEntry, col(JournalEntry.account_id) == col(Account.id))
        .where(Account.kind == AccountKind.RECEIVABLE).group_by(col(Account.tenant_id), col(Account.currency))
    ).all()  # fmt: skip
    return {
        "period": period.strftime("%Y-%m"),
        "products": [{"site": s, "sku": k, "this_month": shown(v["month"], c), "all_time": shown(v["total"], c)}
                     for (s, k, c), v in sorted(products.items())],
        "receivables": [{"tenant_id": t, "owed": shown(-int(total or 0), c)} for t, c, total in owed if total],
    }  # fmt: skip
