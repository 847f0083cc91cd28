"""Issue 13's "done means": a month closed on a controlled clock against a real Ray slice and real robots,
whose invoice matches, to the minor unit, usage this test computes on its own.

A slice runs on Ray Serve; the agent heartbeats through a network that delivers every heartbeat twice;
a replayer on the site broker publishes every telemetry report a second time. The agent is restarted and
the control plane is restarted twice (once while robots stream, so telemetry waits in the broker). The
plant manager buys a capacity product, then changes the lease to a per-verdict product. At the end the
month is closed with the clock set to the 1st of the next month. The invoice must equal:

- capacity: replica-seconds computed here from the heartbeat clock and Serve's RUNNING replicas at each
  beat (the issue's rule: running replicas x seconds since the node's previous heartbeat, at most the
  timeout; cut at minutes; each minute's piece rounded up to the product's 60 s increment), priced per
  lease in force at each piece and rounded once per lease;
- verdicts: the verdicts the robots received plus their bad-input errors (they count; ``internal`` does
  not), priced on the per-verdict product's tiers and rounded once.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from ray import serve
from sqlmodel import Session, col, select

from contracts import wire
from control_plane import billing_cycle, broker_sync, sites
from control_plane.api.routes import agent as agent_routes
from control_plane.app import create_app
from control_plane.models import Invoice, Lease, Site, UsageRecord
from control_plane.pricing import ROBOT_ERRORS
from edge_node import cluster
from edge_node.agent import Agent, join
from robots.sdk import RobotClient
from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.test_cp_agent_ray import quick_profile
from tests.waiting import wait_until

TIMEOUT_S = 60.0
CPU_TERMS = {"kind": "capacity", "reserved_per_hour": "36.00", "burst_per_hour": "40.00", "bank_per_hour": "10.00",
             "billed_increment_s": 60}  # fmt: skip
VERDICT_TERMS = {"kind": "usage", "tiers": [{"up_to": 20, "per_1000": "50.00"}, {"up_to": None, "per_1000": "20.00"}]}


@pytest.fixture
def cp_overrides() -> dict[str, object]:
    """The fixture's own app neither monitors the site nor marks the node offline within the test's beats:
    the test runs (and restarts) the control plane that does."""
    return {"heartbeat_timeout_s": TIMEOUT_S, "monitor_sites": False}


class TwiceOnTheWire:
    """The agent's HTTP client, but every heartbeat is delivered twice (a retrying proxy)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client, self.base_url = client, client.base_url

    def get(self, *args: Any, **kwargs: Any) -> httpx.Response:
        return self.client.get(*args, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        if url.endswith("/heartbeat"):
            self.client.post(url, **kwargs)
        return self.client.post(url, **kwargs)


class Replayer:
    """Publishes every telemetry report it sees on the site broker once more (a duplicate delivery)."""

    def __init__(self, cp: ControlPlane, site: Site) -> None:
        topic = f"{wire.TELEMETRY_ROOT}/#"
        acls = (("subscribePattern", topic), ("publishClientSend", topic), ("publishClientReceive", topic))
        login = broker_sync.BrokerClient("replayer", "replayer-secret-0123456789", "replayer", acls)
        with sites.admin(cp.settings, site) as broker:
            broker.ensure(login)
        self.seen: set[str] = set()
        self.replayed = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="replayer", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(login.username, login.password)
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.on_message = self._again
        self.client.connect(site.broker_host, site.broker_port)
        self.client.loop_start()

    def _again(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        digest = hashlib.sha256(message.topic.encode() + message.payload).hexdigest()
        if digest not in self.seen:
            self.seen.add(digest)
            self.replayed += 1
            client.publish(message.topic, message.payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Plant:
    """The control plane the agent talks to, restartable on the same database and broker."""

    def __init__(self, cp: ControlPlane) -> None:
        self.settings = cp.settings.model_copy(update={"monitor_sites": True})
        self._stack: Iterator[TestClient] | None = None
        self.client: TestClient = self._start()

    def _start(self) -> TestClient:
        client = TestClient(create_app(self.settings))
        client.__enter__()
        monitors = client.app.state.monitors  # type: ignore[attr-defined]
        wait_until(lambda: bool(monitors.subscribed), 30, "the control plane to monitor the site")
        return client

    def restart(self) -> None:
        self.stop()
        self.client = self._start()

    def stop(self) -> None:
        self.client.__exit__(None, None, None)
        self.client.app.state.engine.dispose()  # type: ignore[attr-defined]


def _running_in_serve(app_name: str) -> int:
    """Serve's own count of RUNNING replicas of the slice's model deployments."""
    status = serve.status().applications.get(app_name)
    if status is None:
        return 0
    return sum(int(n) for name, d in status.deployments.items() if name.startswith("model")
               for state, n in d.replica_states.items() if "RUNNING" in str(state))  # fmt: skip


def _expected_capacity(beats: list[tuple[datetime, int]], leases: list[Lease], prices: dict[int, Decimal]) -> int:
    """Cents of capacity, from the beats (time, RUNNING replicas), by the issue's metering rule."""
    seconds: dict[int, int] = {}  # lease id -> billed replica-seconds
    for (before, _), (now, running) in itertools.pairwise(beats):
        first = int(max(before, now - timedelta(seconds=TIMEOUT_S)).timestamp())
        last = int(now.timestamp())
        while first < last and running:
            stop = min(last, (first // 60 + 1) * 60)
            start = datetime.fromtimestamp(first, UTC)
            lease = next(x for x in leases if _aware(x.starts_at) <= start and
                         (x.ends_at is None or start < _aware(x.ends_at)))  # fmt: skip
            assert lease.id is not None
            seconds[lease.id] = seconds.get(lease.id, 0) + -(-(running * (stop - first)) // 60) * 60
            first = stop
    return sum(_cents(prices[lease_id] * rs / 3600) for lease_id, rs in seconds.items() if lease_id in prices)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _cents(amount: Decimal) -> int:
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _verdict_cost(verdicts: int) -> int:
    first = min(verdicts, 20)
    return _cents(Decimal("50.00") * first / 1000 + Decimal("20.00") * (verdicts - first) / 1000)


def _buy(client: TestClient, cp: ControlPlane, sku: str, terms: dict[str, Any], unit: str) -> None:
    today = datetime.now(UTC).date().isoformat()
    body = {"sku": sku, "site_id": cp.site_id, "name": sku, "hardware_class": "CPU replica", "unit": unit,
            "price": {"effective_from": today, "currency": "EUR", "terms": terms}}  # fmt: skip
    product = ok(client.post("/catalogue", json=body, headers=cp.op), 201)
    quote = ok(client.post("/leases/quote", json={"product_id": product["id"], "slice_id": cp.a.ids["slice"]},
                           headers=cp.a.pm))  # fmt: skip
    ok(client.post("/leases", json={"slice_id": cp.a.ids["slice"], "product_id": product["id"],
                                    "price_id": quote["price_id"]}, headers=cp.a.pm), 201)  # fmt: skip


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_month_closes_to_the_cent_of_what_really_ran(
    ray_cluster: int, control_plane: ControlPlane, tmp_path: Path, part_frames: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = control_plane
    now = datetime.now(UTC)
    if (now + timedelta(minutes=15)).month != now.month:
        pytest.skip("the month ends within the test's run: its usage would straddle two invoices")
    ok(cp.client.delete(f"/slices/{cp.b.ids['slice']}", headers=cp.b.pm))  # one slice fits 2 test CPUs
    app_name = f"t{cp.a.tenant_id}-inspect"
    clock = [now]
    monkeypatch.setattr(agent_routes, "utcnow", lambda: clock[0])  # the heartbeat clock, set at each beat
    plant = Plant(cp)
    beats: list[tuple[datetime, int]] = []
    try:
        _buy(plant.client, cp, "cpu-north", CPU_TERMS, "capacity")
        token = ok(plant.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
        clock[0] = datetime.now(UTC)
        node = join(plant.client, token, tmp_path / "agent")
        beats.append((clock[0], 0))  # joining stamps the node's first heartbeat time

        def agent() -> Agent:
            return Agent(TwiceOnTheWire(plant.client), node["node_token"], tmp_path / "agent",  # type: ignore[arg-type]
                         profiler=quick_profile)  # fmt: skip

        def beat(edge: Agent) -> None:
            clock[0] = datetime.now(UTC)
            edge.step()
            beats.append((clock[0], _running_in_serve(app_name)))

        edge = agent()
        beat(edge)  # applies the slice on Ray
        wait_until(lambda: _running_in_serve(app_name) >= 1, 180, "the slice to run on Ray")
        for k in range(5):  # phase 1: the capacity lease, across a minute boundary
            time.sleep(9)
            beat(edge)
            if k == 1:
                edge = agent()  # the agent restarts (state from its disk only)
            if k == 3:
                plant.restart()  # the control plane restarts between reports and rating
                edge = agent()

        _buy(plant.client, cp, "verdicts-north", VERDICT_TERMS, "usage")  # a lease change, from the next minute
        with Session(plant.client.app.state.engine) as session:  # type: ignore[attr-defined]
            site = session.get(Site, cp.site_id)
            assert site is not None
            usage_from = max(_aware(x.starts_at) for x in session.exec(select(Lease)).all())
        while datetime.now(UTC) < usage_from + timedelta(seconds=5):  # no telemetry window spans the change
            time.sleep(3)
            beat(edge)
        replayer = Replayer(cp, site)
        creds = ok(plant.client.post(f"/robots/{cp.a.ids['robot']}/rotate", headers=cp.a.it))
        robot = RobotClient(cp.broker.host, cp.broker.port, tenant="acme", line="line-1", robot="cam-1",
                            username=str(creds["mqtt_username"]), password=str(creds["mqtt_password"]),
                            client_id=str(creds["client_id"])).connect()  # fmt: skip
        frames = [sample.data for sample in part_frames]
        counted = 0
        for k in range(36):  # phase 2: per-verdict lease; robots stream while the control plane restarts
            reply = robot.inspect(b"not an image" if k % 12 == 5 else frames[k % len(frames)],
                                  frame_id=f"f-{k}", timeout_s=30, retries=0)  # fmt: skip
            if isinstance(reply, wire.Result) or reply.code in ROBOT_ERRORS:
                counted += 1
            if k % 9 == 8:
                beat(edge)
            if k == 17:
                plant.restart()  # telemetry the ingress sends now waits in the broker for the monitor
                edge = agent()
        robot.close()
        assert counted == 36  # every frame got an answer that bills (a verdict or the robot's bad input)

        def stored_verdicts() -> int:
            with Session(plant.client.app.state.engine) as session:  # type: ignore[attr-defined]
                rows = session.exec(select(UsageRecord.verdicts).where(UsageRecord.source == "verdicts",
                                    col(UsageRecord.window_start) >= usage_from)).all()  # fmt: skip
            codes = (sum(int(n) for c, n in (v.get("error_codes") or {}).items() if c in ROBOT_ERRORS) for v in rows)
            return sum(int(v.get("pass", 0)) + int(v.get("fail", 0)) for v in rows) + sum(codes)

        wait_until(lambda: stored_verdicts() == counted, 60, f"the {counted} verdicts to be metered")
        assert replayer.replayed > 0  # every report really did arrive twice
        replayer.close()
        time.sleep(3)
        beat(edge)

        # The month closes: the control plane's clock reads the 1st of the next month.
        first_of_next = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=5, second=0,
                                                                          microsecond=0)  # fmt: skip
        engine = plant.client.app.state.engine  # type: ignore[attr-defined]
        with Session(engine) as session:
            billing_cycle.run(session, first_of_next)
            billing_cycle.run(session, first_of_next + timedelta(minutes=1))  # a second pass issues nothing
            invoices = session.exec(select(Invoice)).all()
            leases = list(session.exec(select(Lease).where(Lease.tenant_id == cp.a.tenant_id)).all())
        assert [(i.tenant_id, i.period) for i in invoices] == [(cp.a.tenant_id, now.date().replace(day=1))]
        invoice = invoices[0]

        prices = {
            x.id: Decimal("0.90") if i == 0 else Decimal("36.00") for i, x in enumerate(leases[:2]) if x.id is not None
        }  # fmt: skip  (the standard product, then cpu-north; the usage lease: none)
        capacity = _expected_capacity(beats, leases, prices)
        expected = capacity + _verdict_cost(counted)
        shown = {(line["kind"], line.get("measure")): line for line in invoice.lines}
        assert invoice.total_minor == invoice.subtotal_minor == expected, (invoice.lines, capacity, counted)
        assert capacity > 0 and any(m == "verdicts" for _, m in shown)

        # The invoice is the tenant's own: globex reads none of it.
        assert ok(plant.client.get("/invoices", headers=cp.b.pm)) == []
        assert plant.client.get(f"/invoices/{invoice.id}", headers=cp.b.pm).status_code == 404
        pdf = plant.client.get(f"/invoices/{invoice.id}.pdf", headers=cp.a.pm)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    finally:
        plant.stop()
        if app_name in cluster.applications():
            cluster.delete_slice(app_name)  # the session's Ray has two CPUs: the next slice test needs them
