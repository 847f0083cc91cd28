"""Property tests of the pure scheduler (Hypothesis, including a stateful test)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, time, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from control_plane.models import ScaleKind
from control_plane.placement import scale_kind
from control_plane.scheduler import (
    Event,
    EventKind,
    GpuSpec,
    NodeSpec,
    Placement,
    Priority,
    Residency,
    SliceDemand,
    Window,
    place,
)

MONDAY_NOON = datetime(2026, 11, 30, 12, 0)
NIGHTS = Window(frozenset(range(5)), time(20, 0), time(7, 0))  # weekdays 20:00-07:00


def test_windows_wrap_past_midnight() -> None:
    assert NIGHTS.contains(datetime(2026, 11, 30, 21, 0))  # Monday 21:00
    assert NIGHTS.contains(datetime(2026, 12, 1, 6, 59))  # Tuesday 06:59, from Monday's window
    assert not NIGHTS.contains(datetime(2026, 12, 1, 7, 0))
    assert NIGHTS.contains(datetime(2026, 12, 5, 3, 0))  # Saturday 03:00, from Friday's window
    assert not NIGHTS.contains(datetime(2026, 12, 6, 3, 0))  # Sunday 03:00: Saturday has no window
    node = NodeSpec(1, 8, 8000, contributed=True, windows=(NIGHTS,), holidays=frozenset({date(2026, 12, 25)}))
    assert node.eligible(datetime(2026, 12, 25, 12, 0)) and not node.eligible(MONDAY_NOON)


nodes_st = st.lists(
    st.builds(
        NodeSpec,
        node_id=st.integers(0, 10**6),
        cpus=st.sampled_from([2.0, 4.0, 8.0, 16.0]),
        memory_mb=st.sampled_from([4000, 8000, 32000]),
        gpus=st.lists(st.builds(GpuSpec, memory_mb=st.sampled_from([8000, 24000])), max_size=2).map(tuple),
        online=st.booleans(),
        contributed=st.booleans(),
        windows=st.just((NIGHTS,)),
    ),
    max_size=12,
    unique_by=lambda n: n.node_id,
)
demands_st = st.lists(
    st.builds(
        SliceDemand,
        slice_id=st.integers(0, 10**6),
        priority=st.sampled_from(list(Priority)),
        replicas=st.integers(0, 6),
        cpus=st.sampled_from([0.5, 1.0, 2.0]),
        memory_mb=st.sampled_from([500, 1000, 4000]),
        gpu_fraction=st.sampled_from([0.0, 0.0, 0.25, 0.5]),
        gpu_memory_mb=st.sampled_from([0, 2000]),
    ),
    max_size=10,
    unique_by=lambda d: d.slice_id,
)
moments_st = st.datetimes(min_value=datetime(2026, 11, 30), max_value=datetime(2026, 12, 7))


def check(nodes: list[NodeSpec], demands: list[SliceDemand], result: Placement, now: datetime) -> None:
    """What must hold for any placement."""
    by_id = {n.node_id: n for n in nodes}
    used: dict[int, list[float]] = {n.node_id: [0.0, 0.0, 0.0] for n in nodes}
    for demand in demands:
        assigned = result.assignments[demand.slice_id]
        assert len(assigned) + result.unplaced.get(demand.slice_id, 0) == demand.replicas
        for node_id in assigned:
            node = by_id[node_id]
            assert node.eligible(now), f"replica on ineligible node {node_id}"
            if demand.priority is Priority.RESERVED:
                assert not node.contributed, "reserved capacity on a contributed node"
            if demand.priority is Priority.BANK:
                assert node.contributed, "bank replica outside the compute bank"
            used[node_id][0] += demand.cpus
            used[node_id][1] += demand.memory_mb
            used[node_id][2] += demand.gpu_fraction
    for node_id, (cpus, memory, gpus) in used.items():
        node = by_id[node_id]
        assert cpus <= node.cpus + 1e-6 and memory <= node.memory_mb and gpus <= len(node.gpus) + 1e-6


def reserved_fit_guaranteed(nodes: list[NodeSpec], demands: list[SliceDemand], now: datetime) -> bool:
    """A sufficient condition for placing every reserved replica: enough room for the largest one, N times."""
    reserved = [d for d in demands if d.priority is Priority.RESERVED and d.replicas]
    if not reserved:
        return True
    big_cpu = max(d.cpus for d in reserved)
    big_mem = max(d.memory_mb for d in reserved)
    big_gpu = max(d.gpu_fraction for d in reserved)
    big_gmem = max(d.gpu_memory_mb for d in reserved)
    slots = 0
    for node in nodes:
        if not node.eligible(now) or node.contributed:
            continue
        per_node = min(math.floor(node.cpus / big_cpu), node.memory_mb // big_mem)
        if big_gpu > 0:
            per_gpu = [
                min(math.floor(1 / big_gpu + 1e-9), g.memory_mb // big_gmem if big_gmem else 10**9) for g in node.gpus
            ]
            per_node = min(per_node, sum(per_gpu))
        slots += per_node
    return slots >= sum(d.replicas for d in reserved)


@settings(max_examples=300, deadline=None)
@given(nodes=nodes_st, demands=demands_st, now=moments_st, seed=st.integers(0, 1000))
def test_placement_is_valid_deterministic_and_stable(
    nodes: list[NodeSpec], demands: list[SliceDemand], now: datetime, seed: int
) -> None:
    result = place(nodes, demands, now=now)
    check(nodes, demands, result, now)
    if reserved_fit_guaranteed(nodes, demands, now):
        assert not result.alerts, result.alerts
    # Same input in another order: the same placement.
    shuffled_nodes, shuffled_demands = nodes[:], demands[:]
    random.Random(seed).shuffle(shuffled_nodes)
    random.Random(seed).shuffle(shuffled_demands)
    again = place(shuffled_nodes, shuffled_demands, now=now)
    assert {k: sorted(v) for k, v in again.assignments.items()} == {k: sorted(v) for k, v in result.assignments.items()}
    # Nothing changed: re-placing keeps every replica where it is.
    stable = place(nodes, demands, result.assignments, now=now)
    assert {k: Counter(v) for k, v in stable.assignments.items()} == {
        k: Counter(v) for k, v in result.assignments.items()
    }
    assert not [e for e in stable.events if e.kind in ("moved", "preempted", "placed")]


def test_reserved_preempts_burst_and_bank_goes_at_window_end() -> None:
    own = NodeSpec(1, cpus=4, memory_mb=8000)
    lab = NodeSpec(2, cpus=4, memory_mb=8000, contributed=True, windows=(NIGHTS,))
    night = datetime(2026, 11, 30, 22, 0)
    burst = SliceDemand(10, Priority.BURST, replicas=4)
    bank = SliceDemand(20, Priority.BANK, replicas=2)
    first = place([own, lab], [burst, bank], now=night)
    assert sorted(first.assignments[10]) == [1, 1, 2, 2] and first.assignments[20] == [2, 2]
    reserved = SliceDemand(5, Priority.RESERVED, replicas=3)
    second = place([own, lab], [burst, bank, reserved], first.assignments, now=night)
    assert second.assignments[5] == [1, 1, 1]
    assert [e.kind for e in second.events if e.slice_id == 10 and e.node_id == 1] == ["preempted"]
    morning = place([own, lab], [burst, bank, reserved], second.assignments, now=night + timedelta(hours=10))
    assert morning.assignments[20] == [] and morning.unplaced[20] == 2  # the lab wants its GPUs back
    assert all(node == 1 for node in morning.assignments[10])


def test_a_lost_node_is_a_drain_and_lost_room_a_preemption_whatever_the_reasons_say() -> None:
    own, other = NodeSpec(1, cpus=4, memory_mb=8000), NodeSpec(2, cpus=4, memory_mb=8000)
    burst = SliceDemand(10, Priority.BURST, replicas=2)
    first = place([own, other], [burst], now=MONDAY_NOON)
    offline = NodeSpec(2, cpus=4, memory_mb=8000, online=False)
    lost_node = place([own, offline], [burst], first.assignments, now=MONDAY_NOON)
    assert [e.kind for e in lost_node.events if e.kind is not EventKind.PLACED] == [EventKind.MOVED]
    lent = NodeSpec(2, cpus=4, memory_mb=8000, contributed=True)  # reserved replicas may not stay on it
    reserved = SliceDemand(10, Priority.RESERVED, replicas=2)
    closed = place([own, lent], [reserved], first.assignments, now=MONDAY_NOON)
    assert [e.kind for e in closed.events if e.slice_id == 10 and e.node_id == 2] == [EventKind.MOVED]
    small = [NodeSpec(1, cpus=1, memory_mb=1024)]
    crowded = place(small, [SliceDemand(5, Priority.RESERVED, replicas=1), burst], {10: [1]}, now=MONDAY_NOON)
    assert [e.kind for e in crowded.events if e.slice_id == 10] == [EventKind.PREEMPTED, EventKind.UNPLACED]
    for result, expected in ((lost_node, ScaleKind.DRAIN), (closed, ScaleKind.DRAIN), (crowded, ScaleKind.PREEMPTION)):
        assert scale_kind([e for e in result.events if e.slice_id == 10 and e.kind is not EventKind.PLACED]) is expected
    # The decision reads the kind, never the reason written for people.
    assert scale_kind([Event(EventKind.MOVED, 10, 2, "anything at all")]) is ScaleKind.DRAIN
    worded_like_a_drain = Event(EventKind.PREEMPTED, 10, 2, "node is no longer eligible (offline, draining)")
    assert scale_kind([worded_like_a_drain]) is ScaleKind.PREEMPTION


def test_reserved_that_cannot_fit_raises_an_alert() -> None:
    result = place([NodeSpec(1, 2, 4000)], [SliceDemand(1, Priority.RESERVED, replicas=3)], now=MONDAY_NOON)
    assert result.unplaced == {1: 1}
    assert [e.reason for e in result.alerts] == ["1 reserved replica(s) do not fit on this site's eligible nodes"]


def test_replicas_of_a_slice_spread_over_nodes() -> None:
    nodes = [NodeSpec(i, 8, 16000) for i in range(4)]
    result = place(nodes, [SliceDemand(1, Priority.RESERVED, replicas=4)], now=MONDAY_NOON)
    assert sorted(result.assignments[1]) == [0, 1, 2, 3]


ACME, GLOBEX = 7, 8  # tenants: a factory with its own edge server, a lab that lends its GPU server at night
NIGHT = datetime(2026, 11, 30, 22, 0)


def test_an_owners_slices_run_on_its_own_nodes_first() -> None:
    operator = NodeSpec(1, cpus=16, memory_mb=64000)  # roomier: where replicas would go if nobody owned nodes
    acme_edge = NodeSpec(2, cpus=2, memory_mb=8000, owner=ACME)
    acme = SliceDemand(10, Priority.RESERVED, replicas=3, tenant_id=ACME)
    other = SliceDemand(11, Priority.BURST, replicas=2, tenant_id=GLOBEX)
    result = place([operator, acme_edge], [acme, other], now=MONDAY_NOON)
    assert sorted(result.assignments[10]) == [1, 2, 2]  # its own node filled first, the rest on the operator's
    assert result.assignments[11] == [1, 1]  # nobody else's slice goes on acme's node


def test_another_owners_node_is_only_for_any_bank_slices_while_lent() -> None:
    lab = NodeSpec(3, cpus=8, memory_mb=32000, contributed=True, windows=(NIGHTS,), owner=GLOBEX)
    wanted = [
        SliceDemand(1, Priority.BANK, 1, tenant_id=ACME, residency=Residency.ANY_BANK),
        SliceDemand(2, Priority.BANK, 1, tenant_id=ACME),  # site: the operator's bank nodes only
        SliceDemand(3, Priority.BURST, 1, tenant_id=ACME, residency=Residency.ANY_BANK),  # not a bank slice
        SliceDemand(4, Priority.RESERVED, 1, tenant_id=GLOBEX, residency=Residency.OWN_NODES),  # the lab's own
    ]
    night = place([lab], wanted, now=NIGHT)
    assert {k: v for k, v in night.assignments.items() if v} == {1: [3], 4: [3]}
    day = place([lab], wanted, night.assignments, now=MONDAY_NOON)
    assert {k: v for k, v in day.assignments.items() if v} == {4: [3]}  # the owner keeps using it by day
    assert [e.kind for e in day.events if e.slice_id == 1] == [EventKind.MOVED, EventKind.UNPLACED]


def test_a_residency_rule_leaves_a_slice_short_with_an_event_never_on_a_forbidden_node() -> None:
    acme_edge = NodeSpec(2, cpus=2, memory_mb=8000, owner=ACME)
    lab = NodeSpec(3, cpus=32, memory_mb=64000, contributed=True, windows=(NIGHTS,), owner=GLOBEX)
    operator = NodeSpec(1, cpus=32, memory_mb=64000)
    own = SliceDemand(10, Priority.BANK, replicas=5, tenant_id=ACME, residency=Residency.OWN_NODES)
    result = place([operator, acme_edge, lab], [own], now=NIGHT)
    assert result.assignments[10] == [2, 2] and result.unplaced[10] == 3
    [event] = [e for e in result.events if e.kind is EventKind.RESIDENCY]
    assert event.slice_id == 10 and event.reason.startswith("residency own_nodes: 3 replica(s) do not fit")
    operator_only = SliceDemand(11, Priority.RESERVED, 2, tenant_id=ACME, residency=Residency.OPERATOR_NODES)
    result = place([acme_edge], [operator_only], now=NIGHT)
    assert result.assignments[11] == [] and [e.kind for e in result.events] == [EventKind.ALERT, EventKind.RESIDENCY]
    # No room anywhere the class could go: the site is short, not the rule; no residency event.
    tiny = place([NodeSpec(2, cpus=1, memory_mb=512, owner=ACME)], [own], now=NIGHT)
    assert tiny.unplaced[10] == 5 and not [e for e in tiny.events if e.kind is EventKind.RESIDENCY]


TENANTS = [ACME, GLOBEX, 9]
owned_nodes_st = st.lists(
    st.builds(
        NodeSpec,
        node_id=st.integers(0, 10**6),
        cpus=st.sampled_from([2.0, 4.0, 8.0]),
        memory_mb=st.sampled_from([4000, 8000, 32000]),
        gpus=st.lists(st.builds(GpuSpec, memory_mb=st.just(24000)), max_size=2).map(tuple),
        online=st.booleans(),
        contributed=st.booleans(),
        windows=st.just((NIGHTS,)),
        owner=st.sampled_from([None, *TENANTS]),
    ),
    max_size=12,
    unique_by=lambda n: n.node_id,
)
ruled_demands_st = st.lists(
    st.builds(
        SliceDemand,
        slice_id=st.integers(0, 10**6),
        priority=st.sampled_from(list(Priority)),
        replicas=st.integers(0, 6),
        cpus=st.sampled_from([0.5, 1.0, 2.0]),
        memory_mb=st.sampled_from([500, 1000, 4000]),
        gpu_fraction=st.sampled_from([0.0, 0.0, 0.5]),
        tenant_id=st.sampled_from(TENANTS),
        residency=st.sampled_from(list(Residency)),
    ),
    max_size=10,
    unique_by=lambda d: d.slice_id,
)


def breaks_a_rule(node: NodeSpec, demand: SliceDemand, now: datetime) -> str | None:
    """Why a replica of ``demand`` must not be on ``node`` (written from the rules, not from the scheduler)."""
    lent = node.online and node.contributed and any(w.contains(now) for w in node.windows)
    if not node.online:
        return "offline node"
    if demand.residency is Residency.OWN_NODES and node.owner != demand.tenant_id:
        return "own_nodes slice on a node its tenant does not own"
    if demand.residency is Residency.OPERATOR_NODES and node.owner is not None:
        return "operator_nodes slice on a tenant's node"
    if node.owner == demand.tenant_id:
        return None  # a tenant's own hardware runs its slices whenever it is up
    if node.owner is not None and not (lent and demand.priority is Priority.BANK):
        return "another owner's node outside its lending windows or for a non-bank slice"
    if node.owner is not None and demand.residency is not Residency.ANY_BANK:
        return "another owner's node for a slice that is not any_bank"
    if node.owner is None and demand.priority is Priority.RESERVED and node.contributed:
        return "reserved replica on a contributed node"
    if node.owner is None and node.contributed and not lent:
        return "contributed node outside its windows"
    if node.owner is None and demand.priority is Priority.BANK and not node.contributed:
        return "bank replica outside the compute bank"
    return None


@settings(max_examples=300, deadline=None)
@given(nodes=owned_nodes_st, demands=ruled_demands_st, now=moments_st)
def test_no_placement_ever_breaks_a_residency_or_ownership_rule(
    nodes: list[NodeSpec], demands: list[SliceDemand], now: datetime
) -> None:
    by_id = {n.node_id: n for n in nodes}
    result = place(nodes, demands, now=now)
    used: dict[int, float] = {}
    for demand in demands:
        assigned = result.assignments[demand.slice_id]
        assert len(assigned) + result.unplaced.get(demand.slice_id, 0) == demand.replicas
        for node_id in assigned:
            assert breaks_a_rule(by_id[node_id], demand, now) is None, (breaks_a_rule(by_id[node_id], demand, now),)
            used[node_id] = used.get(node_id, 0.0) + demand.cpus
    assert all(cpus <= by_id[n].cpus + 1e-6 for n, cpus in used.items())
    for event in result.events:
        if event.kind is EventKind.RESIDENCY:
            demand = next(d for d in demands if d.slice_id == event.slice_id)
            assert demand.residency is not Residency.ANY_BANK
            assert result.unplaced[demand.slice_id] > 0
    # Re-placing with nothing changed moves nothing, rules included.
    stable = place(nodes, demands, result.assignments, now=now)
    assert {k: Counter(v) for k, v in stable.assignments.items()} == {
        k: Counter(v) for k, v in result.assignments.items()
    }


@settings(max_examples=200, deadline=None)
@given(nodes=owned_nodes_st, demand=ruled_demands_st.filter(bool).map(lambda ds: ds[0]), now=moments_st)
def test_a_slice_kept_short_by_its_rule_says_so(nodes: list[NodeSpec], demand: SliceDemand, now: datetime) -> None:
    """Alone on a site: if it is short while an empty node its class could use but its rule forbids would
    hold a replica, the placement carries a residency event (the user learns why, not just that)."""
    result = place(nodes, [demand], now=now)
    if not result.unplaced.get(demand.slice_id):
        return
    widest = Residency.ANY_BANK if demand.priority is Priority.BANK else Residency.SITE
    wider = SliceDemand(demand.slice_id, demand.priority, 1, demand.cpus, demand.memory_mb, demand.gpu_fraction,
                        demand.gpu_memory_mb, demand.tenant_id, widest)  # fmt: skip
    fits_empty = [n for n in nodes if n.cpus >= demand.cpus and n.memory_mb >= demand.memory_mb
                  and (demand.gpu_fraction == 0 or n.gpus)]  # fmt: skip
    forbidden_with_room = [n for n in fits_empty if breaks_a_rule(n, demand, now) and not breaks_a_rule(n, wider, now)]
    kinds = [e.kind for e in result.events]
    assert (EventKind.RESIDENCY in kinds) is bool(forbidden_with_room), (forbidden_with_room, result.events)


class SiteLifecycle(RuleBasedStateMachine):
    """Nodes join, fail and come back, slices come and scale, time passes; placement follows."""

    @initialize()
    def start(self) -> None:
        self.nodes: dict[int, NodeSpec] = {}
        self.demands: dict[int, SliceDemand] = {}
        self.now = MONDAY_NOON
        self.placement = Placement()
        self.next_id = 0

    def _replace(self) -> None:
        previous = self.placement
        nodes, demands = list(self.nodes.values()), list(self.demands.values())
        self.placement = place(nodes, demands, previous.assignments, now=self.now)
        check(nodes, demands, self.placement, self.now)
        if reserved_fit_guaranteed(nodes, demands, self.now):
            assert not self.placement.alerts

    @rule(cpus=st.sampled_from([4.0, 8.0]), contributed=st.booleans(), gpus=st.integers(0, 2))
    def add_node(self, cpus: float, contributed: bool, gpus: int) -> None:
        self.next_id += 1
        self.nodes[self.next_id] = NodeSpec(self.next_id, cpus, 16000, (GpuSpec(24000),) * gpus,
                                            contributed=contributed, windows=(NIGHTS,))  # fmt: skip
        self._replace()

    @rule(data=st.data(), online=st.booleans())
    def node_goes_or_returns(self, data: st.DataObject, online: bool) -> None:
        if self.nodes:
            node_id = data.draw(st.sampled_from(sorted(self.nodes)))
            node = self.nodes[node_id]
            self.nodes[node_id] = NodeSpec(node.node_id, node.cpus, node.memory_mb, node.gpus, online,
                                           node.contributed, node.windows)  # fmt: skip
            self._replace()

    @rule(priority=st.sampled_from(list(Priority)), replicas=st.integers(0, 5), gpu=st.sampled_from([0.0, 0.5]))
    def add_slice(self, priority: Priority, replicas: int, gpu: float) -> None:
        self.next_id += 1
        self.demands[self.next_id] = SliceDemand(self.next_id, priority, replicas, cpus=1.0, memory_mb=2000,
                                                 gpu_fraction=gpu)  # fmt: skip
        self._replace()

    @rule(hours=st.integers(1, 30))
    def time_passes(self, hours: int) -> None:
        self.now += timedelta(hours=hours)
        self._replace()

    @invariant()
    def deterministic(self) -> None:
        if self.nodes:
            again = place(list(self.nodes.values()), list(self.demands.values()), now=self.now)
            assert again.assignments == place(list(self.nodes.values()), list(self.demands.values()),
                                              now=self.now).assignments  # fmt: skip


TestSiteLifecycle = SiteLifecycle.TestCase
TestSiteLifecycle.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_a_reclaimed_node_keeps_its_replicas_until_the_notice_ends_while_replacements_start_elsewhere() -> None:
    operator, lab = NodeSpec(1, cpus=4, memory_mb=8000), NodeSpec(2, cpus=4, memory_mb=8000)
    reserved = SliceDemand(10, Priority.RESERVED, replicas=2)
    first = place([operator, lab], [reserved], now=MONDAY_NOON)
    assert sorted(first.assignments[10]) == [1, 2]
    until = MONDAY_NOON + timedelta(minutes=5)
    reclaimed = replace(lab, held_until=until)
    during = place([operator, reclaimed], [reserved], first.assignments, now=MONDAY_NOON)
    assert sorted(during.assignments[10]) == [1, 1, 2]  # the replacement runs beside the leaving replica
    assert [e.kind for e in during.events if e.node_id == 2] == [EventKind.MOVED, EventKind.NOTICE]
    still = place([operator, reclaimed], [reserved], during.assignments, now=until - timedelta(seconds=1))
    assert sorted(still.assignments[10]) == [1, 1, 2]  # stable while the notice runs
    after = place([operator, reclaimed], [reserved], still.assignments, now=until)
    assert after.assignments[10] == [1, 1] and not [e for e in after.events if e.kind is EventKind.PLACED]
    # No room elsewhere: the replica stays for the notice, the alert says so now, and then it goes.
    alone = place([reclaimed], [SliceDemand(10, Priority.RESERVED, replicas=1)], {10: [2]}, now=MONDAY_NOON)
    assert alone.assignments[10] == [2] and [e.kind for e in alone.alerts] == [EventKind.ALERT]
    gone = place([reclaimed], [SliceDemand(10, Priority.RESERVED, replicas=1)], {10: [2]}, now=until)
    assert gone.assignments[10] == [] and gone.unplaced[10] == 1


def test_bank_replicas_leave_a_lent_node_from_its_notice_before_the_window_ends() -> None:
    lab = NodeSpec(2, cpus=4, memory_mb=8000, contributed=True, windows=(NIGHTS,), notice=timedelta(minutes=10))
    other = NodeSpec(3, cpus=4, memory_mb=8000, contributed=True)  # lent always (no windows: holidays only)
    other = replace(other, holidays=frozenset({date(2026, 12, 1)}))
    bank = SliceDemand(20, Priority.BANK, replicas=1)
    night = place([lab], [bank], now=datetime(2026, 12, 1, 3, 0))
    assert night.assignments[20] == [2]
    assert lab.leaving_until(datetime(2026, 12, 1, 6, 50)) == datetime(2026, 12, 1, 7, 0)
    assert lab.leaving_until(datetime(2026, 12, 1, 6, 49)) is None
    closing = place([lab, other], [bank], night.assignments, now=datetime(2026, 12, 1, 6, 55))
    assert sorted(closing.assignments[20]) == [2, 3]
    morning = place([lab, other], [bank], closing.assignments, now=datetime(2026, 12, 1, 7, 0))
    assert morning.assignments[20] == [3]


@settings(max_examples=200, deadline=None)
@given(nodes=nodes_st, demands=demands_st, now=moments_st, data=st.data())
def test_with_notice_no_slice_loses_a_replica_before_the_notice_ends_unless_preempted(
    nodes: list[NodeSpec], demands: list[SliceDemand], now: datetime, data: st.DataObject
) -> None:
    leaving = data.draw(st.sets(st.sampled_from([n.node_id for n in nodes])) if nodes else st.just(set()))
    notice_holds(nodes, demands, now, leaving)


def test_a_window_that_closes_during_a_notice_takes_its_replicas_with_it() -> None:
    """Hypothesis found (CI, 1 December): a burst replica on a lent node at 06:50 was gone at 07:00, when the
    node's window closed; the property called that "something moved". It is the window's doing."""
    lab = NodeSpec(1, cpus=2.0, memory_mb=4000, contributed=True, windows=(NIGHTS,))
    burst = SliceDemand(0, Priority.BURST, replicas=1, cpus=0.5, memory_mb=500)
    notice_holds([lab], [burst], datetime(2026, 12, 1, 6, 50), set())


def notice_holds(nodes: list[NodeSpec], demands: list[SliceDemand], now: datetime, leaving: set[int]) -> None:
    """Nodes ``leaving`` get 10 minutes' notice at ``now``: what must hold during it and after."""
    before = place(nodes, demands, now=now)
    until = now + timedelta(minutes=10)
    reclaimed = [replace(n, held_until=until) if n.node_id in leaving else n for n in nodes]
    during = place(reclaimed, demands, before.assignments, now=now)
    offline = [replace(n, online=False) if n.node_id in leaving else n for n in nodes]
    for demand in demands:
        assigned = during.assignments[demand.slice_id]
        held = [n for n in assigned if n in leaving]
        assert Counter(held) == Counter(n for n in before.assignments[demand.slice_id] if n in leaving)
        preempted = any(e.kind is EventKind.PREEMPTED and e.slice_id == demand.slice_id for e in during.events)
        if not preempted:
            assert len(assigned) >= len(before.assignments[demand.slice_id])
    target = Placement({k: [n for n in v if n not in leaving] for k, v in during.assignments.items()},
                       during.unplaced)  # fmt: skip
    check(offline, demands, target, now)  # what runs besides the held replicas is a valid placement without them
    after = place(reclaimed, demands, during.assignments, now=until)
    # A lent node whose window closed meanwhile holds no bank or burst replicas at ``until`` (that is the
    # window's doing, not the notice's: hypothesis found one closing at 07:00 in CI, 1 December).
    closed = {n.node_id for n in nodes if n.eligible(now) and not n.eligible(until)}
    for demand in demands:
        assert not set(after.assignments[demand.slice_id]) & leaving
        kept = Counter(n for n in during.assignments[demand.slice_id] if n not in leaving | closed)
        now_placed = Counter(after.assignments[demand.slice_id])
        assert kept <= now_placed  # replacements stay where they are; nothing moves
        # Replicas are added only where the slice was short: a window that opened meanwhile may hold them.
        assert now_placed == kept or kept.total() < demand.replicas


def test_a_window_that_opens_during_a_notice_may_place_what_was_short() -> None:
    """Hypothesis found (CI, 30 November): a slice short of replicas at 19:50 got one at 20:00, when a lab's
    window opened; the property above called that "something new moved". The scheduler was right: nothing that
    ran moved, a replica was added where the slice was short. The property now says exactly that."""
    evenings = Window(frozenset(range(7)), time(20, 0), time(23, 0))
    lab = NodeSpec(1, cpus=2.0, memory_mb=4000, contributed=True, windows=(evenings,))
    bank = SliceDemand(1, Priority.BANK, replicas=1, cpus=0.5, memory_mb=500)
    at = datetime(2026, 11, 30, 19, 50)
    during = place([lab], [bank], now=at)
    after = place([lab], [bank], during.assignments, now=at + timedelta(minutes=10))
    assert (during.assignments[1], after.assignments[1]) == ([], [1])


def test_an_owner_needing_its_lent_node_gives_the_banks_replicas_their_notice() -> None:
    lab = NodeSpec(2, cpus=2, memory_mb=8000, contributed=True, windows=(NIGHTS,), owner=GLOBEX)
    other = NodeSpec(3, cpus=4, memory_mb=8000, contributed=True, windows=(NIGHTS,), owner=9)
    bank = SliceDemand(10, Priority.BANK, replicas=2, tenant_id=ACME, residency=Residency.ANY_BANK)
    first = place([lab], [bank], now=NIGHT)
    assert first.assignments[10] == [2, 2]
    own = SliceDemand(20, Priority.RESERVED, replicas=2, tenant_id=GLOBEX, residency=Residency.OWN_NODES)
    at_once = place([lab, other], [bank, own], first.assignments, now=NIGHT)  # no notice: preempted now
    assert at_once.assignments[20] == [2, 2] and sorted(at_once.assignments[10]) == [3, 3]
    until = NIGHT + timedelta(minutes=10)
    taking_back = replace(lab, bank_until=until)
    during = place([taking_back, other], [bank, own], first.assignments, now=NIGHT)
    assert sorted(during.assignments[10]) == [2, 2, 3, 3]  # kept, with their replacements running beside them
    assert during.assignments[20] == [] and during.unplaced[20] == 2  # the owner waits for its notice
    assert {e.node_id for e in during.events if e.kind is EventKind.NOTICE} == {2}
    after = place([taking_back, other], [bank, own], during.assignments, now=until)
    assert after.assignments[20] == [2, 2] and sorted(after.assignments[10]) == [3, 3]
