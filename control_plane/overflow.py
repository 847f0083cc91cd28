"""Cross-site overflow against the database: round trips between sites, and the replicas a slice runs on
other sites while its home site is full (``scheduler.overflow`` decides; this module feeds and records it).

- **Round trips.** Each site's head agent measures an MQTT CONNECT/CONNACK round trip to every other
  site's broker (its WAN address) and reports it in its heartbeat (``record_links``); an operator may pin a
  figure instead (``PUT /sites/{id}/links/{peer}``). A measurement older than ``LINK_STALE_S`` is unknown:
  nothing overflows over a link nobody has heard from.
- **Placement.** After a site is placed (``placement.place_site``), ``place`` runs for every site: a
  ``burst`` or ``bank`` slice with ``overflow_regions`` that its home site leaves short gets the rest on the
  nearest allowed sites, in the room their own slices leave. It is stored in ``Slice.overflow`` (site id ->
  {node id -> replicas}); the remote site's desired state then carries the slice (``sites.slice_spec``),
  with an ingress that joins the home broker's shared subscription over the WAN with its own login.
- **Latency.** A site is used only while its round trip plus the slice's p99 stays within the tightest
  budget of its lines. While the slice already runs there, the p99 measured on its lines already includes
  that round trip, so it is checked alone (no double count, no flapping).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from contracts import wire
from control_plane import scheduler
from control_plane.models import (
    Line,
    LineMinute,
    ModelProfile,
    ModelVersion,
    Node,
    ScaleEvent,
    ScaleKind,
    Site,
    SiteLink,
    Slice,
    TenantBilling,
    as_utc,
    utcnow,
)
from control_plane.models.sites import LINK_STALE_S
from control_plane.states import NodeStatus, SliceStatus

log = logging.getLogger(__name__)

P99_WINDOW = timedelta(minutes=5)
LIVE = (SliceStatus.PENDING, SliceStatus.RUNNING, SliceStatus.DEGRADED, SliceStatus.FAILED)


def effective_rtt(link: SiteLink, now: datetime) -> float | None:
    """The pinned round trip, else the measured one while it is fresh; None: unknown."""
    if link.pinned_rtt_ms is not None:
        return link.pinned_rtt_ms
    if link.measured_rtt_ms is None or link.measured_at is None:
        return None
    fresh = as_utc(now) - as_utc(link.measured_at) <= timedelta(seconds=LINK_STALE_S)
    return link.measured_rtt_ms if fresh else None


def rtt_map(session: Session, now: datetime) -> dict[tuple[int, int], float]:
    links = session.exec(select(SiteLink)).all()
    return {(k.site_id, k.peer_site_id): rtt for k in links if (rtt := effective_rtt(k, now)) is not None}


def record_links(session: Session, node: Node, links: list[tuple[int, float]]) -> int:
    """Store the round trips a site's head measured (an operator's node only: a tenant's node could lie to
    pull other tenants' frames across a WAN); returns how many were stored."""
    if node.owner_tenant_id is not None or not links:
        return 0
    known = {s for s in session.exec(select(Site.id)).all()}
    stored = 0
    for peer, rtt in links:
        if peer == node.site_id or peer not in known:
            continue
        link = session.get(SiteLink, (node.site_id, peer)) or SiteLink(site_id=node.site_id, peer_site_id=peer)
        link.measured_rtt_ms, link.measured_at = round(rtt, 2), utcnow()
        session.add(link)
        stored += 1
    return stored


def slice_p99_ms(session: Session, item: Slice, now: datetime) -> float:
    """The slice's lines' p99 over the last minutes; before any telemetry, one batch's compute time from the
    model's profile on its home site; else 0 (the round trip alone must then fit the budget)."""
    since = as_utc(now).replace(second=0, microsecond=0) - P99_WINDOW
    rows = session.exec(select(LineMinute).where(col(LineMinute.line_id).in_(item.line_ids),
                                                 LineMinute.minute >= since)).all()  # fmt: skip
    histogram = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
    for row in rows:
        for index, count in enumerate(row.latency_histogram[: len(histogram)]):
            histogram[index] += count
    p99 = wire.histogram_quantile(histogram, 0.99)
    if p99 is not None:
        return float(wire.LATENCY_BUCKETS_MS[-1]) * 2 if math.isinf(p99) else float(p99)
    model = session.get(ModelVersion, item.model_version_id)
    profile = None if model is None else session.exec(
        select(ModelProfile).where(ModelProfile.site_id == item.site_id, ModelProfile.model_sha256 == model.sha256)
    ).first()  # fmt: skip
    if profile is None or profile.frames_per_s_per_replica <= 0:
        return 0.0
    return round(1000.0 * item.max_batch_size / profile.frames_per_s_per_replica, 1)


def budget_ms(session: Session, item: Slice) -> float:
    lines = session.exec(select(Line).where(col(Line.id).in_(item.line_ids))).all()
    return float(min((line.latency_budget_ms for line in lines), default=0))


def _held(session: Session, item: Slice) -> bool:
    billing = session.get(TenantBilling, item.tenant_id)
    return billing is not None and billing.held


def place(session: Session, now: datetime) -> dict[int, list[str]]:
    """Re-place every short slice's overflow; returns slice id -> what changed, in words."""
    from control_plane.placement import demand, node_spec  # placement calls this module after placing a site

    sites = session.exec(select(Site).order_by(col(Site.id))).all()
    live = session.exec(select(Slice).where(col(Slice.status).in_(LIVE)).order_by(col(Slice.id))).all()
    if not any(s.overflow_regions or s.overflow for s in live):
        return {}
    nodes = session.exec(select(Node).where(Node.status != NodeStatus.REMOVED)).all()
    capacities = []
    for site in sites:
        assert site.id is not None
        native = tuple(
            (demand(s), tuple(int(n) for n, k in s.placement.items() for _ in range(k)))
            for s in live if s.site_id == site.id
        )  # fmt: skip
        capacities.append(scheduler.SiteCapacity(
            site.id, site.region, tuple(node_spec(n, now) for n in nodes if n.site_id == site.id), native
        ))  # fmt: skip
    rtt = rtt_map(session, now)
    wanted = []
    for item in live:
        assert item.id is not None
        short = item.max_replicas - sum(item.placement.values())
        if not item.overflow_regions or short <= 0 or _held(session, item):
            continue
        p99 = slice_p99_ms(session, item, now)
        running = [int(s) for s in item.overflow]
        # The lines' p99 already carries the round trip of a site the slice runs on: count it once.
        p99_home = max(0.0, p99 - max((rtt.get((s, item.site_id), 0.0) for s in running), default=0.0))
        wanted.append(scheduler.OverflowDemand(
            replace(demand(item), replicas=short), item.site_id, frozenset(item.overflow_regions), p99_home,
            budget_ms(session, item),
        ))  # fmt: skip
    current = {s.id: [int(n) for nodes_ in s.overflow.values() for n, k in nodes_.items() for _ in range(k)]
               for s in live if s.id is not None}  # fmt: skip
    result = scheduler.overflow(wanted, capacities, rtt, current, now=now)
    site_of = {n.id: n.site_id for n in nodes}
    changed: dict[int, list[str]] = {}
    for item in live:
        assert item.id is not None
        placed: dict[str, dict[str, int]] = {}
        for node_id, count in sorted(Counter(result.assignments.get(item.id, [])).items()):
            placed.setdefault(str(site_of[node_id]), {})[str(node_id)] = count
        events = [e.reason for e in result.events if e.slice_id == item.id]
        if placed != item.overflow:
            reason = f"overflow {item.overflow or '{}'} -> {placed}: " + ("; ".join(events) or "home has room again")
            _event(session, item, reason, sum(map(sum, (v.values() for v in item.overflow.values()))),
                   sum(map(sum, (v.values() for v in placed.values()))))  # fmt: skip
            changed[item.id] = [reason]
            log.info("slice %s: %s", item.slug, reason)
            item.overflow = placed
            item.updated_at = utcnow()
        refused = [e.reason for e in result.events if e.slice_id == item.id and e.kind is scheduler.EventKind.LATENCY]
        if refused and not placed:
            _event_once(session, item, "overflow refused: " + "; ".join(refused))
    session.commit()
    return changed


def _event(session: Session, item: Slice, reason: str, before: int, after: int) -> None:
    assert item.id is not None
    session.add(ScaleEvent(
        tenant_id=item.tenant_id, slice_id=item.id, kind=ScaleKind.OVERFLOW, min_before=item.min_replicas,
        min_after=item.min_replicas, max_before=before, max_after=after, reason=reason[:2000],
    ))  # fmt: skip


def _event_once(session: Session, item: Slice, reason: str) -> None:
    """A refusal is said once, not on every planner period."""
    last = session.exec(
        select(ScaleEvent.reason).where(ScaleEvent.slice_id == item.id, ScaleEvent.kind == ScaleKind.OVERFLOW)
        .order_by(col(ScaleEvent.id).desc()).limit(1)
    ).first()  # fmt: skip
    if last != reason[:2000]:
        _event(session, item, reason, 0, 0)
