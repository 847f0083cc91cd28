"""Stores what the slices and robots report on a site broker: line minutes, failed parts, robot status.

``ingest`` takes a batch of (topic, payload) messages from one site's broker
(see ``monitor``) and writes them in one transaction. Names in topics are
resolved within the site only, and the broker's ACLs let a slice publish only
its own tenant's telemetry topics, so one tenant cannot write into another's
numbers. Telemetry windows of several ingress replicas add up per minute.
A rollout's reports (``contracts.slice_spec.RolloutReport``) travel on the same
topics and go to ``rollouts.record_report``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlmodel import Session, col, delete, select

from contracts import wire
from contracts.slice_spec import RolloutReport
from control_plane import metering, rollouts
from control_plane.models import FailedPart, Line, LineMinute, Robot, Slice, Tenant, as_utc, utcnow

log = logging.getLogger(__name__)


@dataclass
class IngestCounts:
    telemetry: int = 0
    status: int = 0
    rejected: int = 0
    failed_parts: int = 0
    rollout: int = 0

    def add(self, other: IngestCounts) -> None:
        self.telemetry += other.telemetry
        self.status += other.status
        self.rejected += other.rejected
        self.failed_parts += other.failed_parts
        self.rollout += other.rollout


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class _Names:
    """(tenant slug, line slug) -> Line of this site, looked up once per batch."""

    def __init__(self, session: Session, site_id: int) -> None:
        rows = session.exec(select(Line, Tenant).where(Line.site_id == site_id, Line.tenant_id == Tenant.id)).all()
        self.lines = {(tenant.slug, line.slug): line for line, tenant in rows}


class _Refused(ValueError):
    """A message this site's telemetry cannot hold: unknown line, wrong topic, or a report out of bounds."""


def ingest(session: Session, site_id: int, messages: list[tuple[str, bytes]], *, keep_failed: int,
           source: str = "") -> IngestCounts:  # fmt: skip
    """Write one batch of a site's telemetry and status messages; unknown or malformed ones are counted.

    Each message is written in its own savepoint: one that fails validation or the database
    (a tenant's buggy or hostile ingress) is rolled back, logged and counted as rejected, and
    the rest of the batch, every other tenant's reports included, is still stored.
    ``source`` names the writer (one control plane instance): its line minutes are its own rows.
    """
    names, counts = _Names(session, site_id), IngestCounts()
    touched: set[int] = set()
    for topic, payload in messages:
        try:
            with session.begin_nested():
                done = _one(session, names, topic, payload, source)
                session.flush()
        except _Refused as e:
            log.warning("telemetry refused on %s: %s", topic[:200], e)
            counts.rejected += 1
            continue
        except Exception:  # the database refused it; the savepoint undid its writes
            log.exception("telemetry on %s could not be stored", topic[:200])
            counts.rejected += 1
            continue
        counts.add(done)
        if done.failed_parts:
            touched.add(_line_of(names, topic).id or 0)
    for line_id in touched:
        _prune(session, line_id, keep_failed)
    session.commit()
    return counts


def _line_of(names: _Names, topic: str) -> Line:
    parts = topic.split("/")
    line = names.lines.get((parts[1], parts[2])) if len(parts) >= 4 else None
    if line is None or line.id is None:
        raise _Refused("no such line on this site")
    return line


def _one(session: Session, names: _Names, topic: str, payload: bytes, source: str) -> IngestCounts:
    """Write one message (inside the caller's savepoint); ``_Refused`` if it is not one this site takes."""
    line = _line_of(names, topic)
    parts = topic.split("/")
    if parts[0] == wire.TOPIC_ROOT and len(parts) == 5 and parts[4] == wire.TopicKind.STATUS.value:
        return IngestCounts(status=_status(session, line, parts[3], payload))
    if rollouts_report := _rollout_report(payload):
        return IngestCounts(rollout=_rollout(session, line, parts[3], rollouts_report))
    try:
        report = wire.Telemetry.model_validate_json(payload)
    except ValidationError as e:
        first = e.errors(include_input=False)[:1]
        raise _Refused(f"malformed report: {first}") from e
    _merge_minute(session, line, report, source)
    metering.guarded(session, "verdicts", lambda: metering.record_verdicts(session, line, parts[3], report))
    _robots_seen(session, line, report)
    for part in report.failed_parts:
        session.add(_failed_part(line, part))
    return IngestCounts(telemetry=1, failed_parts=len(report.failed_parts))


def _rollout_report(payload: bytes) -> RolloutReport | None:
    """A rollout report (``RolloutReport``, sent beside telemetry windows on the same topic), or None."""
    if not payload.startswith(b'{"kind":"rollout"'):
        return None
    try:
        return RolloutReport.model_validate_json(payload)
    except ValidationError as e:
        raise _Refused(f"malformed rollout report: {e.errors(include_input=False)[:1]}") from e


def _rollout(session: Session, line: Line, app_name: str, report: RolloutReport) -> int:
    """Count a rollout report of one of the line's tenant's slices; it may step the rollout or roll it back."""
    slug = app_name.removeprefix(f"t{line.tenant_id}-")
    item = session.exec(select(Slice).where(Slice.tenant_id == line.tenant_id, Slice.slug == slug)).first()
    if item is None or item.app_name != app_name:
        raise _Refused("rollout report of no slice of this tenant")
    return int(rollouts.record_report(session, item, report, utcnow()))


def _status(session: Session, line: Line, robot_slug: str, payload: bytes) -> int:
    robot = session.exec(select(Robot).where(Robot.line_id == line.id, Robot.slug == robot_slug)).first()
    text = payload[:16].decode(errors="replace").strip().lower()
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
    return FailedPart(tenant_id=line.tenant_id, line_id=line.id, robot=part.robot, frame_id=part.frame_id,
                      at=_utc(part.at), defect_class=part.defect_class, score=part.score,
                      thumbnail=thumb if thumb.startswith(b"\xff\xd8") else b"",
                      location=part.location.model_dump(mode="json") if part.location else None)  # fmt: skip


def _merge_minute(session: Session, line: Line, report: wire.Telemetry, source: str) -> None:
    """Add one report to its line minute (this instance's row); replicas' windows add up."""
    assert line.id is not None
    minute = _utc(report.end).replace(second=0, microsecond=0)
    same = (LineMinute.line_id == line.id, LineMinute.minute == minute, LineMinute.source == source)
    row = session.exec(select(LineMinute).where(*same)).first()
    buckets = len(wire.LATENCY_BUCKETS_MS) + 1
    if row is None:
        row = LineMinute(tenant_id=line.tenant_id, line_id=line.id, minute=minute, source=source,
                         latency_histogram=[0] * buckets)  # fmt: skip
    row.frames += report.frames
    row.fails += report.fails
    row.errors += report.errors
    first = _utc(report.start)
    if row.covered_from is None or as_utc(row.covered_from) > first:
        row.covered_from = first
    histogram = report.latency_ms_histogram + [0] * (buckets - len(report.latency_ms_histogram))
    row.latency_histogram = [a + b for a, b in zip(row.latency_histogram, histogram, strict=False)]
    session.add(row)


def _robots_seen(session: Session, line: Line, report: wire.Telemetry) -> None:
    """Each robot's newest frame time; the report's robots are read in one query, not one per robot."""
    if not report.robots:
        return
    query = select(Robot).where(Robot.line_id == line.id, col(Robot.slug).in_(list(report.robots)))
    for robot in session.exec(query).all():
        ts = _utc(report.robots[robot.slug].last_frame_at)
        if robot.last_frame_at is None or as_utc(robot.last_frame_at) < ts:
            robot.last_frame_at = ts
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
