"""Metering from what really ran (issue 13, section 2), on SQLite and PostgreSQL.

Capacity is replica-seconds from the RUNNING replicas a heartbeat reports; each record's key is
deterministic, so a repeated, reordered or late report is stored once, a silent agent's gap bills
nothing (it is stored as a ``gap`` record that rating leaves alone), and a control plane restart
neither loses nor doubles records. Verdicts come from the ingress's telemetry, once per message even
when the broker delivers it twice, with error answers per code so that a usage product bills the
robot's bad input and not ``internal`` errors.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from contracts import wire
from contracts.agent_api import SliceReport
from control_plane import billing, catalogue, metering, pricing, telemetry
from control_plane.api.routes import agent as agent_routes
from control_plane.app import create_app
from control_plane.models import Charge, ChargedUsage, Node, Slice, UsageRecord
from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.test_security_nodes import join

T0 = datetime(2026, 12, 1, 8, 0, 40, tzinfo=UTC)


def _engine(cp: ControlPlane) -> Any:
    return cp.client.app.state.engine  # type: ignore[attr-defined]


def _capacity(cp: ControlPlane, slice_id: int) -> list[UsageRecord]:
    with Session(_engine(cp)) as session:
        query = select(UsageRecord).where(UsageRecord.slice_id == slice_id, UsageRecord.source == metering.CAPACITY)
        return list(session.exec(query.order_by(col(UsageRecord.window_start))).all())


def _report(slice_id: int, running: int, generation: int = 0) -> dict[str, Any]:
    replicas = {"model": {"RUNNING": running, "STARTING": 5}, "ingress": {"RUNNING": 1}}
    return {"slice_id": slice_id, "generation": generation, "healthy": True, "replicas": replicas}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The heartbeat route's clock, set by the test (a real time, so nodes are not marked offline)."""
    now = [datetime.now(UTC)]
    monkeypatch.setattr(agent_routes, "utcnow", lambda: now[0])
    return now


def _with_timeout(cp: ControlPlane, seconds: float) -> None:
    cp.client.app.state.settings = cp.settings.model_copy(update={"heartbeat_timeout_s": seconds})  # type: ignore[attr-defined]


def test_a_heartbeat_bills_running_replicas_times_elapsed_seconds(
    control_plane: ControlPlane, clock: list[datetime]
) -> None:
    cp, slice_id = control_plane, control_plane.a.ids["slice"]
    _with_timeout(cp, 60)
    _, agent = join(cp, "head")
    ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [_report(slice_id, 0)]}, headers=agent))
    assert _capacity(cp, slice_id) == []  # nothing running: nothing billed
    clock[0] += timedelta(seconds=20)
    ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [_report(slice_id, 3)]}, headers=agent))
    records = _capacity(cp, slice_id)
    assert sum(r.replica_seconds for r in records) == 3 * 20  # RUNNING model replicas only, never STARTING
    assert all(r.window_start.second + r.window_s <= 60 for r in records)  # no record crosses a minute

    # The control plane restarts: a new app on the same database keeps the records and reads the
    # node's previous heartbeat from the database, so the next heartbeat bills only its own seconds.
    before = [(r.key, r.replica_seconds) for r in records]
    app = create_app(cp.settings.model_copy(update={"heartbeat_timeout_s": 60}))
    try:
        with TestClient(app) as second:
            clock[0] += timedelta(seconds=10)
            ok(second.post("/agent/v1/heartbeat", json={"slices": [_report(slice_id, 2)]}, headers=agent))
    finally:
        app.state.engine.dispose()
    after = [(r.key, r.replica_seconds) for r in _capacity(cp, slice_id)]
    assert set(before) <= set(after)
    assert sum(s for _, s in after) == 3 * 20 + 2 * 10


def test_repeated_reordered_late_and_restarted_reports_are_stored_once_each(control_plane: ControlPlane) -> None:
    cp, slice_id = control_plane, control_plane.a.ids["slice"]
    node_id, _ = join(cp, "head")
    report = [SliceReport.model_validate(_report(slice_id, 2))]

    def beat(previous: datetime | None, now: datetime, timeout: float = 30) -> int:
        with Session(_engine(cp)) as session:
            node = session.get(Node, node_id)
            assert node is not None
            stored = metering.record_capacity(session, node, report, previous, now, timeout)
            session.commit()
            return stored

    t1, t2, t3 = T0 + timedelta(seconds=10), T0 + timedelta(seconds=30), T0 + timedelta(seconds=45)
    assert beat(t2, t3) == 1  # [08:01:10, 08:01:25): a later report arriving first
    assert beat(T0, t1) == 1  # reordered: [08:00:40, 08:00:50)
    assert beat(T0, t1) == 0  # repeated: same keys, stored once
    assert beat(t1, t2) == 2  # late: [08:00:50, 08:01:10) crosses a minute, so two pieces
    assert beat(t1, t2) == 0
    assert sum(r.replica_seconds for r in _capacity(cp, slice_id)) == 2 * 45

    # The agent restarts and is silent for 5 minutes: only the heartbeat timeout before its next
    # heartbeat is billed; the gap is billed as nothing.
    restart = t3 + timedelta(minutes=5)
    assert beat(t3, restart) >= 1
    assert beat(t3, restart) == 0
    assert sum(r.replica_seconds for r in _capacity(cp, slice_id)) == 2 * 45 + 2 * 30
    assert beat(None, restart + timedelta(seconds=5)) == 0  # a node's first heartbeat bills nothing


def test_another_sites_slice_is_not_billed_and_a_failure_never_fails_the_heartbeat(
    control_plane: ControlPlane, clock: list[datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    cp, slice_id = control_plane, control_plane.a.ids["slice"]
    _with_timeout(cp, 60)
    _, agent = join(cp, "head")

    def broken(*args: Any) -> int:
        raise RuntimeError("metering is down")

    monkeypatch.setattr(metering, "record_capacity", broken)
    failures = metering.FAILURES[0]
    clock[0] += timedelta(seconds=5)
    node = ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [_report(slice_id, 1)]}, headers=agent))
    assert node["status"] == "online"
    assert metering.FAILURES[0] == failures + 1
    assert _capacity(cp, slice_id) == []
    metrics = cp.client.get("/metrics", headers=cp.op).text  # an operator sees the failure
    counted = next(line for line in metrics.splitlines() if line.startswith("lineside_metering_failures_total"))
    assert float(counted.split()[-1]) == metering.FAILURES[0]


def _telemetry(replica: str, start: float, frames: int, fails: int, codes: dict[str, int] | None = None) -> bytes:
    histogram = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
    report = wire.Telemetry.model_validate(dict(
        replica=replica, start=start, end=start + 5, frames=frames, fails=fails, errors=2,
        latency_ms_histogram=histogram, **({"error_codes": codes} if codes is not None else {}),
    ))  # fmt: skip
    return report.model_dump_json().encode()


def test_telemetry_verdicts_are_stored_once_per_message(control_plane: ControlPlane) -> None:
    cp, a = control_plane, control_plane.a
    topic = wire.telemetry_topic(a.slug, "line-1", f"t{a.tenant_id}-inspect")
    start = (time.time() // 60) * 60 + 10
    first, other = _telemetry("r1", start, 40, 4), _telemetry("r2", start, 10, 1)
    for batch in ([(topic, first)], [(topic, first), (topic, other)]):  # the first message delivered twice
        with Session(_engine(cp)) as session:
            telemetry.ingest(session, cp.site_id, batch, keep_failed=10, source="test")
    with Session(_engine(cp)) as session:
        rows = session.exec(select(UsageRecord).where(UsageRecord.source == metering.VERDICTS)).all()
    assert sorted(r.verdicts["pass"] for r in rows) == [9, 36]
    assert sum(r.verdicts["fail"] for r in rows) == 5
    assert {(r.slice_id, r.line_id, r.window_start.replace(tzinfo=UTC)) for r in rows} == {
        (a.ids["slice"], a.line_id, datetime.fromtimestamp(start, UTC))  # the window's own start (was: its minute)
    }


def test_a_silent_agents_gap_is_stored_once_and_never_billed(
    control_plane: ControlPlane, clock: list[datetime]
) -> None:
    cp, slice_id = control_plane, control_plane.a.ids["slice"]
    _with_timeout(cp, 60)
    node_id, agent = join(cp, "head")
    ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [_report(slice_id, 2)]}, headers=agent))
    silent_from = clock[0]
    clock[0] += timedelta(minutes=5)  # the agent is silent for 5 minutes, then reports again
    body = {"slices": [_report(slice_id, 2)]}
    ok(cp.client.post("/agent/v1/heartbeat", json=body, headers=agent))
    assert sum(r.replica_seconds for r in _capacity(cp, slice_id)) == 2 * 60  # only the timeout is billed

    def gaps() -> list[UsageRecord]:
        with Session(_engine(cp)) as session:
            query = select(UsageRecord).where(UsageRecord.source == metering.GAP, UsageRecord.slice_id == slice_id)
            return list(session.exec(query).all())

    (gap,) = gaps()
    assert (gap.slice_id, gap.node_id, gap.replica_seconds) == (slice_id, node_id, 0)
    assert gap.window_s == 4 * 60  # the silent seconds before the timeout
    assert gap.window_start.replace(tzinfo=UTC) == silent_from.replace(microsecond=0)

    with Session(_engine(cp)) as session:  # the same heartbeat replayed: stored once
        node = session.get(Node, node_id)
        assert node is not None
        report = [SliceReport.model_validate(r) for r in body["slices"]]
        assert metering.record_capacity(session, node, report, silent_from, clock[0], 60) == 0
        session.commit()
    assert [r.key for r in gaps()] == [gap.key]

    with Session(_engine(cp)) as session:  # rating bills the capacity and leaves the gap alone
        billing.rate_pending(session, clock[0] + timedelta(hours=1))
        session.commit()
        assert session.get(ChargedUsage, gap.key) is None
        assert all(session.get(ChargedUsage, r.key) is not None for r in _capacity(cp, slice_id))


def test_error_answers_are_stored_per_code_and_a_usage_product_bills_only_the_robots(
    control_plane: ControlPlane,
) -> None:
    cp, a = control_plane, control_plane.a
    now = datetime.now(UTC)
    with Session(_engine(cp)) as session:  # cp.a's slice moves to a usage product (per 1,000 verdicts)
        product = catalogue.add_product(session, sku="use-1", site_id=cp.site_id, name="Per verdict",
                                        hardware_class="replica", unit=pricing.UnitKind.USAGE)  # fmt: skip
        terms = pricing.UsageTerms(tiers=(pricing.Tier(up_to=None, per_1000=Decimal("2.00")),))
        catalogue.add_price(session, product, effective_from=now.date(), currency=cp.settings.currency,
                            terms=terms.model_dump(mode="json"), today=now.date())  # fmt: skip
        item = session.get(Slice, a.ids["slice"])
        assert item is not None
        lease = catalogue.buy(session, item, product, price_id=None, now=now, user_id=None)
        session.commit()
        lease_id, starts = lease.id, lease.starts_at.replace(tzinfo=UTC)
    topic = wire.telemetry_topic(a.slug, "line-1", f"t{a.tenant_id}-inspect")
    start = starts.timestamp() + 10
    coded = _telemetry("r1", start, 40, 4, {"bad_image": 1, "internal": 1})
    older = _telemetry("r2", start, 10, 1)  # an older ingress: errors without codes
    with Session(_engine(cp)) as session:
        telemetry.ingest(session, cp.site_id, [(topic, coded), (topic, older)], keep_failed=10, source="test")
    with Session(_engine(cp)) as session:
        rows = session.exec(select(UsageRecord).where(UsageRecord.source == metering.VERDICTS)).all()
        assert sorted((r.verdicts["error_codes"] for r in rows), key=len) == [{}, {"bad_image": 1, "internal": 1}]
        billing.rate_pending(session, starts + timedelta(hours=1))
        session.commit()
        charges = session.exec(select(Charge).where(Charge.lease_id == lease_id)).all()
    # 50 verdicts and the robot's one bad image; neither the internal error nor uncoded errors
    assert sum(c.quantity for c in charges) == 40 + 10 + 1


def test_heartbeats_kept_while_the_control_plane_was_away_bill_what_ran_once(
    control_plane: ControlPlane, clock: list[datetime]
) -> None:
    """Chaos scenario 6: the head's agent kept its heartbeats for 5 minutes the control plane was away and sends
    them, oldest first, before its live one. What ran is billed, no gap; sent again, nothing more is stored; a
    time the node's clock puts after now is billed up to now only."""
    cp, slice_id = control_plane, control_plane.a.ids["slice"]
    _with_timeout(cp, 60)
    _, agent = join(cp, "head")
    ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [_report(slice_id, 2)]}, headers=agent))
    away_from = clock[0]
    kept = [{"observed_at": (away_from + timedelta(seconds=s)).isoformat(), "slices": [_report(slice_id, 2)]}
            for s in range(5, 301, 5)]  # fmt: skip
    clock[0] = away_from + timedelta(seconds=303)  # the control plane is back
    for body in kept:
        ok(cp.client.post("/agent/v1/heartbeat", json=body, headers=agent))
    ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [_report(slice_id, 2)]}, headers=agent))
    assert sum(r.replica_seconds for r in _capacity(cp, slice_id)) == 2 * 303
    with Session(_engine(cp)) as session:
        assert session.exec(select(UsageRecord).where(UsageRecord.source == metering.GAP)).all() == []

    for body in kept:  # the agent's replay repeated (an answer it did not get): nothing new
        ok(cp.client.post("/agent/v1/heartbeat", json=body, headers=agent))
    future = {"observed_at": (clock[0] + timedelta(hours=1)).isoformat(), "slices": [_report(slice_id, 2)]}
    clock[0] += timedelta(seconds=7)
    ok(cp.client.post("/agent/v1/heartbeat", json=future, headers=agent))  # billed up to now: 7 s
    assert sum(r.replica_seconds for r in _capacity(cp, slice_id)) == 2 * 310
    naive = {"observed_at": "2026-12-01T08:00:00", "slices": []}
    assert cp.client.post("/agent/v1/heartbeat", json=naive, headers=agent).status_code == 422
