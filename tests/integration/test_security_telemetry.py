"""Issue 11 item 8: one tenant's malformed telemetry must not lose the other tenants' reports.

The control plane's site monitor writes a site's telemetry in batches. Before the fix one
message with a window end of 1e20 (or NaN, or a count too big for the database) failed the
whole site's batch, so every tenant on that site lost its numbers. Here globex's slice, with
its own broker credential on its own telemetry topic (which the broker ACLs allow), publishes
malformed reports in the same batch as acme's good one; acme's numbers must still appear on
its dashboard and every malformed report must be counted as rejected on ``/metrics``.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, select

from contracts import wire
from control_plane.models import LineMinute
from control_plane.telemetry import IngestCounts
from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.test_cp_dashboard import _publish, _report
from tests.waiting import wait_until


def _bad_reports() -> list[bytes]:
    """Reports a buggy or hostile ingress could publish; each must be refused on its own."""
    good = json.loads(_report(5, 1, latency_ms=20))
    now = time.time()

    def variant(**changes: Any) -> bytes:
        return json.dumps({**good, **changes}).encode()

    huge = "x" * 200_000
    part = {**good["failed_parts"][0], "defect_class": huge, "frame_id": huge}
    return [
        variant(end=1e20),  # a window end no datetime can hold
        variant(start=float("nan")),  # json.dumps writes NaN, which JSON parsers accept
        variant(end=float("inf")),
        variant(frames=10**30),  # beyond any integer column
        variant(replica=huge),
        variant(failed_parts=[part]),  # longer than the failed-part columns
        variant(latency_ms_histogram=[1] * 100_000),  # far more buckets than LATENCY_BUCKETS_MS
        variant(robots={f"r{k}": {"frames": 1, "last_frame_at": now} for k in range(20_000)}),
        variant(robots={"cam-1": {"frames": -5, "last_frame_at": 1e300}}),
    ]


def _rejected(metrics: str) -> float:
    match = re.search(r'lineside_telemetry_messages_total\{kind="rejected"\} ([0-9.e+]+)', metrics)
    assert match, metrics
    return float(match.group(1))


def test_malformed_telemetry_of_one_tenant_leaves_the_others_reports(control_plane: ControlPlane) -> None:
    cp, a, b = control_plane, control_plane.a, control_plane.b
    monitors = cp.client.app.state.monitors  # type: ignore[attr-defined]
    wait_until(lambda: cp.site_id in monitors.subscribed, 20, "the control plane to subscribe to the site's telemetry")
    rejected_before = _rejected(cp.client.get("/metrics").text)
    bad = _bad_reports()
    # Hold the monitor's writes until every message is queued, so that they are one batch.
    monitors.flush = lambda: IngestCounts()
    try:
        probes = [_publish(cp, b, wire.telemetry_topic("globex", "line-1", f"t{b.tenant_id}-inspect"), p) for p in bad]
        probes.append(
            _publish(cp, a, wire.telemetry_topic("acme", "line-1", "t1-inspect"), _report(40, 4, latency_ms=40))
        )
        wait_until(lambda: monitors.inbox.qsize() == len(bad) + 1, 20, "the monitor to receive every report")
    finally:
        del monitors.flush
    for probe in probes:
        probe.close()

    tile = wait_until(lambda: ok(cp.client.get("/dashboard/lines", headers=a.pm))[0]["frames_5min"] == 40, 20,
                      "acme's report to be stored next to globex's malformed ones")  # fmt: skip
    assert tile
    assert len(ok(cp.client.get(f"/lines/{a.line_id}/failed-parts", headers=a.pm))) == 4
    assert ok(cp.client.get("/dashboard/lines", headers=b.pm))[0]["frames_5min"] == 0  # none of globex's counted
    assert _rejected(cp.client.get("/metrics").text) - rejected_before == len(bad)


def test_a_report_the_database_refuses_is_rolled_back_alone(control_plane: ControlPlane, database_url: str) -> None:
    """A report within the schema that the database still refuses (PostgreSQL's 32-bit counts overflow
    when a hostile ingress sends many full windows in one minute) is undone in its savepoint only."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite integers are 64-bit: the sum fits, nothing is refused")
    cp, a, b = control_plane, control_plane.a, control_plane.b
    monitors = cp.client.app.state.monitors  # type: ignore[attr-defined]
    wait_until(lambda: cp.site_id in monitors.subscribed, 20, "the control plane to subscribe to the site's telemetry")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        for minute in (now, now + timedelta(minutes=1)):  # the report's minute, even across a minute boundary
            empty = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
            session.add(LineMinute(tenant_id=b.tenant_id, line_id=b.line_id, minute=minute, source=monitors.source,
                                   frames=2**31 - 10, latency_histogram=empty))  # fmt: skip
        session.commit()
    rejected_before = _rejected(cp.client.get("/metrics").text)
    monitors.flush = lambda: IngestCounts()
    try:
        globex = wire.telemetry_topic("globex", "line-1", f"t{b.tenant_id}-inspect")
        probes = [
            _publish(cp, b, globex, _report(40, 0, latency_ms=5)),
            _publish(cp, a, wire.telemetry_topic("acme", "line-1", "t1-inspect"), _report(40, 4, latency_ms=40)),
        ]
        wait_until(lambda: monitors.inbox.qsize() == 2, 20, "the monitor to receive both reports")
    finally:
        del monitors.flush
    for probe in probes:
        probe.close()
    wait_until(lambda: ok(cp.client.get("/dashboard/lines", headers=a.pm))[0]["frames_5min"] == 40, 20, "acme's report")
    assert _rejected(cp.client.get("/metrics").text) - rejected_before == 1
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        frames = session.exec(select(LineMinute.frames).where(LineMinute.line_id == b.line_id)).all()
    assert sorted(frames) == [2**31 - 10] * 2  # globex's report left nothing behind
