"""Placement of slices' replicas onto a site's nodes. Pure: no database, no Ray, no clock.

Priority classes, placed in this order so a lower class never takes room a
higher one needs:

    reserved   guaranteed; only on the operator's own (not contributed) nodes; never over-committed
    burst      best effort in what reserved leaves free, on any eligible node
    bank       only on contributed nodes inside their availability windows; preempted first

A node is eligible when it is online and, if contributed, inside one of its
windows at ``now``. Draining, drained, offline and removed nodes hold nothing.

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


class EventKind(StrEnum):
    """What happened to a slice's replicas. Callers decide on the kind, never on the reason's wording."""

    PLACED = "placed"  # new replicas went to a node
    MOVED = "moved"  # the node can no longer hold them (offline, draining, outside its window, or closed to the class)
    PREEMPTED = "preempted"  # a higher-priority slice took their room on a node that is still eligible
    UNPLACED = "unplaced"  # burst or bank replicas that fit nowhere (best effort: no alert)
    ALERT = "alert"  # reserved replicas that fit nowhere: operators must add capacity


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

    def eligible(self, now: datetime) -> bool:
        if not self.online:
            return False
        if not self.contributed:
            return True
        return now.date() in self.holidays or any(w.contains(now) for w in self.windows)


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

    @property
    def alerts(self) -> list[Event]:
        return [e for e in self.events if e.kind is EventKind.ALERT]


class _Room:
    """Free capacity of one node while placing."""

    __slots__ = ("cpus", "gpu_free", "gpu_memory", "memory_mb", "node")

    def __init__(self, node: NodeSpec) -> None:
        self.node = node
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

    def take(self, demand: SliceDemand) -> bool:
        """Reserve room for one replica if it fits."""
        if self.cpus + 1e-9 < demand.cpus or self.memory_mb < demand.memory_mb:
            return False
        gpu = self._gpu_for(demand)
        if gpu is None:
            return False
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


def _allowed(node: NodeSpec, priority: Priority) -> bool:
    if priority is Priority.RESERVED:
        return not node.contributed
    if priority is Priority.BANK:
        return node.contributed
    return True


def place(
    nodes: Sequence[NodeSpec],
    demands: Iterable[SliceDemand],
    current: Mapping[int, Sequence[int]] | None = None,
    *,
    now: datetime,
) -> Placement:
    """Assign every wanted replica to a node, keeping ``current`` assignments where they still hold."""
    current = current or {}
    rooms = {n.node_id: _Room(n) for n in nodes if n.eligible(now)}
    by_priority: dict[Priority, list[SliceDemand]] = {p: [] for p in PRIORITY_ORDER}
    for demand in sorted(demands, key=lambda d: d.slice_id):
        by_priority[demand.priority].append(demand)
    result = Placement()
    for priority in PRIORITY_ORDER:
        pending: list[tuple[SliceDemand, int]] = []
        for demand in by_priority[priority]:
            kept = _keep(demand, current.get(demand.slice_id, ()), rooms, result)
            result.assignments[demand.slice_id] = kept
            if len(kept) < demand.replicas:
                pending.append((demand, demand.replicas - len(kept)))
        _fill(pending, [r for r in rooms.values() if _allowed(r.node, priority)], result)
    return result


def _keep(demand: SliceDemand, previous: Sequence[int], rooms: dict[int, _Room], result: Placement) -> list[int]:
    kept: list[int] = []
    for node_id in sorted(previous)[: demand.replicas]:
        room = rooms.get(node_id)
        if room is None or not _allowed(room.node, demand.priority):
            reason = "node is no longer eligible (offline, draining or outside its window)"
            result.events.append(Event(EventKind.MOVED, demand.slice_id, node_id, reason))
        elif room.take(demand):
            kept.append(node_id)
        else:
            reason = "its room went to a higher-priority slice"
            result.events.append(Event(EventKind.PREEMPTED, demand.slice_id, node_id, reason))
    return kept


def _fill(pending: list[tuple[SliceDemand, int]], rooms: list[_Room], result: Placement) -> None:
    heap = [(-room.score(), room.node.node_id, room) for room in rooms]
    heapq.heapify(heap)
    for demand, missing in pending:
        placed: Counter[int] = Counter()
        count = 0
        # Room only shrinks while one demand is placed: a node too small for one of its
        # replicas is too small for the next, so it stays aside until the demand is done.
        too_small: list[tuple[float, int, _Room]] = []
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
        short = missing - count
        if short:
            result.unplaced[demand.slice_id] = short
            kind = EventKind.ALERT if demand.priority is Priority.RESERVED else EventKind.UNPLACED
            reason = f"{short} {demand.priority.value} replica(s) do not fit on this site's eligible nodes"
            result.events.append(Event(kind, demand.slice_id, None, reason))
