"""Rating usage records in batches (issue 13, section 3): the hot path of ``billing.rate_pending``.

Why a module of its own: a rating run may read millions of records (a month closed late, a backlog
after an outage, the billing benchmark), so this path is written for volume, while ``billing`` keeps
what runs once per lease or tenant (subscription fees, budgets, holds). The rules are ``billing``'s:

- Records are read in (slice, window start, id) order, each batch after the last record read, as plain
  columns, never ORM objects; a record left unrated (no lease at its time) is not read again this run.
- Per batch: records are grouped by lease, month and measure; each group's hours are charged the
  marginal month-to-date cost after what the lease's month already has (one query for the batch);
  who pays is ``funds.Payers`` (the answers of ``funds.fund``, with each tenant's accounts looked up,
  locked and summed once per run); the journal transactions go through ``ledger_store.record_many``
  (the ledger's checks, in a few queries); charges and their usage keys are inserted in bulk (COPY on
  PostgreSQL). Everything stays in the caller's transaction, so a failure rolls the whole run back.
- Price versions, parsed terms and the billed quantity of a capacity record (a pure function of price,
  priority and replica-seconds) are looked up once per run (``_Context``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Table, func, insert, select, tuple_
from sqlmodel import Session, col
from sqlmodel import select as orm_select

from contracts.wire import ErrorCode
from control_plane import catalogue, funds, ledger, ledger_store, pricing
from control_plane.ledger import AccountKind, Posting
from control_plane.models import (
    Charge,
    ChargedUsage,
    Lease,
    Product,
    ProductPrice,
    Slice,
    UsageRecord,
    as_utc,
    utcnow,
)
from control_plane.money import Money
from control_plane.scheduler import Priority

RATED_SOURCES = ("capacity", "verdicts")  # metering also stores "gap" records: shown on bills, never rated


@dataclass
class RatingRun:
    """What one ``billing.rate_pending`` call did."""

    records: int = 0  # usage records rated (billed or marked as included)
    charges: int = 0
    amount_minor: dict[str, int] = field(default_factory=dict)  # per currency
    unleased: int = 0  # records of slices with no lease at their time: left unbilled
    tenants: set[int] = field(default_factory=set)


@dataclass
class Group:
    """Usage of one lease, month and measure, by hour: what one ``_charge_group`` call charges."""

    lease: Lease
    product: Product
    price: ProductPrice
    period: date
    hours: dict[datetime, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))  # key, quantity


@dataclass
class _Context:
    """What one run looks up once: price versions per billing month, parsed terms, billed quantities of
    capacity records (a pure function of price, priority and replica-seconds), accounts and who pays."""

    payers: funds.Payers
    prices: dict[tuple[int, int, date], tuple[Product, ProductPrice]] = field(default_factory=dict)
    terms: dict[int, pricing.Terms] = field(default_factory=dict)
    billed: dict[tuple[int, Priority, int], tuple[str | None, int]] = field(default_factory=dict)
    revenue: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    """A charge computed, to be written with its batch (``_write``)."""

    charge: dict[str, Any]
    keys: list[str]
    transaction: ledger.Transaction | None


RATED = (
    select(col(ChargedUsage.usage_key)).where(col(ChargedUsage.usage_key) == col(UsageRecord.key)).limit(1).offset(0)
)
"""Whether a usage record is rated. The OFFSET keeps PostgreSQL from planning "not rated" as a hash anti-join
of every record and every rated key for each batch (quadratic in a run of millions): each batch reads records
in (slice, window start, id) order from the index, probes ``chargedusage``'s key for each, and stops at its size."""
USAGE_COLUMNS = (
    col(UsageRecord.id),
    col(UsageRecord.key),
    col(UsageRecord.source),
    col(UsageRecord.slice_id),
    col(UsageRecord.node_id),
    col(UsageRecord.line_id),
    col(UsageRecord.window_start),
    col(UsageRecord.replica_seconds),
    col(UsageRecord.verdicts),
)
"""What rating reads of a usage record (not the ORM object: a run may read millions)."""


def rate_records(session: Session, now: datetime, run: RatingRun, batch: int) -> funds.Payers:
    """Rate every usage record not rated yet with a window start before ``now`` into ``run``; returns
    who paid (``funds.Payers``, whose balances are current), for the budget review that follows."""
    context = _Context(funds.Payers(session))
    after: tuple[Any, ...] | None = None
    while True:
        query = (
            select(*USAGE_COLUMNS)
            .where(~RATED.exists(), col(UsageRecord.window_start) < now)
            .where(col(UsageRecord.source).in_(RATED_SOURCES))
            .order_by(col(UsageRecord.slice_id), col(UsageRecord.window_start), col(UsageRecord.id))
            .limit(batch)
        )
        if after is not None:
            query = query.where(
                tuple_(col(UsageRecord.slice_id), col(UsageRecord.window_start), col(UsageRecord.id)) > tuple_(*after)
            )
        rows = session.execute(query).all()
        _rate(session, rows, run, context)
        if len(rows) < batch:
            return context.payers
        after = (rows[-1].slice_id, rows[-1].window_start, rows[-1].id)


def _rate(session: Session, rows: Sequence[Any], run: RatingRun, context: _Context) -> None:
    if not rows:
        return
    leases = _leases(session, {row.slice_id for row in rows})
    spans = {
        slice_id: [(x, as_utc(x.starts_at), as_utc(x.ends_at) if x.ends_at is not None else None) for x in items]
        for slice_id, items in leases.items()
    }
    slices = {s.id: s for s in session.exec(orm_select(Slice).where(col(Slice.id).in_({row.slice_id for row in rows})))}
    groups: dict[tuple[int, date, str], Group] = {}
    included: list[str] = []
    hours: dict[datetime, tuple[datetime, datetime, date]] = {}  # window start -> (UTC, its hour, its month)
    for row in rows:
        if row.window_start not in hours:
            start = as_utc(row.window_start)
            hours[row.window_start] = (
                start,
                start.replace(minute=0, second=0, microsecond=0),
                pricing.month_start(start),
            )
        start, hour, period = hours[row.window_start]
        lease = _lease_at(spans.get(row.slice_id, ()), start)
        if lease is None:
            run.unleased += 1
            continue
        assert lease.id is not None
        product, price = _price(session, context, lease, period)
        measure, quantity = _billed(context, row, slices[row.slice_id], price)
        run.records += 1
        if measure is None:
            included.append(row.key)
            continue
        key = (lease.id, period, measure)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(lease, product, price, period)
        group.hours[hour].append((row.key, quantity))
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2]))
    posted = _posted_many(session, [key for key, _ in ordered])
    for currency in sorted({group.price.currency for _, group in ordered}):
        context.payers.load([g.lease.tenant_id for _, g in ordered if g.price.currency == currency], currency)
    pending: list[_Pending] = []
    for (_, _, measure), group in ordered:
        so_far = posted.get((group.lease.id or 0, group.period, measure), 0)
        pending += _charge_group(session, context, group, measure, so_far)
    _write(session, pending, included, run)


def _price(session: Session, context: _Context, lease: Lease, period: date) -> tuple[Product, ProductPrice]:
    """``catalogue.price_for_period``, once per product, pinned version and month."""
    key = (lease.product_id, lease.price_id, period)
    if key not in context.prices:
        context.prices[key] = catalogue.price_for_period(session, lease, period)
    return context.prices[key]


def _billed(context: _Context, row: Any, item: Slice, price: ProductPrice) -> tuple[str | None, int]:
    """What a record is billed as and how much (``pricing.measure_of``, ``pricing.quantities``)."""
    assert price.id is not None
    if price.id not in context.terms:
        context.terms[price.id] = catalogue.terms_of(price)
    terms = context.terms[price.id]
    memo = (price.id, item.priority, row.replica_seconds) if row.source == "capacity" else None
    if memo is not None and memo in context.billed:
        return context.billed[memo]
    record = _as_pricing_record(row, item)
    measure = pricing.measure_of(record, terms)
    answer = (measure, pricing.quantities([record], terms).get(measure, 0) if measure is not None else 0)
    if memo is not None:
        context.billed[memo] = answer
    return answer


def _lease_at(spans: Sequence[tuple[Lease, datetime, datetime | None]], at: datetime) -> Lease | None:
    """The first lease (by id) of a slice in force at ``at``: [starts_at, ends_at), made UTC once per batch."""
    for lease, begins, ends in spans:
        if begins <= at and (ends is None or at < ends):
            return lease
    return None


def _leases(session: Session, slice_ids: set[int]) -> dict[int, list[Lease]]:
    result: dict[int, list[Lease]] = defaultdict(list)
    for lease in session.exec(orm_select(Lease).where(col(Lease.slice_id).in_(slice_ids)).order_by(col(Lease.id))):
        result[lease.slice_id].append(lease)
    return result


def _as_pricing_record(row: Any, item: Slice) -> pricing.CapacityRecord | pricing.VerdictRecord:
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


def _posted_many(session: Session, groups: list[tuple[int, date, str]]) -> dict[tuple[int, date, str], int]:
    """The quantity already charged per (lease, month, measure) of a batch, in one query per 500 leases."""
    wanted = set(groups)
    leases = sorted({lease_id for lease_id, _, _ in wanted})
    found: dict[tuple[int, date, str], int] = {}
    for start in range(0, len(leases), 500):
        rows = session.execute(
            select(col(Charge.lease_id), col(Charge.period), col(Charge.measure), func.sum(col(Charge.quantity)))
            .where(col(Charge.lease_id).in_(leases[start : start + 500]))
            .group_by(col(Charge.lease_id), col(Charge.period), col(Charge.measure))
        ).all()
        for lease_id, period, measure, total in rows:
            if (lease_id, period, measure) in wanted:
                found[lease_id, period, measure] = int(total or 0)
    return found


def _charge_group(session: Session, context: _Context, group: Group, measure: str, so_far: int) -> list[_Pending]:
    """A group's charges per hour, each the marginal month-to-date cost, paid as ``funds.fund`` says."""
    lease = group.lease
    assert lease.id is not None
    assert group.price.id is not None
    terms = context.terms[group.price.id]
    currency = group.price.currency
    pending = []
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
        key = f"charge:{lease.id}:{measure}:{hour:%Y%m%dT%H}:{digest}"
        sources: list[tuple[int, int]] = []
        transaction = None
        if amount.minor != 0:
            sources = context.payers.fund(lease.tenant_id, group.product, amount, hour)
            if currency not in context.revenue:
                revenue = funds.platform_account(session, AccountKind.REVENUE, currency)
                assert revenue.id is not None
                context.revenue[currency] = revenue.id
            postings = [Posting(account, Money(-minor, currency)) for account, minor in sources]
            memo = f"{measure} of lease {lease.id} ({group.product.sku}), {hour:%Y-%m-%d %H}:00 UTC"
            transaction = ledger.post(key, ledger.CHARGE, [*postings, Posting(context.revenue[currency], amount)], memo)
        kinds = context.payers.kinds
        charge = dict(
            tenant_id=lease.tenant_id, lease_id=lease.id, period=group.period, hour_start=hour, measure=measure,
            quantity=quantity, unit=unit, unit_price=str(price), price_per=per, amount_minor=amount.minor,
            currency=currency, transaction_id=None,
            voucher_minor=sum(m for a, m in sources if kinds[a] == AccountKind.VOUCHER),
            credits_minor=sum(m for a, m in sources if kinds[a] == AccountKind.BANK_CREDITS),
        )  # fmt: skip
        pending.append(_Pending(charge, keys, transaction))
        so_far = after
    return pending


def _write(session: Session, pending: list[_Pending], included: list[str], run: RatingRun) -> None:
    """A batch's journal transactions (``ledger_store.record_many``), charges and rated usage keys."""
    posting = [p for p in pending if p.transaction is not None]
    ids = ledger_store.record_many(session, [p.transaction for p in posting if p.transaction is not None])
    for item, transaction_id in zip(posting, ids, strict=True):
        item.charge["transaction_id"] = transaction_id
    now = utcnow()
    connection = session.connection()
    charged: list[tuple[str, int | None]] = []
    if pending:
        table = _table(Charge)
        rows = [{**p.charge, "created_at": now} for p in pending]
        returned = connection.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), rows).all()
        for item, (charge_id,) in zip(pending, returned, strict=True):
            charged += [(key, charge_id) for key in item.keys]
            run.charges += 1
            currency, minor = item.charge["currency"], item.charge["amount_minor"]
            run.amount_minor[currency] = run.amount_minor.get(currency, 0) + minor
            run.tenants.add(item.charge["tenant_id"])
    charged += [(key, None) for key in included]
    if not charged:
        return
    if connection.dialect.name == "postgresql":  # COPY: the same rows, half the time of INSERTs at this volume
        driver: Any = connection.connection.driver_connection  # psycopg's Connection, in this transaction
        with driver.cursor() as cursor, cursor.copy("COPY chargedusage (usage_key, charge_id) FROM STDIN") as copy:
            for usage in charged:
                copy.write_row(usage)
    else:
        connection.execute(insert(_table(ChargedUsage)), [{"usage_key": k, "charge_id": c} for k, c in charged])


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table
