"""Pricing and rating: proration, tiers, overage, price versions, idempotent keys, and sums to the cent."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.wire import ErrorCode
from control_plane.money import Money
from control_plane.pricing import (
    CapacityRecord,
    CapacityTerms,
    ConflictingUsage,
    PriceVersion,
    Product,
    Source,
    SubscriptionTerms,
    Tier,
    UnitKind,
    UsageTerms,
    VerdictRecord,
    price_for_period,
    price_in_force,
    rate_hour,
    rate_month,
    usage_key,
)
from control_plane.scheduler import Priority

MONTH = datetime(2026, 11, 1, tzinfo=UTC)
CAP = Product(sku="q-l4", site="plant-north", hardware_class="quarter GPU, L4-class", unit=UnitKind.CAPACITY)
USE = Product(sku="v-l4", site="plant-north", hardware_class="quarter GPU, L4-class", unit=UnitKind.USAGE)
SUB = Product(sku="s-l4", site="plant-north", hardware_class="quarter GPU, L4-class", unit=UnitKind.SUBSCRIPTION)
CAP_TERMS = CapacityTerms(
    reserved_per_hour=Decimal("0.90"), burst_per_hour=Decimal("0.70"), bank_per_hour=Decimal("0.3333")
)
USE_TERMS = UsageTerms(
    tiers=(
        Tier(up_to=1000, per_1000=Decimal("4.20")),
        Tier(up_to=10_000, per_1000=Decimal("3.00")),
        Tier(up_to=None, per_1000=Decimal("1.1111")),
    )
)
SUB_TERMS = SubscriptionTerms(
    monthly_fee=Decimal("199.00"), replica_floor=1, included_verdicts=5000, overage_per_1000=Decimal("2.5")
)


def version(sku: str, terms: object, n: int = 1, since: date = date(2026, 1, 1)) -> PriceVersion:
    return PriceVersion.model_validate(
        {"sku": sku, "version": n, "effective_from": since, "currency": "EUR", "terms": terms}
    )


def cap(minute: int, seconds: int, priority: Priority = Priority.RESERVED, node: str = "n1") -> CapacityRecord:
    return CapacityRecord("s1", node, MONTH + timedelta(minutes=minute), seconds, priority)


def seen(minute: int, **counts: int) -> VerdictRecord:
    return VerdictRecord("s1", "line-a", MONTH + timedelta(minutes=minute), counts)


def amounts(lines: list, measure: str) -> int:
    return sum(line.amount.minor for line in lines if line.measure == measure)


def test_capacity_prorates_per_second_after_the_billed_increment() -> None:
    v = version("q-l4", CAP_TERMS)
    lines = rate_hour([cap(0, 61), cap(1, 60)], CAP, v, MONTH, slice_name="s1")
    (line,) = [x for x in lines if x.measure == "reserved"]
    assert (line.quantity, line.unit, line.price_per) == (180, "replica-second", "replica-hour")  # 61 s bills as 120
    assert line.amount == Money(4, "EUR")  # 0.90/h * 0.05 h = 4.5 cents, half to even: 4
    by_second = CapacityTerms.model_validate({**CAP_TERMS.model_dump(), "billed_increment_s": 1})
    exact = rate_hour([cap(0, 61)], CAP, version("q-l4", by_second), MONTH, slice_name="s1")
    assert [x.quantity for x in exact if x.measure == "reserved"] == [61]


def test_bank_must_be_cheaper_and_floats_are_refused() -> None:
    with pytest.raises(ValidationError, match="bank"):
        CapacityTerms(reserved_per_hour=Decimal(1), burst_per_hour=Decimal(1), bank_per_hour=Decimal(1))
    with pytest.raises(ValidationError, match="float"):
        CapacityTerms.model_validate({"reserved_per_hour": 0.9, "burst_per_hour": "0.7", "bank_per_hour": "0.1"})
    with pytest.raises(ValidationError):
        Tier.model_validate({"up_to": 10, "per_1000": "1", "discount": "0.1"})  # extra fields refused
    with pytest.raises(TypeError):
        cap(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        seen(0, **{"pass": 2.0})  # type: ignore[arg-type]


@given(st.integers(0, 50_000), st.integers(0, 50_000))
def test_tiers_are_monotone(a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert USE_TERMS.cost(low) <= USE_TERMS.cost(high)


def test_tiers_are_exact_at_their_boundaries() -> None:
    assert USE_TERMS.cost(1000) == Decimal("4.20")
    assert USE_TERMS.cost(1001) == Decimal("4.20") + Decimal("0.003")
    assert USE_TERMS.cost(10_000) == Decimal("4.20") + Decimal(27)
    assert USE_TERMS.cost(11_000) == Decimal("31.20") + Decimal("1.1111")
    with pytest.raises(ValidationError):
        UsageTerms(tiers=(Tier(up_to=10, per_1000=Decimal(1)), Tier(up_to=5, per_1000=Decimal(1))))


def test_subscription_charges_the_fee_once_and_overage_beyond_the_included_verdicts() -> None:
    v = version("s-l4", SUB_TERMS)
    records = [seen(0, **{"pass": 4000}), seen(61, **{"pass": 1500, "fail": 500})]
    first = rate_hour(records, SUB, v, MONTH, slice_name="s1")
    second = rate_hour(records, SUB, v, MONTH + timedelta(hours=1), slice_name="s1")
    assert amounts(first, "subscription_fee") == 19900 and amounts(second, "subscription_fee") == 0
    assert amounts(first, "overage") == 0
    assert amounts(second, "overage") == 250  # 1,000 over the 5,000 included at 2.50 per 1,000


def test_robot_errors_count_and_internal_errors_do_not() -> None:
    v = version("v-l4", USE_TERMS)
    record = seen(0, **{"pass": 10, "fail": 5, "bad_image": 3, "rate_limited": 2, "internal": 7})
    (line,) = rate_hour([record], USE, v, MONTH, slice_name="s1")
    assert line.quantity == 20
    strict = UsageTerms(tiers=USE_TERMS.tiers, counted_errors=frozenset())
    (line,) = rate_hour([record], USE, version("v-l4", strict), MONTH, slice_name="s1")
    assert line.quantity == 15
    assert ErrorCode.INTERNAL not in USE_TERMS.counted_errors


def test_price_versions_are_pinned_and_never_retroactive() -> None:
    v1 = version("q-l4", CAP_TERMS, 1, date(2026, 1, 1))
    v2 = version("q-l4", CAP_TERMS, 2, date(2026, 11, 15))
    assert price_in_force([v1, v2], date(2026, 11, 14)) == v1
    assert price_in_force([v2, v1], datetime(2026, 11, 15, 0, 30, tzinfo=UTC)) == v2
    assert price_for_period(v1, [v1, v2], date(2026, 11, 1)) == v1  # v2 starts mid-period: not this month
    assert price_for_period(v1, [v1, v2], date(2026, 12, 1)) == v2  # from the next period
    assert price_for_period(v2, [v1, v2], date(2026, 11, 1)) == v2  # bought under v2: v2 from the purchase
    assert price_for_period(v2, [v2], date(2026, 11, 1)) == v2  # a product first priced mid-month (was LookupError)
    with pytest.raises(LookupError):
        price_in_force([v2], date(2026, 11, 1))
    with pytest.raises(ValueError, match="1st"):
        price_for_period(v1, [v1, v2], date(2026, 11, 2))
    with pytest.raises(ValueError, match="several products"):
        price_in_force([v1, version("v-l4", USE_TERMS)], date(2026, 11, 1))


def test_usage_keys_are_deterministic_and_do_not_collide() -> None:
    at = datetime(2026, 11, 1, 9, tzinfo=UTC)
    assert usage_key(Source.AGENT, "s1", "n1", at) == "agent/s1/n1/2026-11-01T09:00:00Z"
    assert usage_key(Source.AGENT, "s1", "n1", at) == cap(540, 60).key
    assert usage_key(Source.AGENT, "a/b", "c", at) != usage_key(Source.AGENT, "a", "b/c", at)
    # Two windows starting within one second are two records (they collided, and one went unbilled).
    later = at + timedelta(milliseconds=400)
    assert usage_key(Source.INGRESS, "s1", "l1/r1", later) == "ingress/s1/l1%2Fr1/2026-11-01T09:00:00.400000Z"
    assert usage_key(Source.INGRESS, "s1", "l1/r1", later) != usage_key(Source.INGRESS, "s1", "l1/r1", at)
    with pytest.raises(ValueError, match="aware"):
        usage_key(Source.AGENT, "s1", "n1", datetime(2026, 11, 1))


def test_duplicates_and_reorders_rate_once_and_a_conflicting_repeat_is_refused() -> None:
    v = version("q-l4", CAP_TERMS)
    records = [cap(m, 60) for m in range(60)]
    once = rate_hour(records, CAP, v, MONTH, slice_name="s1")
    shuffled = records * 2
    random.Random(7).shuffle(shuffled)
    assert rate_hour(shuffled, CAP, v, MONTH, slice_name="s1") == once
    assert amounts(once, "reserved") == 90
    with pytest.raises(ConflictingUsage):
        rate_hour([cap(0, 60), cap(0, 30)], CAP, v, MONTH, slice_name="s1")
    with pytest.raises(ValueError, match="other slices"):
        rate_hour([cap(0, 60)], CAP, v, MONTH, slice_name="s2")


def test_late_records_are_billed_once_by_posting_differences() -> None:
    """The ledger's contract: re-rate from the late record's hour onward and post what changed."""
    v = version("v-l4", USE_TERMS)
    on_time = [seen(h * 60 + 5, **{"pass": 700}) for h in range(4)]
    late = [seen(70, **{"fail": 333}), seen(10, **{"bad_image": 1})]
    journal: list[tuple[int, str, int]] = []  # (hour, measure, amount posted): only appended to

    def post(known: list[VerdictRecord], hours: range) -> None:
        for hour in hours:
            for line in rate_hour(known, USE, v, MONTH + timedelta(hours=hour), slice_name="s1"):
                already = sum(a for h, m, a in journal if (h, m) == (hour, line.measure))
                if line.amount.minor != already:
                    journal.append((hour, line.measure, line.amount.minor - already))

    post(on_time, range(4))
    post(on_time + late + on_time[:2], range(0, 4))  # the late ones (and two repeats) arrive
    entries = len(journal)
    post(on_time + late, range(0, 4))  # a re-run posts nothing
    assert len(journal) == entries
    month = rate_month(on_time + late, USE, v, MONTH.date(), slice_name="s1")
    # 3,134 verdicts: 1,000 at 4.20 per 1,000 and 2,134 at 3.00 = 10.602 EUR, rounded once
    assert sum(a for _, _, a in journal) == month["verdicts"].minor == 1060


def test_a_silent_agent_is_a_gap_billed_as_nothing() -> None:
    v = version("q-l4", CAP_TERMS)
    records = [cap(m, 60) for m in range(60) if not 10 <= m < 20]
    lines = rate_hour(records, CAP, v, MONTH, slice_name="s1", expected_nodes=["n2"])
    gaps = {(x.subject, x.quantity) for x in lines if x.measure == "gap"}
    assert gaps == {("n1", 600), ("n2", 3600)}
    assert all(x.amount == Money.zero("EUR") for x in lines if x.measure == "gap")
    assert amounts(lines, "reserved") == 75  # 50 minutes at 0.90/h


capacity_records = st.lists(
    st.builds(
        lambda minute, seconds, priority, node: cap(minute, seconds, priority, node),
        st.integers(0, 6 * 60 - 1),
        st.integers(0, 400),
        st.sampled_from(list(Priority)),
        st.sampled_from(["n1", "n2"]),
    ),
    max_size=60,
    unique_by=lambda r: r.key,
)
verdict_records = st.lists(
    st.builds(
        lambda minute, passed, failed, bad, internal: seen(
            minute, **{"pass": passed, "fail": failed, "bad_image": bad, "internal": internal}
        ),
        st.integers(0, 6 * 60 - 1),
        *(st.integers(0, 3000) for _ in range(4)),
    ),
    max_size=40,
    unique_by=lambda r: r.key,
)


def _hours_sum(records: list, product: Product, v: PriceVersion) -> dict[str, int]:
    totals: dict[str, int] = {}
    for hour in range(6):
        for line in rate_hour(records, product, v, MONTH + timedelta(hours=hour), slice_name="s1"):
            totals[line.measure] = totals.get(line.measure, 0) + line.amount.minor
    return {measure: total for measure, total in totals.items() if measure != "gap"}


@settings(max_examples=60, deadline=None)
@given(capacity_records)
def test_capacity_hour_by_hour_equals_the_whole_month(records: list[CapacityRecord]) -> None:
    v = version("q-l4", CapacityTerms.model_validate({**CAP_TERMS.model_dump(), "billed_increment_s": 7}))
    month = {m: a.minor for m, a in rate_month(records, CAP, v, MONTH.date(), slice_name="s1").items()}
    assert {m: t for m, t in _hours_sum(records, CAP, v).items()} == month


@settings(max_examples=60, deadline=None)
@given(verdict_records, st.sampled_from([(USE, USE_TERMS), (SUB, SUB_TERMS)]))
def test_verdicts_hour_by_hour_equal_the_whole_month(records: list[VerdictRecord], priced: tuple) -> None:
    product, terms = priced
    v = version(product.sku, terms)
    month = {m: a.minor for m, a in rate_month(records, product, v, MONTH.date(), slice_name="s1").items()}
    assert _hours_sum(records, product, v) == month


@settings(max_examples=40, deadline=None)
@given(capacity_records, st.randoms(use_true_random=False))
def test_repeats_and_any_order_give_the_same_lines(records: list[CapacityRecord], rnd: random.Random) -> None:
    v = version("q-l4", CAP_TERMS)
    replayed = records + rnd.sample(records, len(records) // 2)
    rnd.shuffle(replayed)
    for hour in range(6):
        at = MONTH + timedelta(hours=hour)
        assert rate_hour(replayed, CAP, v, at, slice_name="s1") == rate_hour(records, CAP, v, at, slice_name="s1")
