"""``lineside demo``: the whole service on one machine with embedded defaults.

Everything goes through the control plane, as in production: it runs on a
free port with SQLite; a Mosquitto with the dynamic-security plugin is the
site's broker; the demo creates a tenant, users for each role, a line,
robots with their own broker credentials and a slice through the REST API;
an edge agent joins with a one-time token and starts the slice on a local
Ray; then simulated robots stream generated parts with their credentials.
It shows live progress (``lineside.console``) and a summary, then shuts everything down.

Money moves too (issue 13): the operator adds a subscription product to the site's catalogue, records
a top-up and sets up a funder's voucher programme; the plant manager quotes and buys the subscription
for the slice, redeems a voucher code and sets a monthly budget. The control plane rates every 10 s
(instead of every minute), so the fee and the verdicts beyond those included show up as spend, and the
voucher paying its share, within the first minute or so of streaming.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from edge_node import cluster
from edge_node.agent import Agent, join
from edge_node.broker import MosquittoBroker, free_port
from lineside.console import PlainConsole, replicas_text
from lineside.demo_rollout import FAMILY, WINDOW_S, FittedRollout
from robots.cli import progress_line
from robots.simulate import Simulation, SimulationReport, render_pool

log = logging.getLogger(__name__)

TENANT, LINE = "acme", "line-1"
LATENCY_BUDGET_MS = 100.0
"""The demo line's latency budget for one verdict, which the live view colours latency against."""
BILLING_PERIOD_S = 10.0
"""How often the demo's control plane rates usage (production: every minute), so spend moves visibly."""
MIN_ROLLOUT_S = 3 * WINDOW_S + 30.0
"""Streaming a rollout needs: the fit (about 10 s, while Ray starts), three watched steps and the handover."""
CURRENCY = "EUR"  # the control plane's default billing currency
SUBSCRIPTION = {
    "sku": "demo-inspect-monthly", "name": "Inspection subscription, demo-site", "hardware_class": "CPU replica",
    "unit": "subscription",
    "terms": {"kind": "subscription", "monthly_fee": "49.00", "replica_floor": 1, "included_verdicts": 1000,
              "overage_per_1000": "0.50"},
}  # fmt: skip
"""Sold to the demo's slice: a monthly fee with one replica and 1,000 verdicts; the robots soon exceed them."""


@dataclass
class DemoSetup:
    """What the demo created through the API."""

    tokens: dict[str, str]
    logins: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (e-mail, dashboard password)
    robots: dict[str, tuple[str, str]] = field(default_factory=dict)  # robot -> (username, password)
    slice_id: int = 0
    sold: str = ""  # what the plant manager bought and redeemed, in a few words


def _call(client: httpx.Client, method: str, path: str, token: str, **kwargs: Any) -> Any:
    response = client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
    if response.status_code >= 400:
        raise RuntimeError(f"{method} {path} failed ({response.status_code}): {response.text}")
    return response.json() if response.content else None


def provision(
    client: httpx.Client, operator: str, broker_workdir: Path, robots: int, fps: float = 5.0
) -> tuple[DemoSetup, MosquittoBroker]:
    """Operator: tenant, site, broker; plant manager and factory IT: line, robots, slice."""
    port = free_port()
    tenant = _call(client, "POST", "/tenants", operator, json={"slug": TENANT, "name": "Acme Auto Parts"})
    site = _call(client, "POST", "/sites", operator, json={"name": "demo-site", "broker_port": port})
    admin = _call(client, "GET", f"/sites/{site['id']}/broker-admin", operator)
    broker = MosquittoBroker(broker_workdir, port, admin_password=admin["password"]).start()
    try:  # a broker is running from here on: stop it if provisioning fails
        setup = DemoSetup(tokens={"operator": operator})
        setup.logins["operator"] = ("admin@lineside.local", secrets.token_urlsafe(9))
        _call(client, "PUT", "/auth/password", operator, json={"password": setup.logins["operator"][1]})
        for role in ("plant_manager", "factory_it"):
            email, password = f"{role.replace('_', '-')}@acme.example", secrets.token_urlsafe(9)
            body = {"email": email, "role": role, "tenant_id": tenant["id"], "password": password}
            setup.tokens[role] = _call(client, "POST", "/users", operator, json=body)["token"]
            setup.logins[role] = (email, password)
        # A lab that lends its GPU servers to the compute bank: its edge operator's page is the contributor's.
        lab = _call(client, "POST", "/tenants", operator, json={"slug": "lab", "name": "University lab"})
        email, password = "edge-operator@lab.example", secrets.token_urlsafe(9)
        body = {"email": email, "role": "edge_operator", "tenant_id": lab["id"], "password": password}
        setup.tokens["edge_operator"] = _call(client, "POST", "/users", operator, json=body)["token"]
        setup.logins["edge_operator"] = (email, password)
        it, pm = setup.tokens["factory_it"], setup.tokens["plant_manager"]
        body = {"slug": LINE, "site_id": site["id"], "latency_budget_ms": LATENCY_BUDGET_MS}
        line = _call(client, "POST", "/lines", it, json=body)
        for k in range(robots):
            robot = _call(client, "POST", "/robots", it, json={"slug": f"robot-{k:03d}", "line_id": line["id"]})
            setup.robots[robot["slug"]] = (robot["mqtt_username"], robot["mqtt_password"])
        model = next(m for m in _call(client, "GET", "/models", pm) if m["tenant_id"] is None)
        body = {
            "slug": "inspect",
            "line_ids": [line["id"]],
            "model_version_id": model["id"],
            "max_replicas": 2,
            "cpus_per_replica": 0.5,
        }  # two replicas and the ingress fit a 2-core laptop
        setup.slice_id = _call(client, "POST", "/slices", pm, json=body)["id"]
        _call(client, "PUT", f"/lines/{line['id']}/order-plan", pm, json=demo_order_plan(robots, fps))
        setup.sold = _sell(client, setup, site["id"], tenant["id"])
    except BaseException:
        broker.stop()
        raise
    return setup, broker


def _sell(client: httpx.Client, setup: DemoSetup, site_id: int, tenant_id: int) -> str:
    """Operator: a subscription product, a top-up, a funder's voucher programme and a code. Plant manager:
    a quote, the lease change to the subscription at the quoted price, the voucher, a monthly budget."""
    operator, pm = setup.tokens["operator"], setup.tokens["plant_manager"]
    today = datetime.now(UTC)
    price = {"effective_from": today.date().isoformat(), "currency": CURRENCY, "terms": SUBSCRIPTION["terms"]}
    body = {k: v for k, v in SUBSCRIPTION.items() if k != "terms"} | {"site_id": site_id, "price": price}
    product = _call(client, "POST", "/catalogue", operator, json=body)
    top_up = {"tenant_id": tenant_id, "amount": "200.00", "currency": CURRENCY, "reference": "demo-opening-balance"}
    _call(client, "POST", "/billing/top-ups", operator, json=top_up)
    programme = _call(client, "POST", "/voucher-programmes", operator, json={
        "name": "demo-district-sme", "funder": "Demo District SME compute programme", "currency": CURRENCY,
        "budget": "1000.00", "per_tenant": "100.00", "expires_at": (today + timedelta(days=90)).isoformat(),
        "product_skus": [product["sku"]], "max_share_bp": 5000})  # fmt: skip
    code = _call(client, "POST", f"/voucher-programmes/{programme['id']}/codes", operator, json={"count": 1})
    quote = _call(client, "POST", "/leases/quote", pm, json={"product_id": product["id"], "slice_id": setup.slice_id})
    _call(client, "POST", "/leases", pm, json={
        "slice_id": setup.slice_id, "product_id": product["id"], "price_id": quote["price_id"]})  # fmt: skip
    _call(client, "POST", "/vouchers/redeem", pm, json={"code": code["codes"][0]})
    _call(client, "PUT", "/billing/budget", pm, json={"monthly_budget": "60.00"})
    return (f"{product['name']} ({quote['examples']['month']} a month) for slice inspect; "
            f"voucher of {programme['funder']} (100.00 {CURRENCY}, at most 50% of each charge)")  # fmt: skip


SHIFT_HOURS, VIEWS_PER_PART = 8, 4
DEMO_HEADROOM = 5.0
"""The demo's plan asks for six times its robots' frames/s (the most a plan allows): its robots, broker and
control plane share the machine's cores with the slice, which the profile (one replica measured alone, 608
frames/s on this project's 2-core machine) does not see; with 100 robots on the machine one replica answered
about 150. With the usual 0.25, 100 robots at 2 frames/s started on one replica and queued for 20 s until the
autoscaler's second ran (p99 2.5 s)."""


def demo_order_plan(robots: int, fps: float) -> dict[str, Any]:
    """Two shifts a day, each of as many parts as the demo's robots photograph (``VIEWS_PER_PART`` frames a
    part); between them one replica stays warm (the demo's robots stream around the clock)."""
    parts = max(1, round(robots * fps * SHIFT_HOURS * 3600 / VIEWS_PER_PART))
    return {
        "views_per_part": VIEWS_PER_PART, "headroom": DEMO_HEADROOM, "idle_floor": 1,
        "shifts": [{"name": "early", "days": [0, 1, 2, 3, 4, 5, 6], "start": "06:00", "end": "14:00"},
                   {"name": "late", "days": [0, 1, 2, 3, 4, 5, 6], "start": "14:00", "end": "22:00"}],
        "volumes": [{"effective_from": "2026-01-01", "parts_per_shift": parts}],
    }  # fmt: skip


PLANNER_PERIOD_S = 3.0
"""How often the demo's control plane applies planned floors (the default, 30 s, would hold the robots back)."""


def run_demo(*, duration_s: float | None, robots: int, fps: float, console: PlainConsole, workdir: Path,
             port: int = 0, fitted_rollout: bool = True) -> int:  # fmt: skip
    """Run the demo in ``workdir``; returns the exit code (1 if any frame was lost), for ``cluster.exit_now``
    (Ray is stopped for a process about to end). With ``fitted_rollout`` a model fitted on the line's good
    parts is uploaded and rolled out on the slice while the robots stream."""
    from control_plane.app import create_app
    from control_plane.server import BackgroundServer
    from control_plane.settings import ControlPlaneSettings

    stop, agent_stop, rollout_stop = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        console.note(f"\n{signal.Signals(signum).name}: stopping robots, draining answers, shutting down")
        stop.set()

    previous = signal.signal(signal.SIGINT, on_signal), signal.signal(signal.SIGTERM, on_signal)
    operator = "ls_demo-" + secrets.token_urlsafe(16)
    settings = ControlPlaneSettings(
        data_dir=workdir / "control-plane",
        bootstrap_token=operator,
        secret_key=secrets.token_urlsafe(32),
        billing_period_s=BILLING_PERIOD_S,
        planner_period_s=PLANNER_PERIOD_S,
    )
    with console.step("starting the control plane (SQLite, migrations)..."):
        server = BackgroundServer(create_app(settings), "127.0.0.1", port or free_port()).start()
    client = httpx.Client(base_url=server.url, timeout=30.0)
    broker: MosquittoBroker | None = None
    agent_thread: threading.Thread | None = None
    rollout: FittedRollout | None = None
    rollout_client = httpx.Client(base_url=server.url, timeout=120.0)
    try:
        console.note(f"control plane: {server.url} (API docs {server.url}/docs, metrics {server.url}/metrics)")
        setup, broker = provision(client, operator, workdir / "broker", robots, fps)
        _print_setup(console, server.url, broker, setup, robots)
        if fitted_rollout and duration_s is not None and duration_s < MIN_ROLLOUT_S:
            console.note(f"model rollout: skipped: its shadow, canary and full steps need about "
                         f"{MIN_ROLLOUT_S:.0f} s of streaming (--duration {duration_s:g}; give "
                         f"{MIN_ROLLOUT_S:.0f} or more, or none)")  # fmt: skip
            fitted_rollout = False
        if fitted_rollout:
            rollout = FittedRollout(
                lambda method, path, **kwargs: _call(rollout_client, method, path, setup.tokens["plant_manager"],
                                                     **kwargs),
                slice_id=setup.slice_id, line=LINE, robots=list(setup.robots), workdir=workdir / "fit",
                note=console.note, stop=rollout_stop,
            ).start()  # fmt: skip
        with console.step("starting local Ray; the edge agent joins the site and starts the slice..."):
            metrics_port = free_port()
            cluster.start(metrics_port=metrics_port)
            join_token = _call(client, "POST", "/sites/1/join-tokens", operator)["token"]
            node = join(client, join_token, workdir / "agent")
            agent = Agent(client, node["node_token"], workdir / "agent", period_s=2.0)
            agent_thread = threading.Thread(target=agent.run, args=(agent_stop,), name="agent", daemon=True)
            agent_thread.start()
            status = _wait_running(client, setup, stop)
        console.note(f"Prometheus metrics of the slice: http://127.0.0.1:{metrics_port}/metrics "
                     "(ray_lineside_answers, ...)")  # fmt: skip
        console.note(f"slice inspect: {status['status']} (generation {status['observed_generation']}, "
                     f"{replicas_text(status['actual'])})")  # fmt: skip
        with console.step(f"rendering images of {FAMILY} parts for the robots..."):
            pool = render_pool(96, family=FAMILY)  # one kind of part on the line: what the fitted model knows
        with console.step("waiting for the line's planned floor of replicas to run (warm before the robots)..."):
            status = _wait_planned_floor(client, setup, stop)
        console.note(f"slice inspect: {replicas_text(status['actual'])} running for the plan "
                     f"(floor {status['min_replicas']}, max {status['max_replicas']})")  # fmt: skip
        money = _MoneyWatch(client, setup)
        if rollout is not None:
            rollout.streaming.set()
        report = _stream(console, client, setup, broker, pool, duration_s, robots, fps, stop, money)
        console.note("summary: " + progress_line(report))
        console.note("money: " + (money.text(force=True) or "unavailable (see the log)"))
        if report.lost:
            console.note(f"FAILED: {report.lost} frames were sent and never answered")
            return 1
        console.note(f"ok: every one of {report.sent} frames was answered")
        return 0
    finally:
        rollout_stop.set()
        if rollout is not None:
            rollout.join(timeout_s=30)
        rollout_client.close()
        agent_stop.set()
        if agent_thread is not None:
            agent_thread.join(timeout=120)  # a pass may be applying a slice; Ray must outlive it
        cluster.stop(process_exiting=True)  # the command ends with cluster.exit_now
        if broker is not None:
            broker.stop()
        client.close()
        server.stop()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        console.note("stopped the agent, Ray, the broker and the control plane")


def _print_setup(console: PlainConsole, url: str, broker: MosquittoBroker, setup: DemoSetup, robots: int) -> None:
    """What a newcomer needs to look around: the broker, the dashboard, each role's login and token."""
    console.note(f"broker: mosquitto with dynamic security on {broker.host}:{broker.port} "
                 f"(config {broker.config_path}); {robots} robots registered")  # fmt: skip
    console.note(f"dashboard: {url}/ui/  (log in as one of these)")
    for role, (email, password) in setup.logins.items():
        console.note(f"  {role:<14} login: {email} / {password}   API token: {setup.tokens[role]}")
    console.note(f"  try: curl -H 'Authorization: Bearer {setup.tokens['plant_manager']}' {url}/slices")
    console.note(f"money: the plant manager bought {setup.sold}; usage is rated every {BILLING_PERIOD_S:g} s "
                 f"(GET {url}/billing/summary)")  # fmt: skip


def _stream(console: PlainConsole, client: httpx.Client, setup: DemoSetup, broker: MosquittoBroker,
            pool: list[tuple[str, bytes]], duration_s: float | None, robots: int, fps: float,
            stop: threading.Event, money: _MoneyWatch) -> SimulationReport:  # fmt: skip
    """The robots stream; each second the console shows their figures and the slice's replicas, and the
    money line when it changed."""
    simulation = Simulation(
        broker.host, broker.port, tenant=TENANT, line=LINE, robots=robots, fps=fps, pool=pool,
        credentials=lambda name: setup.robots[name],
    )  # fmt: skip
    replicas = _ReplicaWatch(client, setup)
    title = f"{robots} robots x {fps:g} fps on {TENANT}/{LINE} " + (
        f"for {duration_s:g}s" if duration_s else "(Ctrl-C to stop)"
    )

    def progress(report: SimulationReport) -> None:
        console.update(report, replicas.text())
        console.money(money.text())

    with console.streaming(title):
        return simulation.run(duration_s, progress=progress, stop=stop)


class _ReplicaWatch:
    """The slice's replicas as the agent last reported them, asked of the API at most every 2 s."""

    def __init__(self, client: httpx.Client, setup: DemoSetup) -> None:
        self.client, self.setup = client, setup
        self._text, self._at = "", 0.0

    def text(self) -> str:
        if time.monotonic() - self._at >= 2.0:
            self._at = time.monotonic()
            try:
                status = _call(self.client, "GET", f"/slices/{self.setup.slice_id}", self.setup.tokens["plant_manager"])
                self._text = f"{replicas_text(status['actual'])} (max {status['max_replicas']})"
            except (httpx.HTTPError, RuntimeError) as e:  # the view goes on; the log has why
                log.warning("slice status unavailable: %s", e)
        return self._text


class _MoneyWatch:
    """The tenant's month in one line (spend, forecast, budget, voucher and prepaid balances), asked of the
    API at most every billing period: what the plant page's money panel shows."""

    def __init__(self, client: httpx.Client, setup: DemoSetup) -> None:
        self.client, self.setup = client, setup
        self._text, self._at = "", 0.0

    def text(self, force: bool = False) -> str:
        if force or time.monotonic() - self._at >= BILLING_PERIOD_S:
            self._at = time.monotonic()
            try:
                summary = _call(self.client, "GET", "/billing/summary", self.setup.tokens["plant_manager"])
                self._text = money_line(summary)
            except (httpx.HTTPError, RuntimeError) as e:
                log.warning("billing summary unavailable: %s", e)
        return self._text


def money_line(summary: dict[str, Any]) -> str:
    """``GET /billing/summary`` in a few words: "spent 49.24 EUR this month (forecast ...), ..."."""
    funds, budget = summary["funds"], summary["budget"]
    text = f"spent {summary['spent']['text']} this month (forecast {summary['forecast_month_end']['text']}"
    if budget:
        text += f", budget {budget['text']}"
        if summary["alerts"]:
            text += f", alert at {summary['alerts'][-1]['threshold_pct']}%"
    text += f"); voucher balance {funds['vouchers']['text']}, prepaid {funds['prepaid']['text']}"
    return text + (" HELD: " + summary["held_reason"] if summary["held"] else "")


def _wait_planned_floor(client: httpx.Client, setup: DemoSetup, stop: threading.Event,
                        timeout_s: float = 90) -> Any:  # fmt: skip
    """Once the agent has profiled the model, the planner sets the slice's floor for the line's plan: wait until
    that many model replicas run, so no robot's first frames wait on a cold one. Past ``timeout_s`` (a machine
    too slow to profile in time) the robots start anyway and the autoscaler catches up, as it would."""
    pm, deadline = setup.tokens["plant_manager"], time.monotonic() + timeout_s
    while not stop.is_set():
        status = _call(client, "GET", f"/slices/{setup.slice_id}", pm)
        floor = _call(client, "GET", f"/slices/{setup.slice_id}/plan?days=1", pm)["floor_now"]  # None: no profile
        current = status["observed_generation"] == status["generation"] and status["status"] == "running"
        planned = floor is not None and status["min_replicas"] >= floor
        if planned and current and running_model_replicas(status["actual"]) >= status["min_replicas"]:
            return status
        if time.monotonic() > deadline:
            log.warning("the planned floor is not running after %.0fs (%s); starting the robots anyway",
                        timeout_s, status["actual"])  # fmt: skip
            return status
        time.sleep(0.5)
    raise KeyboardInterrupt


def running_model_replicas(actual: dict[str, Any] | None) -> int:
    """Model replicas RUNNING in a slice's reported ``actual`` state (over its per-node deployments)."""
    deployments = (actual or {}).get("replicas") or {}
    return sum(int(states.get("RUNNING", 0)) for name, states in deployments.items()
               if name.startswith("model") and isinstance(states, dict))  # fmt: skip


def _wait_running(client: httpx.Client, setup: DemoSetup, stop: threading.Event, timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        status = _call(client, "GET", f"/slices/{setup.slice_id}", setup.tokens["plant_manager"])
        if status["status"] == "running":
            return status
        if status["status"] == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"the slice did not start: {status['status']} {status['status_message']}")
        time.sleep(0.5)
    raise KeyboardInterrupt
