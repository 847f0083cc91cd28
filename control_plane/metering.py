"""Metering from what really ran (issue 13, section 2): usage records from heartbeats and telemetry.

Capacity comes from the head agent's heartbeat, which reports per slice the replicas Serve has in each
state; only ``RUNNING`` replicas of the model deployments count, never the slice's requested bounds.
How a heartbeat becomes replica-seconds:

- The heartbeat at ``now`` covers ``[start, now)``, where ``start`` is the node's previous heartbeat,
  but at most ``heartbeat_timeout_s`` before ``now``. Consecutive heartbeats of one node therefore
  partition time, so no second is billed twice; and after a silence longer than the timeout (an agent
  restart, a network cut) only the last ``timeout`` seconds are billed: the gap is billed as nothing.
  A node's first heartbeat (no previous one) bills nothing.
- The silent part of such a gap, ``[previous heartbeat, now - timeout)``, is stored as one ``gap`` record
  per live slice the node served (RUNNING model replicas in the report, or placed on the node): no
  replica-seconds, ``window_s`` the silent seconds (at most ``GAP_MAX_S``), keyed
  ``usage_key(agent, slice app name, node-<id>/gap, previous heartbeat)``, so a replayed heartbeat
  stores it once. Rating never bills a gap; a bill shows it, so that a missing hour reads as the
  agent's silence, not as a slice that cost nothing. A gap record starts at the previous heartbeat
  and may span minutes, hours or days, unlike the minute pieces of capacity.
- A heartbeat the head's agent kept while the control plane was away (``Heartbeat.observed_at``, sent
  later, oldest first) covers ``[previous heartbeat, observed_at)`` the same way, ``observed_at`` clamped
  between the two: the outage is billed as it ran, and no gap is stored for it.
- The covered interval is cut at minute boundaries (whole UTC seconds), so no record crosses a minute
  or an hour and rating by hour never splits one. Each piece is one record: running replicas x its
  seconds, keyed ``usage_key(agent, slice app name, node-<id>, piece start)``.
- A retried or replayed report with the same interval has the same keys and is stored once; a late or
  reordered one covers other seconds, so it has other keys and is stored once too. The previous
  heartbeat is read from the database, so a control plane restart between two reports changes nothing.

Verdicts come from the ingress's telemetry: one message is one ingress replica's window of one line.
Its record is keyed by (slice, line/replica, the window's exact start), so the same message delivered
twice is stored once while the windows of several replicas (or several windows in one minute) add up.
``window_start`` is the window's own start, so the verdicts belong to the lease in force when the window
began (filing them under the minute of the window's end put verdicts given after a lease change under
the lease before it, where a usage product never billed them); ``window_s`` is the window's length.
The counts are ``pass``, ``fail``, ``errors`` (the total) and ``error_codes`` (``{code: n}``), from which
rating bills the codes a usage product counts (``pricing.ROBOT_ERRORS``: the robot's bad input, never
``internal``). An older ingress sends no ``error_codes``: its errors are stored as an empty mapping, so
they are never billed (an unknown code is not assumed to be the robot's fault).

Every insert is ``INSERT ... ON CONFLICT (key) DO NOTHING`` in the database's own dialect. The hooks run
through ``guarded``: in a savepoint, and a failure is logged and counted (``FAILURES``), never raised,
so metering can neither fail a heartbeat nor lose telemetry.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import sqlite
from sqlmodel import Session, select

from contracts import wire
from contracts.agent_api import SliceReport
from control_plane.models import Line, Node, Slice, UsageRecord, as_utc, utcnow
from control_plane.pricing import Source, usage_key
from control_plane.states import SliceStatus

log = logging.getLogger(__name__)

CAPACITY = "capacity"
VERDICTS = "verdicts"
GAP = "gap"
GAP_MAX_S = 31 * 86_400
"""Longest gap one record states; a node silent for longer (switched off for months) shows 31 days."""
FAILURES = [0]
"""Metering calls that raised (logged; the heartbeat or telemetry they came with was still stored)."""


def guarded(session: Session, what: str, write: Callable[[], Any]) -> None:
    """Run ``write`` in a savepoint; a failure rolls back only its own rows, is logged and counted."""
    try:
        with session.begin_nested():
            write()
            session.flush()
    except Exception:
        FAILURES[0] += 1
        log.exception("metering %s failed; the report itself was kept", what)


COLUMNS = ("key", "source", "tenant_id", "slice_id", "node_id", "line_id", "window_start", "window_s",
           "replica_seconds", "verdicts")  # fmt: skip
_UNNEST = text(
    "INSERT INTO usagerecord (key, source, tenant_id, slice_id, node_id, line_id, window_start, window_s, "
    "replica_seconds, verdicts, received_at) "
    "SELECT k, s, t, sl, n, l, w, ws, rs, CAST(v AS json), :now FROM unnest("
    "CAST(:key AS text[]), CAST(:source AS text[]), CAST(:tenant_id AS integer[]), CAST(:slice_id AS integer[]), "
    "CAST(:node_id AS integer[]), CAST(:line_id AS integer[]), CAST(:window_start AS timestamptz[]), "
    "CAST(:window_s AS integer[]), CAST(:replica_seconds AS bigint[]), CAST(:verdicts AS text[])"
    ") AS u(k, s, t, sl, n, l, w, ws, rs, v) ON CONFLICT (key) DO NOTHING RETURNING id"
)


def insert_once(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert records whose key is new; returns how many were new (duplicates are dropped silently).

    One statement whatever the number of rows: on PostgreSQL the rows travel as one array per column
    (``unnest``), on SQLite as the parameters of one prepared INSERT run for each row. (A multi-row
    VALUES statement compiled afresh for every call cost about half a millisecond a row.)"""
    if not rows:
        return 0
    connection, now = session.connection(), utcnow()
    if connection.dialect.name == "postgresql":
        columns = {name: [row.get(name) for row in rows] for name in COLUMNS}
        columns["verdicts"] = [json.dumps(row.get("verdicts") or {}) for row in rows]
        return len(connection.execute(_UNNEST, {**columns, "now": now}).all())  # RETURNING: only the new ones
    statement = sqlite.insert(UsageRecord).on_conflict_do_nothing(index_elements=["key"])
    result = connection.execute(statement, [{**row, "received_at": now} for row in rows])  # executemany
    return int(result.rowcount)  # sqlite3 sums the rows each execution inserted (0 for an ignored duplicate)


def running_replicas(report: SliceReport) -> int:
    """RUNNING replicas of the slice's model deployments, as Serve reports them (the ingress is ours)."""
    return sum(int(states.get("RUNNING", 0)) for name, states in report.replicas.items() if name.startswith("model"))


def minute_pieces(start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """``[start, end)`` in whole UTC seconds, cut at minute boundaries: [(piece start, seconds), ...]."""
    first = int(as_utc(start).timestamp())
    last = int(as_utc(end).timestamp())
    pieces = []
    while first < last:
        stop = min(last, (first // 60 + 1) * 60)
        pieces.append((datetime.fromtimestamp(first, UTC), stop - first))
        first = stop
    return pieces


def record_capacity(session: Session, node: Node, reports: Iterable[SliceReport], previous: datetime | None,
                    now: datetime, timeout_s: float) -> int:  # fmt: skip
    """Store the replica-seconds one heartbeat (at ``now``, the one before at ``previous``) reports, and
    the gap before it if the node was silent for longer than ``timeout_s``; returns how many records were new."""
    if previous is None or node.id is None:
        return 0  # a first heartbeat: nothing known to have run before it
    now, previous = as_utc(now), as_utc(previous)
    start = max(previous, now - timedelta(seconds=timeout_s))
    pieces = minute_pieces(start, now)
    rows, served = [], {}
    for report in reports:
        running = running_replicas(report)
        item = session.get(Slice, report.slice_id)
        if running <= 0 or item is None or not _served_here(item, node):
            continue  # another site's slice is not this node's to bill
        assert item.id is not None
        served[item.id] = item
        for piece_start, seconds in pieces:
            rows.append(dict(
                key=usage_key(Source.AGENT, item.app_name, f"node-{node.id}", piece_start), source=CAPACITY,
                tenant_id=item.tenant_id, slice_id=item.id, node_id=node.id, window_start=piece_start,
                window_s=seconds, replica_seconds=running * seconds, verdicts={},
            ))  # fmt: skip
    silent_s = int(start.timestamp()) - int(previous.timestamp())  # the same whole seconds as minute_pieces
    if silent_s > 0:
        rows.extend(_gaps(session, node, served, previous, silent_s))
    return insert_once(session, rows)


def record_fit(session: Session, item: Slice, fit_id: int, node_id: int | None, started: datetime,
               cpu_s: float) -> int:  # fmt: skip
    """A model fit's CPU seconds as capacity usage of the slice it ran in; returns how many records were new.

    The fit held one CPU for ``cpu_s`` seconds from ``started``; a replica of the slice holds
    ``cpus_per_replica``, so the fit is ``ceil(cpu_s / cpus_per_replica)`` replica-seconds: it costs what
    replicas holding the same CPU for as long would. Those are spread over ``[started, started + cpu_s)``
    cut at minutes like a heartbeat's (each piece its share, the pieces summing exactly), keyed by the fit
    (``usage_key(agent, slice app name, fit-<id>, piece start)``), so metering a fit again stores nothing.
    """
    seconds = math.ceil(cpu_s)
    if seconds <= 0 or item.id is None:
        return 0
    total = math.ceil(Decimal(repr(cpu_s)) / Decimal(repr(item.cpus_per_replica)))
    start = as_utc(started).replace(microsecond=0)
    rows, done_s, billed = [], 0, 0
    for piece_start, piece_s in minute_pieces(start, start + timedelta(seconds=seconds)):
        done_s += piece_s
        share = total * done_s // seconds - billed  # cumulative, so the pieces add up to ``total``
        billed += share
        rows.append(dict(
            key=usage_key(Source.AGENT, item.app_name, f"fit-{fit_id}", piece_start), source=CAPACITY,
            tenant_id=item.tenant_id, slice_id=item.id, node_id=node_id, window_start=piece_start,
            window_s=piece_s, replica_seconds=share, verdicts={},
        ))  # fmt: skip
    return insert_once(session, rows)


def _served_here(item: Slice, node: Node) -> bool:
    """The slice's home site, or a site that runs its overflow now (``Slice.overflow``)."""
    here = item.site_id == node.site_id or str(node.site_id) in item.overflow
    return here and item.status != SliceStatus.DELETED


def _gaps(session: Session, node: Node, served: dict[int, Slice], previous: datetime,
          silent_s: int) -> list[dict[str, Any]]:  # fmt: skip
    """One unbilled ``gap`` record per slice that ran on the node (reported running, or placed on it)."""
    placed = session.exec(select(Slice).where(Slice.site_id == node.site_id, Slice.status != SliceStatus.DELETED))
    slices = {s.id: s for s in placed if s.id is not None and int(s.placement.get(str(node.id), 0)) > 0}
    gap_start = datetime.fromtimestamp(int(previous.timestamp()), UTC)
    rows = []
    for slice_id, item in sorted({**slices, **served}.items()):
        rows.append(dict(
            key=usage_key(Source.AGENT, item.app_name, f"node-{node.id}/gap", gap_start), source=GAP,
            tenant_id=item.tenant_id, slice_id=slice_id, node_id=node.id, window_start=gap_start,
            window_s=min(silent_s, GAP_MAX_S), replica_seconds=0, verdicts={},
        ))  # fmt: skip
    return rows


def record_verdicts(session: Session, line: Line, app_name: str, report: wire.Telemetry) -> int:
    """Store one telemetry message's verdicts as usage of the slice (its topic names ``Slice.app_name``)."""
    slug = app_name.removeprefix(f"t{line.tenant_id}-")
    item = session.exec(select(Slice).where(Slice.tenant_id == line.tenant_id, Slice.slug == slug)).first()
    if item is None or item.id is None or line.id is None or item.app_name != app_name:
        log.warning("verdicts of line %s from unknown slice %r not metered", line.id, app_name[:80])
        return 0
    window = datetime.fromtimestamp(report.start, UTC)
    counts: dict[str, Any] = {"pass": report.frames - report.fails, "fail": report.fails, "errors": report.errors}
    counts["error_codes"] = {code.value: n for code, n in sorted(report.error_codes.items()) if n > 0}
    row = dict(
        key=usage_key(Source.INGRESS, item.app_name, f"{line.slug}/{report.replica}", window), source=VERDICTS,
        tenant_id=item.tenant_id, slice_id=item.id, line_id=line.id, window_start=window,
        window_s=max(0, round(report.end - report.start)),
        replica_seconds=0, verdicts=counts,
    )  # fmt: skip
    return insert_once(session, [row])
