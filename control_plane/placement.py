"""Runs the pure scheduler for a site against the database and records what moved and why.

Demand: each live slice asks for its lease (``max_replicas``) with its
priority class; the placement found is stored on the slice (node id ->
replicas), and the agent pins the model replicas there when every chosen
node's Ray resource is present. Called when nodes drain, fail or change their
windows, when slices change, and on the planner's period (windows open and
close with time).

Each node's owner and each slice's tenant and residency rule go to the
scheduler: a tenant's slices fill its own nodes first, and a slice its rule
keeps short gets one alert event saying so (repeated only when the reason
changes, so the planner's period does not fill the slice's history).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

from sqlmodel import Session, col, select

from control_plane import overflow, scheduler
from control_plane.models import Node, ScaleEvent, ScaleKind, Site, Slice
from control_plane.sites import LIVE_SLICES
from control_plane.states import NodeStatus, transition

log = logging.getLogger(__name__)


def deadline(now: datetime, notice_s: int) -> datetime:
    """``notice_s`` after ``now`` (the control plane's plant-local clock), stored as an aware time."""
    return (now + timedelta(seconds=notice_s)).astimezone(UTC)


def local_clock(at: datetime | None, now: datetime) -> datetime | None:
    """A stored (aware) deadline on the scheduler's clock, which is naive plant-local time unless ``now`` is aware."""
    if at is None:
        return None
    local = at.astimezone()
    return local if now.tzinfo is not None else local.replace(tzinfo=None)


def _held_until(node: Node, now: datetime) -> datetime | None:
    """A draining node's deadline on the scheduler's clock; one without notice (or past it) holds nothing."""
    if node.status is not NodeStatus.DRAINING:
        return None
    return now if node.held_until is None else local_clock(node.held_until, now)


def node_spec(node: Node, now: datetime) -> scheduler.NodeSpec:
    assert node.id is not None
    windows = tuple(
        scheduler.Window(frozenset(w["days"]), time.fromisoformat(w["start"]), time.fromisoformat(w["end"]))
        for w in node.windows
    )
    gpus = tuple(scheduler.GpuSpec(int(g.get("memory_mb", 0))) for g in node.gpus)
    return scheduler.NodeSpec(
        node.id, float(node.cpus), node.memory_mb, gpus,
        online=node.status in (NodeStatus.ONLINE, NodeStatus.DRAINING), contributed=node.contributed,
        windows=windows, holidays=frozenset(date.fromisoformat(d) for d in node.holidays), owner=node.owner_tenant_id,
        held_until=_held_until(node, now), notice=timedelta(seconds=node.notice_s),
        bank_until=local_clock(node.bank_until, now),
    )  # fmt: skip


def demand(item: Slice) -> scheduler.SliceDemand:
    assert item.id is not None
    return scheduler.SliceDemand(item.id, item.priority, item.max_replicas, cpus=item.cpus_per_replica,
                                 memory_mb=1024, gpu_fraction=item.gpus_per_replica, tenant_id=item.tenant_id,
                                 residency=item.residency)  # fmt: skip


def place_site(session: Session, site: Site, now: datetime) -> scheduler.Placement:
    """Re-place the site's live slices; store placements and record events for what changed."""
    nodes = session.exec(select(Node).where(Node.site_id == site.id, Node.status != NodeStatus.REMOVED)).all()
    slices = session.exec(select(Slice).where(Slice.site_id == site.id, col(Slice.status).in_(LIVE_SLICES))).all()
    current = {s.id: [int(n) for n, k in s.placement.items() for _ in range(k)] for s in slices if s.id is not None}
    result = scheduler.place([node_spec(n, now) for n in nodes], [demand(s) for s in slices], current, now=now)
    if _owners_take_back(nodes, slices, result, now):  # then the bank's replicas there get their notice
        result = scheduler.place([node_spec(n, now) for n in nodes], [demand(s) for s in slices], current, now=now)
    for item in slices:
        assert item.id is not None
        placed = {str(n): k for n, k in sorted(Counter(result.assignments.get(item.id, [])).items())}
        _residency_alert(session, item, result, placed)
        if placed == item.placement:  # e.g. a drain with notice and no room elsewhere: say so, once
            alerts = [e.reason for e in result.alerts if e.slice_id == item.id]
            notices = [e.reason + f" (node {e.node_id})" for e in result.events
                       if e.slice_id == item.id and e.kind is scheduler.EventKind.NOTICE]  # fmt: skip
            if alerts and notices:
                reason = (f"reserved slice {item.slug}: " + "; ".join(alerts) + " once the notice ends: "
                          + "; ".join(notices) + "; add or undrain nodes on this site")  # fmt: skip
                _alert_once(session, item, reason, sum(placed.values()))
            continue
        quiet = (scheduler.EventKind.PLACED, scheduler.EventKind.RESIDENCY)
        changes = [e for e in result.events if e.slice_id == item.id and e.kind not in quiet]
        reasons = [e.reason + (f" (node {e.node_id})" if e.node_id is not None else "") for e in changes]
        before, after = sum(item.placement.values()), sum(placed.values())
        if changes:  # new replicas merely placed are explained by the event that asked for them
            session.add(ScaleEvent(
                tenant_id=item.tenant_id, slice_id=item.id, kind=scale_kind(changes), min_before=item.min_replicas,
                min_after=item.min_replicas, max_before=before, max_after=after,
                reason=f"placement {item.placement or '{}'} -> {placed}: " + "; ".join(reasons),
            ))  # fmt: skip
        alerts = [e.reason for e in result.alerts if e.slice_id == item.id]
        if alerts:
            session.add(ScaleEvent(
                tenant_id=item.tenant_id, slice_id=item.id, kind=ScaleKind.ALERT, min_before=item.min_replicas,
                min_after=item.min_replicas, max_before=before, max_after=after,
                reason=f"reserved slice {item.slug}: " + "; ".join(alerts) + "; add or undrain nodes on this site",
            ))  # fmt: skip
        item.placement = placed
        item.generation += 1
        log.info("slice %s placed %s (%s)", item.slug, placed, "; ".join(reasons) or "new")
    result.drained = _finish_drains(nodes, result)
    session.commit()
    overflow.place(session, now)  # what this site now leaves short (or has room for again) elsewhere
    return result


def _owners_take_back(nodes: Sequence[Node], slices: Sequence[Slice], result: scheduler.Placement,
                      now: datetime) -> bool:  # fmt: skip
    """Start the notice on each owner's node (with a notice) where the owner's slices would take the room of
    other tenants' replicas; without a notice they are preempted at once, as any lower class."""
    tenant_of = {s.id: s.tenant_id for s in slices}
    started = False
    for node in nodes:
        if node.owner_tenant_id is None or node.status is not NodeStatus.ONLINE or not node.notice_s:
            continue
        if (until := local_clock(node.bank_until, now)) is not None:
            if now >= until and not any(str(node.id) in s.placement for s in slices
                                        if s.tenant_id != node.owner_tenant_id):  # fmt: skip
                node.bank_until = None  # the notice is over and the bank's replicas have left
            continue  # one notice at a time, and its end is not a new one
        pushed_out = [e for e in result.events if e.kind is scheduler.EventKind.PREEMPTED and e.node_id == node.id
                      and tenant_of.get(e.slice_id) != node.owner_tenant_id]  # fmt: skip
        if pushed_out:
            node.bank_until = deadline(now, node.notice_s)
            log.info("node %s (%s): its owner needs the room; other tenants' replicas leave by %s", node.id,
                     node.hostname, node.bank_until)  # fmt: skip
            started = True
    return started


def _residency_alert(session: Session, item: Slice, result: scheduler.Placement, placed: dict[str, int]) -> None:
    """Record that the slice's residency rule keeps it short (it is never placed where the rule forbids):
    when its placement changes, or when the reason differs from the last such alert."""
    assert item.id is not None
    rule = [e.reason for e in result.events if e.slice_id == item.id and e.kind is scheduler.EventKind.RESIDENCY]
    if not rule:
        return
    runs = sum(placed.values())
    below = f", below its floor of {item.min_replicas}" if runs < item.min_replicas else ""
    reason = f"{'; '.join(rule)}; it runs {runs} of {item.max_replicas} replica(s){below}"
    last = session.exec(
        select(ScaleEvent.reason)
        .where(ScaleEvent.slice_id == item.id, ScaleEvent.kind == ScaleKind.ALERT,
               col(ScaleEvent.reason).startswith("residency "))
        .order_by(col(ScaleEvent.id).desc())
        .limit(1)
    ).first()  # fmt: skip
    if placed != item.placement or last != reason:
        _alert(session, item, reason, runs)


def _alert_once(session: Session, item: Slice, reason: str, runs: int) -> None:
    """An alert event unless the slice's last one says the same (the planner's period re-places often)."""
    last = session.exec(
        select(ScaleEvent.reason).where(ScaleEvent.slice_id == item.id, ScaleEvent.kind == ScaleKind.ALERT)
        .order_by(col(ScaleEvent.id).desc()).limit(1)
    ).first()  # fmt: skip
    if last != reason:
        _alert(session, item, reason, runs)


def _alert(session: Session, item: Slice, reason: str, runs: int) -> None:
    assert item.id is not None
    session.add(ScaleEvent(
        tenant_id=item.tenant_id, slice_id=item.id, kind=ScaleKind.ALERT, min_before=item.min_replicas,
        min_after=item.min_replicas, max_before=sum(item.placement.values()), max_after=runs, reason=reason,
    ))  # fmt: skip


def scale_kind(changes: Sequence[scheduler.Event]) -> ScaleKind:
    """How a slice's placement change is recorded: a drain when any replica lost its node (offline,
    draining, outside its window), else a preemption (its room went to a higher-priority slice, or
    replicas fit nowhere)."""
    return ScaleKind.DRAIN if any(e.kind is scheduler.EventKind.MOVED for e in changes) else ScaleKind.PREEMPTION


def _finish_drains(nodes: Sequence[Node], result: scheduler.Placement) -> list[int]:
    used = {n for assigned in result.assignments.values() for n in assigned}
    drained = []
    for node in nodes:
        if node.status is NodeStatus.DRAINING and node.id is not None and node.id not in used:
            node.status = transition(node.status, NodeStatus.DRAINED, what=f"node {node.id}")
            drained.append(node.id)
            log.info("node %s (%s) drained", node.id, node.hostname)
    return drained


def place_all(session: Session, now: datetime) -> dict[int, list[int]]:
    """Re-place every site; the nodes each site's drains left empty now (site id -> node ids)."""
    drained = {}
    for site in session.exec(select(Site)).all():
        assert site.id is not None
        drained[site.id] = place_site(session, site, now).drained
    return {site: nodes for site, nodes in drained.items() if nodes}
