"""Cross-site overflow (``scheduler.overflow``): regions, the latency budget, residency and room, as examples
and as properties over random sites, slices and round trips."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.scheduler import (
    EventKind,
    NodeSpec,
    OverflowDemand,
    Priority,
    Residency,
    SiteCapacity,
    SliceDemand,
    overflow,
)

NOW = datetime(2026, 12, 1, 10, 0)
HOME = 1


def _site(site_id: int, region: str, *cpus: float, owner: int | None = None,
          native: tuple[tuple[SliceDemand, tuple[int, ...]], ...] = ()) -> SiteCapacity:  # fmt: skip
    nodes = tuple(NodeSpec(site_id * 100 + i, c, 64_000, owner=owner) for i, c in enumerate(cpus))
    return SiteCapacity(site_id, region, nodes, native)


def _short(slice_id: int = 7, replicas: int = 2, *, priority: Priority = Priority.BURST, regions: str = "east",
           p99: float = 30.0, budget: float = 200.0, tenant: int = 5,
           residency: Residency = Residency.SITE) -> OverflowDemand:  # fmt: skip
    demand = SliceDemand(slice_id, priority, replicas, cpus=1.0, tenant_id=tenant, residency=residency)
    return OverflowDemand(demand, HOME, frozenset(regions.split(",")) if regions else frozenset(), p99, budget)


def test_a_short_burst_slice_goes_to_the_nearest_site_in_its_regions() -> None:
    sites = [_site(HOME, "west", 1.0), _site(2, "east", 4.0), _site(3, "east", 4.0), _site(4, "south", 8.0)]
    rtt = {(2, HOME): 80.0, (3, HOME): 40.0, (4, HOME): 5.0}
    result = overflow([_short()], sites, rtt, now=NOW)
    assert result.assignments[7] == [300, 300]  # site 3 is nearer than 2; south is not allowed
    assert [e.kind for e in result.events] == [EventKind.OVERFLOW]
    assert "round trip 40 ms + p99 30 ms within the 200 ms budget" in result.events[0].reason


def test_a_round_trip_that_would_break_the_budget_sends_nothing_and_says_why() -> None:
    sites = [_site(HOME, "west", 1.0), _site(2, "east", 4.0)]
    result = overflow([_short(p99=150.0, budget=200.0)], sites, {(2, HOME): 60.0}, now=NOW)
    assert result.assignments[7] == []
    assert result.unplaced == {7: 2}
    latency = [e for e in result.events if e.kind is EventKind.LATENCY]
    assert len(latency) == 1
    assert "round trip 60 ms + p99 150 ms would exceed the 200 ms budget" in latency[0].reason


def test_reserved_slices_an_unknown_round_trip_and_no_regions_stay_home() -> None:
    sites = [_site(HOME, "west", 1.0), _site(2, "east", 4.0)]
    demands = [_short(1, priority=Priority.RESERVED), _short(2, regions=""), _short(3)]
    result = overflow(demands, sites, {}, now=NOW)  # no round trip known to site 2
    assert all(not result.assignments[s] for s in (1, 2, 3))


def test_remote_replicas_use_only_the_room_the_sites_own_slices_leave_and_stay_where_they_run() -> None:
    native = SliceDemand(1, Priority.RESERVED, 3, cpus=1.0, tenant_id=9)
    sites = [_site(HOME, "west", 1.0), _site(2, "east", 2.0, 2.0, native=((native, (200, 200, 201)),))]
    rtt = {(2, HOME): 20.0}
    first = overflow([_short(replicas=3)], sites, rtt, now=NOW)
    assert first.assignments[7] == [201]  # 4 CPUs, 3 taken by the site's own reserved slice
    assert first.unplaced == {7: 2}
    freed = [_site(HOME, "west", 1.0), _site(2, "east", 2.0, 2.0)]
    again = overflow([_short(replicas=3)], freed, rtt, {7: first.assignments[7]}, now=NOW)
    assert again.assignments[7][0] == 201  # the running replica stays; the rest join it
    assert Counter(again.assignments[7]) == Counter({201: 2, 200: 1}) or Counter(again.assignments[7]) == Counter(
        {201: 1, 200: 2}
    )


def test_residency_holds_on_the_remote_site_too() -> None:
    sites = [_site(HOME, "west", 1.0), _site(2, "east", 4.0, owner=8), _site(3, "east", 4.0, owner=5)]
    rtt = {(2, HOME): 10.0, (3, HOME): 90.0}
    own = overflow([_short(residency=Residency.OWN_NODES)], sites, rtt, now=NOW)
    assert own.assignments[7] == [300, 300]  # only its tenant's (5) nodes, though site 2 is nearer
    operator = overflow([_short(residency=Residency.OPERATOR_NODES)], sites, rtt, now=NOW)
    assert operator.assignments[7] == []


sites_strategy = st.lists(
    st.tuples(
        st.sampled_from(["west", "east", "north"]),
        st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=1, max_size=3),
        st.one_of(st.none(), st.floats(0, 300)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(
    sites=sites_strategy,
    shorts=st.lists(
        st.tuples(
            st.integers(1, 4),
            st.sampled_from(list(Priority)),
            st.sets(st.sampled_from(["west", "east"])),
            st.floats(0, 300),
            st.floats(1, 400),
            st.sampled_from(list(Residency)),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_overflow_never_breaks_a_region_a_budget_a_class_or_a_nodes_room(sites: list, shorts: list) -> None:
    capacities = [_site(HOME, "west", 1.0)] + [_site(i + 2, r, *cpus) for i, (r, cpus, _) in enumerate(sites)]
    rtt = {(i + 2, HOME): t for i, (_, _, t) in enumerate(sites) if t is not None}
    demands = []
    for index, (replicas, priority, regions, p99, budget, residency) in enumerate(shorts):
        demand = SliceDemand(index + 1, priority, replicas, cpus=1.0, tenant_id=5, residency=residency)
        demands.append(OverflowDemand(demand, HOME, frozenset(regions), p99, budget))
    result = overflow(demands, capacities, rtt, now=NOW)
    site_of = {n.node_id: s for s in capacities for n in s.nodes}
    used: Counter[int] = Counter()
    for item in demands:
        placed = result.assignments[item.demand.slice_id]
        assert len(placed) <= item.demand.replicas
        for node_id in placed:
            site = site_of[node_id]
            assert site.site_id != HOME
            assert site.region in item.regions
            assert item.demand.priority is not Priority.RESERVED
            assert rtt[(site.site_id, HOME)] + item.p99_ms <= item.budget_ms
            assert item.demand.residency not in (Residency.OWN_NODES,)  # no node here is the tenant's own
            used[node_id] += 1
    for node_id, count in used.items():
        node = next(n for s in capacities for n in s.nodes if n.node_id == node_id)
        assert count <= node.cpus  # one CPU per replica
    # Placed again from where they run, nothing moves.
    again = overflow(demands, capacities, rtt, result.assignments, now=NOW)
    assert {k: sorted(v) for k, v in again.assignments.items()} == {k: sorted(v) for k, v in result.assignments.items()}
