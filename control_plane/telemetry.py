"""Stores what the slices and robots report on a site broker: line minutes, failed parts, robot status.

``ingest`` takes a batch of (topic, payload) messages from one site's broker
(see ``monitor``) and writes them in one transaction. Names in topics are
resolved within the site only, and the broker's ACLs let a slice publish only
its own tenant's telemetry topics, so one tenant cannot write into another's
numbers. Telemetry windows of several ingress replicas add up per minute.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlmodel import Session, col, delete, select

from control_plane.models import FailedPart, Line, LineMinute, Robot, Tenant, as_utc, utcnow
from edge_node import wire

log = logging.getLogger(__name__)


@dataclass
class IngestCounts:
    telemetry: int = 0
    status: int = 0
    rejected: int = 0
    failed_parts: int = 0

    def add(self, other: IngestCounts) -> None:
        self.telemetry += other.telemetry
        self.status += other.status
        self.rejected += other.rejected
        self.failed_parts += other.failed_parts


@dataclass
class _Minute:
    frames: int = 0
    fails: int = 0
    errors: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(wire.LATENCY_BUCKETS_MS) + 1))
    covered_from: float = float("inf")

    def add(self, t: wire.Telemetry) -> None:
        self.covered_from = min(self.covered_from, t.start)
        self.frames += t.frames
        self.fails += t.fails
        self.errors += t.errors
        for index, count in enumerate(t.latency_ms_histogram[: len(self.histogram)]):
            self.histogram[index] += count


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class _Names:
    """(tenant slug, line slug) -> Line of this site, looked up once per batch."""

    def __init__(self, session: Session, site_id: int) -> None:
        rows = session.exec(select(Line, Tenant).where(Line.site_id == site_id, Line.tenant_id == Tenant.id)).all()
        self.lines = {(tenant.slug, line.slug): line for line, tenant in rows}


def ingest(session: Session, site_id: int, messages: list[tuple[str, bytes]], *, keep_failed: int,
           source: str = "") -> IngestCounts:  # fmt: skip
    """Write one batch of a site's telemetry and status messages; unknown or malformed ones are counted.

    ``source`` names the writer (one control plane instance): its line minutes are its own rows.
    """
    names, counts = _Names(session, site_id), IngestCounts()
    minutes: dict[tuple[int, datetime], _Minute] = defaultdict(_Minute)
    last_frame: dict[tuple[int, str], float] = {}
    touched: set[int] = set()
    for topic, payload in messages:
        parts = topic.split("/")
        line = names.lines.get((parts[1], parts[2])) if len(parts) >= 4 else None
        if line is None or line.id is None:
            counts.rejected += 1
            continue
        if parts[0] == wire.TOPIC_ROOT and len(parts) == 5 and parts[4] == wire.TopicKind.STATUS.value:
            counts.status += _status(session, line, parts[3], payload)
            continue
        try:
            report = wire.Telemetry.model_validate_json(payload)
        except ValidationError as e:
            log.warning("malformed telemetry on %s: %s", topic, e.errors()[:1])
            counts.rejected += 1
            continue
        counts.telemetry += 1
        minutes[(line.id, _utc(report.end).replace(second=0, microsecond=0))].add(report)
        for robot, activity in report.robots.items():
            key = (line.id, robot)
            last_frame[key] = max(last_frame.get(key, 0.0), activity.last_frame_at)
        for part in report.failed_parts:
            session.add(_failed_part(line, part))
            counts.failed_parts += 1
            touched.add(line.id)
    _merge_minutes(session, names, minutes, source)
    _robots_seen(session, last_frame)
    session.flush()
    for line_id in touched:
        _prune(session, line_id, keep_failed)
    session.commit()
    return counts


def _status(session: Session, line: Line, robot_slug: str, payload: bytes) -> int:
    robot = session.exec(select(Robot).where(Robot.line_id == line.id, Robot.slug == robot_slug)).first()
    text = payload.decode(errors="replace").strip().lower()
    if robot is None or text not in ("online", "offline"):
        return 0
    connected = text == "online"
    if robot.connected is not connected:
        robot.connected, robot.connection_changed_at = connected, utcnow()
        session.add(robot)
    return 1


def _failed_part(line: Line, part: wire.FailedPart) -> FailedPart:
    try:
        thumb = base64.b64decode(part.thumbnail_jpeg_b64, validate=True)
    except (binascii.Error, ValueError):
        thumb = b""
    assert line.id is not None
    return FailedPart(tenant_id=line.tenant_id, line_id=line.id, robot=part.robot[:63], frame_id=part.frame_id[:256],
                      at=_utc(part.at), defect_class=part.defect_class, score=part.score,
                      thumbnail=thumb if thumb.startswith(b"\xff\xd8") else b"")  # fmt: skip


def _merge_minutes(session: Session, names: _Names, minutes: dict[tuple[int, datetime], _Minute],
                   source: str) -> None:  # fmt: skip
    tenant_of = {line.id: line.tenant_id for line in names.lines.values()}
    for (line_id, minute), value in minutes.items():
        same = (LineMinute.line_id == line_id, LineMinute.minute == minute, LineMinute.source == source)
        row = session.exec(select(LineMinute).where(*same)).first()
        if row is None:
            row = LineMinute(tenant_id=tenant_of[line_id], line_id=line_id, minute=minute, source=source,
                             latency_histogram=[0] * len(value.histogram))  # fmt: skip
        row.frames += value.frames
        row.fails += value.fails
        row.errors += value.errors
        first = _utc(value.covered_from)
        if row.covered_from is None or as_utc(row.covered_from) > first:
            row.covered_from = first
        row.latency_histogram = [a + b for a, b in zip(row.latency_histogram, value.histogram, strict=False)]
        session.add(row)


def _robots_seen(session: Session, last_frame: dict[tuple[int, str], float]) -> None:
    """Each robot's newest frame time; the batch's robots are read in one query, not one per robot."""
    line_ids = {line_id for line_id, _ in last_frame}
    robots = session.exec(select(Robot).where(col(Robot.line_id).in_(line_ids))).all() if line_ids else []
    by_name = {(robot.line_id, robot.slug): robot for robot in robots}
    for key, ts in last_frame.items():
        robot = by_name.get(key)
        if robot is not None and (robot.last_frame_at is None or as_utc(robot.last_frame_at) < _utc(ts)):
            robot.last_frame_at = _utc(ts)
            session.add(robot)


def prune_history(session: Session, before: datetime) -> int:
    """Delete line minutes older than ``before``; returns how many went."""
    result = session.exec(delete(LineMinute).where(col(LineMinute.minute) < before))
    session.commit()
    return int(result.rowcount or 0)


def _prune(session: Session, line_id: int, keep: int) -> None:
    """Keep the newest ``keep`` failed parts of a line (thumbnails are for looking, not for archives)."""
    newest = select(FailedPart.id).where(FailedPart.line_id == line_id).order_by(col(FailedPart.id).desc())
    cutoff = session.exec(newest.offset(keep).limit(1)).first()
    if cutoff is not None:
        session.exec(delete(FailedPart).where(col(FailedPart.line_id) == line_id, col(FailedPart.id) <= cutoff))
