"""Placement of slices' replicas onto a site's nodes. Pure: no database, no Ray, no clock.

Priority classes, placed in this order so a lower class never takes room a
higher one needs:

    reserved   guaranteed; only on the operator's own (not contributed) nodes; never over-committed
    burst      best effort in what reserved leaves free, on any eligible node
    bank       only on contributed nodes inside their availability windows; preempted first

A node is eligible when it is online and, if contributed, inside one of its
windows at ``now``. Drained, offline and removed nodes hold nothing.

Notice (preemption that loses nothing): a node its owner reclaims (draining,
``held_until`` in the future), a lent node whose window ends within its
``notice``, and a lent node whose owner's own slices need its room
(``bank_until``: other tenants' replicas only) take no new replicas of those
leaving but keep the ones they run until then, while their replacements are
placed elsewhere where room exists. The agent starts the
replacements at once and stops the old replicas (the ingress answers their
frames) only when the notice is over; without room elsewhere the slice drops to
what fits at that moment, and the ``NOTICE`` event says so beforehand.

Owners and residency: a node belongs to the operator (``owner`` None) or to a
tenant. A tenant's own slices may use its nodes at any time, whatever their
class, and go there first. Another tenant's node is usable only while it is
lent (contributed, inside a window) and only by ``bank`` slices whose
residency is ``any_bank``. Each slice's ``Residency`` narrows that further
(``own_nodes``: only its tenant's; ``operator_nodes``: only the operator's);
replicas the rule keeps off nodes that had room are reported as a
``RESIDENCY`` event, never placed there.

Overflow across sites (``overflow``): a ``burst`` or ``bank`` slice its home
site leaves short may run the rest on another site, in a region the slice
allows, when that site's measured round trip to the home broker plus the
slice's p99 stays within its lines' latency budget. Remote replicas take only
the room the remote site's own slices leave, nearest site first, and follow
the same residency and class rules there. Reserved capacity never leaves its site.

``place`` is incremental and deterministic: within each class, replicas stay
on the nodes they already run on when those are still eligible and the
capacity is still theirs; the rest go, one at a time in (slice id) order, to
the eligible node with the most free room (so a slice's replicas spread), ties
broken by node id. Anything that cannot be placed is reported, and every
change comes with an event: its ``EventKind`` for code to decide on, its reason
for people to read. A reserved replica that cannot be placed raises an alert for
operators.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum


class Priority(StrEnum):
    RESERVED = "reserved"
    BURST = "burst"
    BANK = "bank"


PRIORITY_ORDER = (Priority.RESERVED, Priority.BURST, Priority.BANK)


class Residency(StrEnum):
    """Where a slice's frames may be judged, whoever owns the hardware."""

    OWN_NODES = "own_nodes"  # only nodes its tenant owns
    OPERATOR_NODES = "operator_nodes"  # only the operator's nodes
    SITE = "site"  # any node of its site that its class may use, other tenants' excepted (the default)
    ANY_BANK = "any_bank"  # also other owners' nodes while they lend them (bank slices)


class EventKind(StrEnum):
    """What happened to a slice's replicas. Callers decide on the kind, never on the reason's wording."""

    PLACED = "placed"  # new replicas went to a node
    MOVED = "moved"  # the node can no longer hold them (offline, draining, outside its window, or closed to the class)
    PREEMPTED = "preempted"  # a higher-priority slice took their room on a node that is still eligible
    UNPLACED = "unplaced"  # burst or bank replicas that fit nowhere (best effort: no alert)
    ALERT = "alert"  # reserved replicas that fit nowhere: operators must add capacity
    RESIDENCY = "residency"  # replicas unplaced while nodes the slice's residency forbids had room
    NOTICE = "notice"  # replicas kept on a leaving node until its notice ends (their replacement: MOVED + PLACED)
    OVERFLOW = "overflow"  # replicas placed on another site because the slice's home site is full
    LATENCY = "latency"  # another site had room, but its round trip plus the slice's p99 would break the budget


@dataclass(frozen=True)
class Window:
    """Availability of a contributed node: ``days`` (0 = Monday) from ``start`` to ``end``.

    ``end <= start`` wraps past midnight (20:00-07:00 on a Friday lasts into Saturday).
    """

    days: frozenset[int]
    start: time
    end: time

    def contains(self, now: datetime) -> bool:
        moment = now.time()
        if self.start < self.end:
            return now.weekday() in self.days and self.start <= moment < self.end
        started_today = now.weekday() in self.days and moment >= self.start
        started_yesterday = (now - timedelta(days=1)).weekday() in self.days and moment < self.end
        return started_today or started_yesterday


@dataclass(frozen=True)
class GpuSpec:
    memory_mb: int


@dataclass(frozen=True)
class NodeSpec:
    """What the scheduler knows of a node."""

    node_id: int
    cpus: float
    memory_mb: int
    gpus: tuple[GpuSpec, ...] = ()
    online: bool = True  # False for offline, draining, drained or removed
    contributed: bool = False
    windows: tuple[Window, ...] = ()
    holidays: frozenset[date] = frozenset()  # contributed nodes are available all day on these dates
    owner: int | None = None  # the tenant that owns it; None: the operator
    held_until: datetime | None = None  # draining: takes no new replicas, keeps the ones it has until then
    bank_until: datetime | None = None  # its owner needs the room: other tenants' replicas leave by then
    notice: timedelta = timedelta(0)  # how long before a window ends its bank replicas start to leave

    def lent(self, now: datetime) -> bool:
        """Online, contributed and inside a window (or on a holiday): the bank may use it now."""
        if not self.online or not self.contributed:
            return False
        return now.date() in self.holidays or any(w.contains(now) for w in self.windows)

    def eligible(self, now: datetime) -> bool:
        """Usable now by slices of the operator's classes (its owner's slices may use it whenever it is online)."""
        return self.online and (not self.contributed or self.lent(now))

    def leaving_until(self, now: datetime) -> datetime | None:
        """While the node is leaving with notice, the moment its replicas must be gone; else None.

        Draining: until ``held_until``. Lent: from ``notice`` before its window ends (looked up to the
        minute) until the end, when it no longer holds bank replicas anyway.
        """
        if self.held_until is not None:
            return self.held_until if now < self.held_until else None
        if not self.notice or not self.lent(now) or self.lent(now + self.notice):
            return None
        end = now + self.notice
        step = timedelta(minutes=1)
        while end - step > now and not self.lent(end - step):
            end -= step
        return end


@dataclass(frozen=True)
class SliceDemand:
    """How many replicas a slice wants and what each one needs."""

    slice_id: int
    priority: Priority
    replicas: int
    cpus: float = 1.0
    memory_mb: int = 1024
    gpu_fraction: float = 0.0  # of one GPU; 0 = CPU replica
    gpu_memory_mb: int = 0
    tenant_id: int | None = None  # whose slice: its own nodes come first
    residency: Residency = Residency.SITE


@dataclass(frozen=True)
class Event:
    """One change with its reason, for the dashboard and for operators."""

    kind: EventKind
    slice_id: int
    node_id: int | None
    reason: str


@dataclass
class Placement:
    assignments: dict[int, list[int]] = field(default_factory=dict)  # slice id -> node id per replica
    unplaced: dict[int, int] = field(default_factory=dict)  # slice id -> replicas that did not fit
    events: list[Event] = field(default_factory=list)
    drained: list[int] = field(default_factory=list)  # draining nodes left empty now (``placement`` fills it)

    @property
    def alerts(self) -> list[Event]:
        return [e for e in self.events if e.kind is EventKind.ALERT]


class _Room:
    """Free capacity of one node while placing."""

    __slots__ = ("cpus", "gpu_free", "gpu_memory", "lent", "memory_mb", "node")

    def __init__(self, node: NodeSpec, now: datetime) -> None:
        self.node = node
        self.lent = node.lent(now)
        self.cpus = node.cpus
        self.memory_mb = node.memory_mb
        self.gpu_free = [1.0] * len(node.gpus)
        self.gpu_memory = [g.memory_mb for g in node.gpus]

    def _gpu_for(self, demand: SliceDemand) -> int | None:
        if demand.gpu_fraction <= 0:
            return -1
        for index, (free, memory) in enumerate(zip(self.gpu_free, self.gpu_memory, strict=True)):
            if free + 1e-9 >= demand.gpu_fraction and memory >= demand.gpu_memory_mb:
                return index
        return None

    def fits(self, demand: SliceDemand) -> bool:
        if self.cpus + 1e-9 < demand.cpus or self.memory_mb < demand.memory_mb:
            return False
        return self._gpu_for(demand) is not None

    def take(self, demand: SliceDemand) -> bool:
        """Reserve room for one replica if it fits."""
        if not self.fits(demand):
            return False
        gpu = self._gpu_for(demand)
        assert gpu is not None
        self.cpus -= demand.cpus
        self.memory_mb -= demand.memory_mb
        if gpu >= 0:
            self.gpu_free[gpu] -= demand.gpu_fraction
            self.gpu_memory[gpu] -= demand.gpu_memory_mb
        return True

    def score(self) -> float:
        """Larger = more free room; the next replica goes to the roomiest node."""
        gpu = sum(self.gpu_free)
        return self.cpus / max(self.node.cpus, 1e-9) + self.memory_mb / max(self.node.memory_mb, 1) + gpu


def _class_allows(room: _Room, priority: Priority) -> bool:
    """The operator's rule for a class on a node that is not the slice's own."""
    if priority is Priority.RESERVED:
        return not room.node.contributed
    if priority is Priority.BANK:
        return room.lent
    return not room.node.contributed or room.lent


def _usable(room: _Room, demand: SliceDemand, residency: Residency | None = None) -> bool:
    """May one of the demand's replicas run on this (online) node, under ``residency`` (default: its own)?"""
    rule = demand.residency if residency is None else residency
    owner = room.node.owner
    own = owner is not None and owner == demand.tenant_id
    if rule is Residency.OWN_NODES:
        return own
    if rule is Residency.OPERATOR_NODES:
        return owner is None and _class_allows(room, demand.priority)
    if own:
        return True
    if owner is not None:  # another tenant's node: only the bank's, only while lent, only if the slice allows
        return rule is Residency.ANY_BANK and demand.priority is Priority.BANK and room.lent
    return _class_allows(room, demand.priority)


Heap = list[tuple[float, int, _Room]]


class _Pools:
    """Free rooms of one class's pass, in heaps by who may use them: the operator's nodes the class may use,
    each tenant's own nodes, and tenants' nodes lent now. A room may sit in two heaps (its owner's and the
    lent one); its score there may be stale, which only affects spreading: ``take`` checks the real room."""

    def __init__(self, rooms: Iterable[_Room], priority: Priority, reclaiming: Mapping[int, datetime]) -> None:
        self.priority = priority
        operator: list[_Room] = []
        owned: dict[int, list[_Room]] = {}
        lent: list[_Room] = []
        for room in rooms:
            owner = room.node.owner
            if owner is None:
                if _class_allows(room, priority):
                    operator.append(room)
                continue
            owned.setdefault(owner, []).append(room)
            if priority is Priority.BANK and room.lent and room.node.node_id not in reclaiming:
                lent.append(room)
        self.operator, self.lent = _heap(operator), _heap(lent)
        self.owned = {owner: _heap(rooms) for owner, rooms in owned.items()}

    def for_demand(self, demand: SliceDemand) -> list[Heap]:
        """The heaps to draw from, in order: the tenant's own nodes first."""
        rule = demand.residency
        heaps: list[Heap] = []
        if demand.tenant_id in self.owned and rule is not Residency.OPERATOR_NODES:
            heaps.append(self.owned[demand.tenant_id])
        if rule is not Residency.OWN_NODES:
            heaps.append(self.operator)
        if rule is Residency.ANY_BANK and demand.priority is Priority.BANK:
            heaps.append(self.lent)
        return heaps


def _heap(rooms: Iterable[_Room]) -> Heap:
    heap = [(-room.score(), room.node.node_id, room) for room in rooms]
    heapq.heapify(heap)
    return heap


def place(
    nodes: Sequence[NodeSpec],
    demands: Iterable[SliceDemand],
    current: Mapping[int, Sequence[int]] | None = None,
    *,
    now: datetime,
) -> Placement:
    """Assign every wanted replica to a node, keeping ``current`` assignments where they still hold."""
    current = current or {}
    leaving = {n.node_id: until for n in nodes if (until := n.leaving_until(now)) is not None}
    rooms = {n.node_id: _Room(n, now) for n in nodes if n.online and n.held_until is None and n.node_id not in leaving}
    by_priority: dict[Priority, list[SliceDemand]] = {p: [] for p in PRIORITY_ORDER}
    for demand in sorted(demands, key=lambda d: d.slice_id):
        by_priority[demand.priority].append(demand)
    ordered = [d for p in PRIORITY_ORDER for d in by_priority[p]]
    result = Placement()
    # An owner taking room back from the bank: other tenants' replicas keep theirs until the notice ends.
    reclaiming = {
        node_id: until
        for node_id, room in rooms.items()
        if room.node.owner is not None and (until := room.node.bank_until) is not None and now < until
    }
    held = _hold_for_owner(reclaiming, rooms, ordered, current, result)
    for priority in PRIORITY_ORDER:
        pending: list[tuple[SliceDemand, int]] = []
        for demand in by_priority[priority]:
            kept = _keep(demand, current.get(demand.slice_id, ()), rooms, result, reclaiming)
            result.assignments[demand.slice_id] = kept
            if len(kept) < demand.replicas:
                pending.append((demand, demand.replicas - len(kept)))
        pools = _Pools(rooms.values(), priority, reclaiming)
        for demand, missing in pending:
            short = _fill(demand, missing, pools.for_demand(demand), result)
            if short:
                _report_short(demand, short, rooms.values(), result)
    for slice_id, node_ids in held.items():
        result.assignments[slice_id].extend(node_ids)
    _hold_leaving(nodes, leaving, ordered, current, result, now)
    return result


def _foreign(room: _Room, demand: SliceDemand) -> bool:
    return room.node.owner is not None and room.node.owner != demand.tenant_id


def _hold(room: _Room, demands: Sequence[SliceDemand], current: Mapping[int, Sequence[int]], result: Placement,
          why: str, *, foreign_only: bool = False) -> dict[int, list[int]]:  # fmt: skip
    """Keep, in class order and as far as ``room`` goes, the replicas each demand (``foreign_only``: of other
    tenants than the node's owner) has on its node now (slice id -> that node, once per replica kept), each
    kept with a ``NOTICE`` event."""
    node_id = room.node.node_id
    held: dict[int, list[int]] = {}
    for demand in demands:
        if foreign_only and not _foreign(room, demand):
            continue
        wanted = sum(1 for n in current.get(demand.slice_id, ()) if n == node_id)
        kept = 0
        while kept < min(wanted, demand.replicas) and _usable(room, demand) and room.take(demand):
            kept += 1
        if kept:
            held[demand.slice_id] = [node_id] * kept
            result.events.append(Event(EventKind.NOTICE, demand.slice_id, node_id, f"{kept} replica(s) kept {why}"))
    return held


def _hold_for_owner(
    reclaiming: Mapping[int, datetime],
    rooms: Mapping[int, _Room],
    demands: Sequence[SliceDemand],
    current: Mapping[int, Sequence[int]],
    result: Placement,
) -> dict[int, list[int]]:
    """Before any class is placed: the room other tenants' replicas hold on a node whose owner takes it back,
    kept for them until the notice ends (their replacements are placed elsewhere meanwhile)."""
    held: dict[int, list[int]] = {}
    for node_id in sorted(reclaiming):
        why = f"until {reclaiming[node_id]:%Y-%m-%d %H:%M:%S} while the node's owner takes it back for its own slices"
        for slice_id, kept in _hold(rooms[node_id], demands, current, result, why, foreign_only=True).items():
            held.setdefault(slice_id, []).extend(kept)
    return held


def _hold_leaving(
    nodes: Sequence[NodeSpec],
    leaving: Mapping[int, datetime],
    demands: Sequence[SliceDemand],
    current: Mapping[int, Sequence[int]],
    result: Placement,
    now: datetime,
) -> None:
    """Keep each leaving node's replicas (in class order, as far as its room goes) until its notice ends:
    their replacements were placed elsewhere above, so for the notice both run."""
    for node in sorted((n for n in nodes if n.node_id in leaving), key=lambda n: n.node_id):
        why = f"until {leaving[node.node_id]:%Y-%m-%d %H:%M:%S} while the node leaves with notice"
        for slice_id, kept in _hold(_Room(node, now), demands, current, result, why).items():
            result.assignments[slice_id].extend(kept)


def _keep(demand: SliceDemand, previous: Sequence[int], rooms: dict[int, _Room], result: Placement,
          reclaiming: Mapping[int, datetime]) -> list[int]:  # fmt: skip
    kept: list[int] = []

    def gone(node_id: int) -> bool:
        room = rooms.get(node_id)
        return room is None or not _usable(room, demand) or (node_id in reclaiming and _foreign(room, demand))

    # Usable nodes first, so that a slice with replacements running beside replicas on a leaving node
    # keeps the replacements (a lower lease drops the surplus).
    for node_id in sorted(previous, key=lambda n: (gone(n), n)):
        room = rooms.get(node_id)
        if room is None or gone(node_id):
            reason = "node is no longer eligible (offline, draining, outside its window or closed to the slice)"
            result.events.append(Event(EventKind.MOVED, demand.slice_id, node_id, reason))
        elif len(kept) >= demand.replicas:
            continue
        elif room.take(demand):
            kept.append(node_id)
        else:
            reason = "its room went to a higher-priority slice"
            result.events.append(Event(EventKind.PREEMPTED, demand.slice_id, node_id, reason))
    return kept


def _fill(demand: SliceDemand, missing: int, heaps: list[Heap], result: Placement) -> int:
    """Place up to ``missing`` replicas from the heaps in order, each on its heap's roomiest node; the shortfall."""
    placed: Counter[int] = Counter()
    count = 0
    for heap in heaps:
        # Room only shrinks while one demand is placed: a node too small for one of its
        # replicas is too small for the next, so it stays aside until the demand is done.
        too_small: Heap = []
        while count < missing and heap:
            entry = heapq.heappop(heap)
            room = entry[2]
            if not room.take(demand):
                too_small.append(entry)
                continue
            placed[room.node.node_id] += 1
            count += 1
            result.assignments[demand.slice_id].append(room.node.node_id)
            heapq.heappush(heap, (-room.score(), room.node.node_id, room))
        for entry in too_small:
            heapq.heappush(heap, entry)
    for node_id, on_node in sorted(placed.items()):
        result.events.append(Event(EventKind.PLACED, demand.slice_id, node_id, f"{on_node} replica(s) placed"))
    return missing - count


def _report_short(demand: SliceDemand, short: int, rooms: Iterable[_Room], result: Placement) -> None:
    result.unplaced[demand.slice_id] = short
    kind = EventKind.ALERT if demand.priority is Priority.RESERVED else EventKind.UNPLACED
    reason = f"{short} {demand.priority.value} replica(s) do not fit on this site's eligible nodes"
    result.events.append(Event(kind, demand.slice_id, None, reason))
    if demand.residency is Residency.ANY_BANK:
        return
    # Would the class's usual nodes have had room? Then the rule, not the site, left the slice short.
    widest = Residency.SITE if demand.priority is not Priority.BANK else Residency.ANY_BANK
    forbidden = [
        r.node.node_id for r in rooms if not _usable(r, demand) and _usable(r, demand, widest) and r.fits(demand)
    ]
    if forbidden:
        allowed = {Residency.OWN_NODES: "its tenant's own", Residency.OPERATOR_NODES: "the operator's"}.get(
            demand.residency, "the operator's or its tenant's own"
        )
        reason = (
            f"residency {demand.residency.value}: {short} replica(s) do not fit on {allowed} nodes; "
            f"{len(forbidden)} node(s) with room are not allowed to run them"
        )
        result.events.append(Event(EventKind.RESIDENCY, demand.slice_id, None, reason))


@dataclass(frozen=True)
class OverflowDemand:
    """A slice its home site leaves short: ``demand.replicas`` is the shortfall."""

    demand: SliceDemand
    home_site: int
    regions: frozenset[str]  # regions whose sites may run its replicas; empty: none (it stays home)
    p99_ms: float  # the slice's recent p99 (or an estimate) at home
    budget_ms: float  # the tightest latency budget of its lines


@dataclass(frozen=True)
class SiteCapacity:
    """Another site as overflow sees it: its nodes and what its own slices already hold there."""

    site_id: int
    region: str
    nodes: tuple[NodeSpec, ...]
    native: tuple[tuple[SliceDemand, tuple[int, ...]], ...] = ()  # (demand, node id per replica) placed at home


def may_overflow(demand: OverflowDemand, site: SiteCapacity, rtt_ms: float | None) -> str | None:
    """Why ``demand``'s replicas may not go to ``site`` (None: they may), room aside."""
    if demand.demand.priority is Priority.RESERVED:
        return "reserved capacity stays on its site"
    if site.site_id == demand.home_site:
        return "its home site"
    if site.region not in demand.regions:
        return f"region {site.region} is not one the slice allows"
    if rtt_ms is None:
        return "no round-trip time to the home broker is known"
    if rtt_ms + demand.p99_ms > demand.budget_ms:
        return (f"round trip {rtt_ms:g} ms + p99 {demand.p99_ms:g} ms would exceed the "
                f"{demand.budget_ms:g} ms budget")  # fmt: skip
    return None


def overflow(
    demands: Iterable[OverflowDemand],
    sites: Sequence[SiteCapacity],
    rtt_ms: Mapping[tuple[int, int], float],
    current: Mapping[int, Sequence[int]] | None = None,
    *,
    now: datetime,
) -> Placement:
    """Place each short slice's missing replicas on other sites (``rtt_ms[(site, home site)]``: the measured
    round trip from ``site`` to the home site's broker), keeping ``current`` remote replicas where they still
    hold. Only room the sites' own slices leave is used; slices go in class order, then by id."""
    current = current or {}
    rooms: dict[int, _Room] = {}
    site_of: dict[int, SiteCapacity] = {}
    for site in sites:
        site_rooms = {n.node_id: _Room(n, now) for n in site.nodes
                      if n.online and n.held_until is None and n.leaving_until(now) is None}  # fmt: skip
        for native, node_ids in site.native:
            for node_id in node_ids:
                if node_id in site_rooms:
                    site_rooms[node_id].take(native)
        for node_id, room in site_rooms.items():
            rooms[node_id], site_of[node_id] = room, site
    result = Placement()
    rank = {p: i for i, p in enumerate(PRIORITY_ORDER)}
    for item in sorted(demands, key=lambda d: (rank[d.demand.priority], d.demand.slice_id)):
        demand = item.demand
        placed: list[int] = []
        result.assignments[demand.slice_id] = placed
        if demand.replicas <= 0 or not item.regions or demand.priority is Priority.RESERVED:
            continue
        open_sites: list[SiteCapacity] = []
        for site in sorted(sites, key=lambda s: (rtt_ms.get((s.site_id, item.home_site), math.inf), s.site_id)):
            why = may_overflow(item, site, rtt_ms.get((site.site_id, item.home_site)))
            if why is None:
                open_sites.append(site)
            elif (
                site.region in item.regions
                and site.site_id != item.home_site
                and any(
                    r.fits(demand) and _usable(r, demand) for r in rooms.values() if site_of[r.node.node_id] is site
                )
            ):
                result.events.append(Event(EventKind.LATENCY, demand.slice_id, None, f"site {site.site_id}: {why}"))
        allowed = {s.site_id for s in open_sites}
        for node_id in current.get(demand.slice_id, ()):  # stay where they run while that still holds
            kept = rooms.get(node_id)
            if len(placed) < demand.replicas and kept is not None and site_of[node_id].site_id in allowed \
                    and _usable(kept, demand) and kept.take(demand):  # fmt: skip
                placed.append(node_id)
        for site in open_sites:
            candidates = [r for r in rooms.values() if site_of[r.node.node_id] is site and _usable(r, demand)]
            before = len(placed)
            while len(placed) < demand.replicas:
                best = max(candidates, key=lambda r: (r.fits(demand), r.score(), -r.node.node_id), default=None)
                if best is None or not best.take(demand):
                    break
                placed.append(best.node.node_id)
            if len(placed) > before:
                rtt = rtt_ms[(site.site_id, item.home_site)]
                result.events.append(Event(
                    EventKind.OVERFLOW, demand.slice_id, None,
                    f"{len(placed) - before} replica(s) to site {site.site_id} (region {site.region}): round trip "
                    f"{rtt:g} ms + p99 {item.p99_ms:g} ms within the {item.budget_ms:g} ms budget",
                ))  # fmt: skip
        if len(placed) < demand.replicas:
            result.unplaced[demand.slice_id] = demand.replicas - len(placed)
    return result
