"""Products, price versions and rating: what an hour of metered use costs (issue 13, sections 1 and 2).

Pure: no database and no web framework, so the ledger can call it inside its transaction and tests can
call it with plain values. Every amount is a ``Money`` made by ``money.rate``; prices are ``Decimal``
major units that may carry sub-cent digits (0.0042 EUR a verdict); a float is refused wherever one could
enter, because 0.1 + 0.2 != 0.3 and a bill must add up.

How an hour is rated, and why hour by hour equals the whole month at once:

- The billing period is a calendar month (UTC); tiers apply to the month's cumulative volume of one
  lease, not to each hour's.
- Per measure, the month-to-date cost is rounded once, half to even; an hour's amount is that rounded
  cost at the hour's end minus the one at its start. The hours telescope to the month's cost, rounded
  once, to the minor unit. Capacity is prorated per second after rounding each record's replica-seconds
  up to the product's ``billed_increment_s`` (60 s by default: per-minute billing, at least a minute).
- Records are keyed (``usage_key``): a repeated key counts once, order does not matter, and a late
  record is present at the next rating; the ledger posts the difference, so it is billed once.
- A capacity window with no record (the agent was silent) rates as nothing and is a ``gap`` line.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from contracts.wire import ErrorCode
from control_plane.money import CURRENCIES, Money, rate
from control_plane.scheduler import Priority

ROBOT_ERRORS = frozenset(
    {ErrorCode.BAD_IMAGE, ErrorCode.TOO_LARGE, ErrorCode.UNSUPPORTED_FORMAT, ErrorCode.RATE_LIMITED}
)
"""Answers to the robot's bad input count as verdicts by default; ``internal`` (our failure) does not."""
VERDICTS = ("pass", "fail")


def _no_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("give prices as str or Decimal, never float")
    return value


Price = Annotated[Decimal, BeforeValidator(_no_float), Field(ge=0, allow_inf_nan=False)]  # major units


class UnitKind(StrEnum):
    CAPACITY = "capacity"
    USAGE = "usage"
    SUBSCRIPTION = "subscription"


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapacityTerms(_Input):
    kind: Literal[UnitKind.CAPACITY] = UnitKind.CAPACITY
    reserved_per_hour: Price = Field(description="Per replica-hour for reserved replicas (guaranteed).")
    burst_per_hour: Price = Field(description="Per replica-hour for burst replicas (best effort).")
    bank_per_hour: Price = Field(description="Per replica-hour for compute-bank replicas (preemptible; cheapest).")
    billed_increment_s: int = Field(
        default=60, ge=1, le=3600, strict=True, description="Each record's replica-seconds round up to this."
    )

    @model_validator(mode="after")
    def _bank_is_cheaper(self) -> CapacityTerms:
        if not self.bank_per_hour < min(self.reserved_per_hour, self.burst_per_hour):
            raise ValueError("bank replicas are preemptible, so their rate must be below reserved and burst")
        return self

    def per_hour(self, priority: Priority) -> Decimal:
        price: Decimal = getattr(self, f"{priority.value}_per_hour")
        return price


class Tier(_Input):
    up_to: int | None = Field(
        strict=True, ge=1, description="Last verdict of the month (cumulative) at this price; None: no limit."
    )
    per_1000: Price = Field(description="Price per 1,000 verdicts within this tier.")


class UsageTerms(_Input):
    kind: Literal[UnitKind.USAGE] = UnitKind.USAGE
    tiers: tuple[Tier, ...] = Field(min_length=1, description="By the month's cumulative volume; last unbounded.")
    counted_errors: frozenset[ErrorCode] = Field(
        default=ROBOT_ERRORS, description="Error answers billed like verdicts (the robot's bad input)."
    )

    @model_validator(mode="after")
    def _tiers_ascend(self) -> UsageTerms:
        limits = [tier.up_to for tier in self.tiers[:-1] if tier.up_to is not None]
        if self.tiers[-1].up_to is not None or len(limits) < len(self.tiers) - 1 or limits != sorted(set(limits)):
            raise ValueError("tier limits must strictly ascend, and only the last tier is unbounded (up_to: null)")
        return self

    def cost(self, verdicts: int) -> Decimal:
        """Exact price of the month's first ``verdicts`` verdicts, tier by tier."""
        cost, floor = Decimal(0), 0
        for tier in self.tiers:
            top = verdicts if tier.up_to is None else min(verdicts, tier.up_to)
            if top > floor:
                cost += tier.per_1000 * (top - floor) / 1000
            floor = top if tier.up_to is None else tier.up_to
            if verdicts <= floor:
                break
        return cost


class SubscriptionTerms(_Input):
    kind: Literal[UnitKind.SUBSCRIPTION] = UnitKind.SUBSCRIPTION
    monthly_fee: Price = Field(description="Charged once per month, in its first hour.")
    replica_floor: int = Field(ge=0, strict=True, description="Replicas the fee keeps running; not rated apart.")
    included_verdicts: int = Field(ge=0, strict=True, description="Verdicts a month the fee includes.")
    overage_per_1000: Price = Field(description="Per 1,000 verdicts beyond the included ones.")
    counted_errors: frozenset[ErrorCode] = Field(
        default=ROBOT_ERRORS, description="Error answers counted like verdicts (the robot's bad input)."
    )

    def cost(self, verdicts: int) -> Decimal:
        return self.overage_per_1000 * max(0, verdicts - self.included_verdicts) / 1000


Terms = Annotated[CapacityTerms | UsageTerms | SubscriptionTerms, Field(discriminator="kind")]


class Product(_Input):
    sku: str = Field(min_length=1, max_length=64, description="Stable product code, e.g. q-l4-plant-north.")
    site: str = Field(min_length=1, description="Site the product's hardware is at.")
    hardware_class: str = Field(min_length=1, description="e.g. 'quarter GPU, L4-class' or 'CPU replica'.")
    unit: UnitKind = Field(description="How it is priced: capacity, usage or subscription.")


class PriceVersion(_Input):
    sku: str = Field(description="The product this prices.")
    version: int = Field(ge=1, strict=True, description="Ascends with effective_from.")
    effective_from: date = Field(description="First day (UTC) a new lease gets this price.")
    currency: str = Field(description="ISO 4217 code, one of money.CURRENCIES.")
    terms: Terms

    @model_validator(mode="after")
    def _known_currency(self) -> PriceVersion:
        if self.currency not in CURRENCIES:
            raise ValueError(f"currency {self.currency!r} is not one of {sorted(CURRENCIES)}")
        return self


def _day(at: date) -> date:
    return at.astimezone(UTC).date() if isinstance(at, datetime) else at


def month_start(at: date) -> date:
    return _day(at).replace(day=1)


def price_in_force(versions: Iterable[PriceVersion], at: date) -> PriceVersion:
    """The version a lease bought at ``at`` pins: the latest one already effective."""
    versions = list(versions)
    if len({v.sku for v in versions}) > 1:
        raise ValueError("price versions of several products given; pass one product's")
    effective = [v for v in versions if v.effective_from <= _day(at)]
    if effective:
        return max(effective, key=lambda v: (v.effective_from, v.version))
    raise LookupError(f"no price in force on {_day(at)}")


def price_for_period(pinned: PriceVersion, versions: Iterable[PriceVersion], period_start: date) -> PriceVersion:
    """The price of one billing month of a lease: never earlier than the version it pinned, and a
    version effective mid-month applies from the next month (never back-dated into a running period)."""
    if period_start != month_start(period_start):
        raise ValueError("a billing period starts on the 1st of a month")
    effective = [v for v in versions if v.effective_from <= period_start]  # the pinned one may start mid-month
    current = price_in_force(effective, period_start) if effective else pinned
    return max(current, pinned, key=lambda v: (v.effective_from, v.version))


class Source(StrEnum):
    AGENT = "agent"  # replica-seconds from Serve's state on a node
    INGRESS = "ingress"  # verdict counts from the edge's telemetry


def usage_key(source: Source, slice_name: str, subject: str, window_start: datetime) -> str:
    """Deterministic idempotency key; each part percent-encoded, so distinct parts never collide. A start
    with a fraction of a second keeps it (two telemetry windows of one replica may start in one second)."""
    at = _utc(window_start)
    start = at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{at.microsecond:06d}" if at.microsecond else "") + "Z"
    return "/".join([*(quote(part, safe="") for part in (source.value, slice_name, subject)), start])


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("window starts must be timezone-aware")
    return at.astimezone(UTC)


def _count(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{what} must be a non-negative int, not {value!r}")


@dataclass(frozen=True)
class CapacityRecord:
    """Replica-seconds one agent saw running for a slice on its node in one window."""

    slice_name: str
    node: str
    window_start: datetime
    replica_seconds: int
    priority: Priority

    def __post_init__(self) -> None:
        _count(self.replica_seconds, "replica_seconds")
        object.__setattr__(self, "window_start", _utc(self.window_start))

    @property
    def key(self) -> str:
        return usage_key(Source.AGENT, self.slice_name, self.node, self.window_start)


@dataclass(frozen=True)
class VerdictRecord:
    """Answers the ingress gave a line's robots in one window: ``pass``/``fail`` and error codes."""

    slice_name: str
    line: str
    window_start: datetime
    counts: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for outcome, number in self.counts.items():
            if outcome not in VERDICTS and outcome not in set(ErrorCode):
                raise ValueError(f"unknown outcome {outcome!r}")
            _count(number, f"count of {outcome}")
        object.__setattr__(self, "window_start", _utc(self.window_start))
        object.__setattr__(self, "counts", dict(sorted(self.counts.items())))

    @property
    def key(self) -> str:
        return usage_key(Source.INGRESS, self.slice_name, self.line, self.window_start)

    def billable(self, counted_errors: Collection[ErrorCode]) -> int:
        return sum(n for outcome, n in self.counts.items() if outcome in VERDICTS or outcome in counted_errors)


Record = CapacityRecord | VerdictRecord


class ConflictingUsage(ValueError):
    """Two records share a key but differ: a report changed after it was sent; refuse to guess."""


@dataclass(frozen=True)
class RatedLine:
    """One line of an hour's bill, as an invoice reads it: ``quantity`` ``unit`` at ``unit_price`` per
    ``price_per``. ``keys`` are the usage records it rates, so the ledger can prove none is billed twice."""

    slice_name: str
    measure: str  # reserved / burst / bank, verdicts, subscription_fee, overage, or gap
    subject: str  # the node of a gap; empty otherwise
    hour_start: datetime
    quantity: int
    unit: str  # replica-second, verdict, month, or silent second
    unit_price: Decimal
    price_per: str  # replica-hour, 1000 verdicts, month
    amount: Money
    keys: tuple[str, ...] = ()


def unique(records: Iterable[Record]) -> list[Record]:
    """Records once per key, in key order; a same-key record with other values is refused."""
    seen: dict[str, Record] = {}
    for record in records:
        if seen.setdefault(record.key, record) != record:
            raise ConflictingUsage(f"{record.key}: {seen[record.key]} then {record}")
    return [seen[key] for key in sorted(seen)]


def rate_hour(
    records: Iterable[Record],
    product: Product,
    version: PriceVersion,
    hour_start: datetime,
    *,
    slice_name: str,
    window_s: int = 60,
    expected_nodes: Collection[str] = (),
) -> list[RatedLine]:
    """The lines of one lease (one slice) for ``[hour_start, +1h)``, from all of the month's records known
    now, in any order, repeats allowed. Earlier hours' records set the month-to-date volume that tiers and
    rounding start from, so after a late record the ledger re-rates from its hour onward and posts the
    differences. Gaps are sought on the nodes that reported this hour and on ``expected_nodes`` (where the
    slice was placed: a node silent all hour has sent nothing to see it by)."""
    if version.sku != product.sku or version.terms.kind != product.unit:
        raise ValueError(f"price version {version.sku} v{version.version} does not price {product.sku}")
    start = _utc(hour_start)
    if start != start.replace(minute=0, second=0, microsecond=0):
        raise ValueError("billing hours start on the hour")
    month = datetime.combine(month_start(start), datetime.min.time(), UTC)
    known = _of_slice(unique(records), slice_name, month, start + timedelta(hours=1))
    terms, currency = version.terms, version.currency
    earlier, so_far = quantities([r for r in known if r.window_start < start], terms), quantities(known, terms)
    lines = []
    if isinstance(terms, SubscriptionTerms) and start == month:
        fee = rate(terms.monthly_fee, Decimal(1), currency)
        lines.append(RatedLine(slice_name, "subscription_fee", "", start, 1, "month", terms.monthly_fee, "month", fee))
    for measure, quantity in so_far.items():
        now = [r for r in known if r.window_start >= start and measure_of(r, terms) == measure]
        if not now:
            continue
        before = earlier.get(measure, 0)
        amount = amount_to_date(terms, measure, quantity, currency) - amount_to_date(terms, measure, before, currency)
        unit, price, per = unit_price(terms, measure, quantity)
        keys = tuple(r.key for r in now)
        lines.append(RatedLine(slice_name, measure, "", start, quantity - before, unit, price, per, amount, keys))
    if isinstance(terms, CapacityTerms):
        lines += _gaps(known, start, window_s, expected_nodes, slice_name, currency)
    return lines


def rate_month(
    records: Iterable[Record], product: Product, version: PriceVersion, month: date, *, slice_name: str
) -> dict[str, Money]:
    """The month's amount per measure from its totals, each rounded once: what the hours' lines add up to."""
    first = datetime.combine(month_start(month), datetime.min.time(), UTC)
    following = datetime.combine(month_start(first + timedelta(days=31)), datetime.min.time(), UTC)
    known = _of_slice(unique(records), slice_name, first, following)
    terms, currency = version.terms, version.currency
    totals = {m: amount_to_date(terms, m, q, currency) for m, q in quantities(known, terms).items()}
    if isinstance(terms, SubscriptionTerms):
        totals["subscription_fee"] = rate(terms.monthly_fee, Decimal(1), currency)
    return totals


def _of_slice(records: list[Record], slice_name: str, since: datetime, until: datetime) -> list[Record]:
    strangers = {r.slice_name for r in records} - {slice_name}
    if strangers:
        raise ValueError(f"records of other slices {sorted(strangers)} given to rate {slice_name}'s lease")
    return [r for r in records if since <= r.window_start < until]


def measure_of(record: Record, terms: Terms) -> str | None:
    """What a record is billed as under these terms; None: nothing (e.g. capacity under a subscription)."""
    if isinstance(terms, CapacityTerms):
        return record.priority.value if isinstance(record, CapacityRecord) else None
    if isinstance(record, CapacityRecord):
        return None
    return "overage" if isinstance(terms, SubscriptionTerms) else "verdicts"


def quantities(records: Iterable[Record], terms: Terms) -> dict[str, int]:
    """Billable quantity per measure: replica-seconds after the billed increment, or counted verdicts."""
    quantities: dict[str, int] = {}
    for record in records:
        measure = measure_of(record, terms)
        if measure is None:
            continue
        if isinstance(record, CapacityRecord) and isinstance(terms, CapacityTerms):
            step = terms.billed_increment_s
            quantity = -(-record.replica_seconds // step) * step
        elif isinstance(record, VerdictRecord) and not isinstance(terms, CapacityTerms):
            quantity = record.billable(terms.counted_errors)
        quantities[measure] = quantities.get(measure, 0) + quantity
    return dict(sorted(quantities.items()))


def amount_to_date(terms: Terms, measure: str, quantity: int, currency: str) -> Money:
    """The month-to-date cost of ``quantity``, rounded once, half to even."""
    if isinstance(terms, CapacityTerms):
        return rate(terms.per_hour(Priority(measure)), Decimal(quantity) / 3600, currency)
    return rate(terms.cost(quantity), Decimal(1), currency)


def unit_price(terms: Terms, measure: str, quantity: int) -> tuple[str, Decimal, str]:
    """Unit, price and what it is per; for tiers, the price of the tier the month has reached."""
    if isinstance(terms, CapacityTerms):
        return "replica-second", terms.per_hour(Priority(measure)), "replica-hour"
    if isinstance(terms, SubscriptionTerms):
        return "verdict", terms.overage_per_1000, "1000 verdicts"
    tier = next(t for t in terms.tiers if t.up_to is None or quantity <= t.up_to)
    return "verdict", tier.per_1000, "1000 verdicts"


def _gaps(
    records: Sequence[Record], start: datetime, window_s: int, expected: Collection[str], slice_name: str, currency: str
) -> list[RatedLine]:
    if 3600 % window_s:
        raise ValueError("the agents' window must divide the hour")
    covered = {(r.node, r.window_start) for r in records if isinstance(r, CapacityRecord) and r.window_start >= start}
    windows = [start + timedelta(seconds=s) for s in range(0, 3600, window_s)]
    lines = []
    for node in sorted({node for node, _ in covered} | set(expected)):
        silent = sum(window_s for window in windows if (node, window) not in covered)
        if silent:
            zero = Money.zero(currency)
            lines.append(RatedLine(slice_name, "gap", node, start, silent, "silent second", Decimal(0), "", zero))
    return lines
