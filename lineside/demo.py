"""``lineside demo``: the whole service on one machine with embedded defaults.

Everything goes through the control plane, as in production: it runs on a
free port with SQLite; a Mosquitto with the dynamic-security plugin is the
site's broker; the demo creates a tenant, users for each role, a line,
robots with their own broker credentials and a slice through the REST API;
an edge agent joins with a one-time token and starts the slice on a local
Ray; then simulated robots stream generated parts with their credentials.
It prints live progress and a summary, then shuts everything down.
"""

from __future__ import annotations

import logging
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from edge_node import cluster
from edge_node.agent import Agent, join
from edge_node.broker import MosquittoBroker, free_port
from robots.simulate import Simulation, SimulationReport, render_pool

log = logging.getLogger(__name__)

Echo = Callable[[str], None]
TENANT, LINE = "acme", "line-1"


def progress_line(report: SimulationReport) -> str:
    """One line of live progress."""
    s = report.summary()
    accuracy = f"{s['accuracy']:.1%}" if s["accuracy"] is not None else "-"
    return (
        f"t={report.elapsed_s:5.1f}s sent={s['sent']:<6} answered={s['results'] + s['errors']:<6} "
        f"fps={s['throughput_fps']:6.1f} p50={s['p50_ms']:6.1f}ms p99={s['p99_ms']:6.1f}ms "
        f"verdicts-correct={accuracy} lost={s['lost']}"
    )


@dataclass
class DemoSetup:
    """What the demo created through the API."""

    tokens: dict[str, str]
    logins: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (e-mail, dashboard password)
    robots: dict[str, tuple[str, str]] = field(default_factory=dict)  # robot -> (username, password)
    slice_id: int = 0


def _call(client: httpx.Client, method: str, path: str, token: str, **kwargs: Any) -> Any:
    response = client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
    if response.status_code >= 400:
        raise RuntimeError(f"{method} {path} failed ({response.status_code}): {response.text}")
    return response.json() if response.content else None


def provision(
    client: httpx.Client, operator: str, broker_workdir: Path, robots: int
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
        it, pm = setup.tokens["factory_it"], setup.tokens["plant_manager"]
        line = _call(client, "POST", "/lines", it, json={"slug": LINE, "site_id": site["id"], "latency_budget_ms": 100})
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
        _call(client, "PUT", f"/lines/{line['id']}/order-plan", pm, json=DEMO_ORDER_PLAN)
    except BaseException:
        broker.stop()
        raise
    return setup, broker


DEMO_ORDER_PLAN = {
    "views_per_part": 4, "headroom": 0.25, "idle_floor": 1,
    "shifts": [{"name": "early", "days": [0, 1, 2, 3, 4, 5, 6], "start": "06:00", "end": "14:00"},
               {"name": "late", "days": [0, 1, 2, 3, 4, 5, 6], "start": "14:00", "end": "22:00"}],
    "volumes": [{"effective_from": "2026-01-01", "parts_per_shift": 2000}],
}  # fmt: skip
"""Two shifts a day; between them one replica stays warm (the demo's robots stream around the clock)."""


def run_demo(*, duration_s: float | None, robots: int, fps: float, echo: Echo, workdir: Path | None = None,
             port: int = 0) -> int:  # fmt: skip
    """Run the demo; returns the exit code (1 if any frame was lost)."""
    from control_plane.app import create_app
    from control_plane.server import BackgroundServer
    from control_plane.settings import ControlPlaneSettings

    workdir = workdir or Path(tempfile.mkdtemp(prefix="lineside-demo-"))
    stop, agent_stop = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        echo(f"\n{signal.Signals(signum).name}: stopping robots, draining answers, shutting down")
        stop.set()

    previous = signal.signal(signal.SIGINT, on_signal), signal.signal(signal.SIGTERM, on_signal)
    operator = "ls_demo-" + secrets.token_urlsafe(16)
    settings = ControlPlaneSettings(
        data_dir=workdir / "control-plane", bootstrap_token=operator, secret_key=secrets.token_urlsafe(32)
    )
    server = BackgroundServer(create_app(settings), "127.0.0.1", port or free_port()).start()
    client = httpx.Client(base_url=server.url, timeout=30.0)
    broker: MosquittoBroker | None = None
    agent_thread: threading.Thread | None = None
    try:
        echo(f"control plane: {server.url} (API docs {server.url}/docs, metrics {server.url}/metrics)")
        setup, broker = provision(client, operator, workdir / "broker", robots)
        echo(f"broker: mosquitto with dynamic security on {broker.host}:{broker.port} (config {broker.config_path}); "
             f"{robots} robots registered")  # fmt: skip
        echo(f"dashboard: {server.url}/ui/  (log in as one of these)")
        for role, (email, password) in setup.logins.items():
            echo(f"  {role:<14} login: {email} / {password}   API token: {setup.tokens[role]}")
        echo(f"  try: curl -H 'Authorization: Bearer {setup.tokens['plant_manager']}' {server.url}/slices")
        echo("starting local Ray; the edge agent joins the site and starts the slice...")
        metrics_port = free_port()
        cluster.start(metrics_port=metrics_port)
        echo(f"Prometheus metrics of the slice: http://127.0.0.1:{metrics_port}/metrics (ray_lineside_answers, ...)")
        join_token = _call(client, "POST", "/sites/1/join-tokens", operator)["token"]
        node = join(client, join_token, workdir / "agent")
        agent = Agent(client, node["node_token"], workdir / "agent", period_s=2.0)
        agent_thread = threading.Thread(target=agent.run, args=(agent_stop,), name="agent", daemon=True)
        agent_thread.start()
        status = _wait_running(client, setup, stop)
        echo(f"slice inspect: {status['status']} (generation {status['observed_generation']}, {status['actual']})")
        echo("rendering part images for the robots...")
        pool = render_pool(96)
        echo(f"{robots} robots x {fps:g} fps on {TENANT}/{LINE} "
             + (f"for {duration_s:g}s" if duration_s else "(Ctrl-C to stop)"))  # fmt: skip
        simulation = Simulation(
            broker.host, broker.port, tenant=TENANT, line=LINE, robots=robots, fps=fps, pool=pool,
            credentials=lambda name: setup.robots[name],
        )  # fmt: skip
        report = simulation.run(duration_s, progress=lambda r: echo(progress_line(r)), stop=stop)
        echo("summary: " + progress_line(report))
        if report.lost:
            echo(f"FAILED: {report.lost} frames were sent and never answered")
            return 1
        echo(f"ok: every one of {report.sent} frames was answered")
        return 0
    finally:
        agent_stop.set()
        if agent_thread is not None:
            agent_thread.join(timeout=120)  # a pass may be applying a slice; Ray must outlive it
        cluster.stop()
        if broker is not None:
            broker.stop()
        client.close()
        server.stop()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        echo("stopped the agent, Ray, the broker and the control plane")


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
