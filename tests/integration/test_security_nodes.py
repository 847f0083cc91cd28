"""What a site's nodes can get and do (issue 11, items 4, 5 and 6), against a real Mosquitto and both databases.

A node is trusted with what it runs, nothing more: only the node that runs the slices' ingress (the
site's Ray head, whose agent applies the slices) receives broker passwords, those passwords rotate when
a node leaves, and a node's model profiles speak only for its own site and hardware.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
from sqlmodel import Session, select

from control_plane import capacity
from control_plane.models import OrderPlan
from control_plane.server import BackgroundServer
from edge_node.broker import free_port
from tests.integration.cp_fixtures import ControlPlane, bearer, ok
from tests.integration.test_cp_broker import Probe
from tests.integration.test_cp_capacity import PLAN, START


def join(cp: ControlPlane, hostname: str, *, worker: bool = False) -> tuple[int, dict[str, str]]:
    """A node joined to the site: the Ray head (runs the ingress) or a worker (``--ray-address``)."""
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    body = {"token": token, "hostname": hostname, "cpus": 8, "memory_mb": 32000,
            "ray_address": "10.0.0.5:6379" if worker else None}  # fmt: skip
    node = ok(cp.client.post("/agent/v1/join", json=body), 201)
    ok(cp.client.post("/agent/v1/heartbeat", json={}, headers=bearer(node["node_token"])))
    return node["id"], bearer(node["node_token"])


def broker_of(cp: ControlPlane, agent: dict[str, str], slice_id: int) -> dict[str, Any]:
    """The broker section of one slice in the node's desired state."""
    state = ok(cp.client.get("/agent/v1/desired", headers=agent))
    spec = next(s for s in state["slices"] if s["slice_id"] == slice_id)
    return dict(spec["spec"]["broker"])


def ingress_login(cp: ControlPlane, broker: dict[str, Any]) -> Probe:
    """A connection with the ingress credentials the control plane handed out."""
    from control_plane import broker_sync

    username, password = broker_sync.ingress_connection(broker["username"], broker["password"], index=0)
    return Probe(cp, username, password, username)


def test_only_the_ingress_node_gets_broker_passwords(control_plane: ControlPlane) -> None:
    cp = control_plane
    _, head = join(cp, "head-1")
    _, worker = join(cp, "gpu-2", worker=True)
    for slice_id in (cp.a.ids["slice"], cp.b.ids["slice"]):
        assert broker_of(cp, worker, slice_id)["password"] is None
        assert broker_of(cp, head, slice_id)["password"]
    worker_state = ok(cp.client.get("/agent/v1/desired", headers=worker))
    assert all(s["spec"]["broker"]["password"] is None for s in worker_state["slices"])
    assert ingress_login(cp, broker_of(cp, head, cp.a.ids["slice"])).connect_reason == "Success"


def test_removing_a_node_rotates_ingress_credentials(control_plane: ControlPlane) -> None:
    cp = control_plane
    _, head = join(cp, "head-1")
    worker_id, _ = join(cp, "gpu-2", worker=True)
    old = broker_of(cp, head, cp.a.ids["slice"])
    connected = ingress_login(cp, old)
    assert connected.connect_reason == "Success"
    ok(cp.client.post(f"/nodes/{worker_id}/status", json={"status": "removed"}, headers=cp.op))
    assert connected.disconnected.wait(5), "the old ingress session stayed connected after the node left"
    connected.client.loop_stop()
    assert ingress_login(cp, old).connect_reason == "Not authorized"
    new = broker_of(cp, head, cp.a.ids["slice"])
    assert new["password"] != old["password"]
    assert ingress_login(cp, new).connect_reason == "Success"


def test_draining_a_node_rotates_ingress_credentials(control_plane: ControlPlane) -> None:
    cp = control_plane
    _, head = join(cp, "head-1")
    worker_id, _ = join(cp, "gpu-2", worker=True)
    old = broker_of(cp, head, cp.b.ids["slice"])
    ok(cp.client.post(f"/nodes/{worker_id}/status", json={"status": "draining"}, headers=cp.op))
    assert ingress_login(cp, old).connect_reason == "Not authorized"
    assert ingress_login(cp, broker_of(cp, head, cp.b.ids["slice"])).connect_reason == "Success"


def test_rotate_on_demand(control_plane: ControlPlane) -> None:
    cp = control_plane
    _, head = join(cp, "head-1")
    old_a, old_b = broker_of(cp, head, cp.a.ids["slice"]), broker_of(cp, head, cp.b.ids["slice"])
    rotate = f"/slices/{cp.a.ids['slice']}/credentials/rotate"
    assert cp.client.post(rotate, headers=cp.a.it).status_code == 403  # factory IT does not manage slices
    assert cp.client.post(rotate, headers=cp.b.pm).status_code == 404  # another tenant's slice
    rotated = ok(cp.client.post(rotate, headers=cp.a.pm))
    assert rotated["credential_epoch"] == 2
    ok(cp.client.post(rotate, headers=cp.op))  # operators may rotate any tenant's slice
    new_a = broker_of(cp, head, cp.a.ids["slice"])
    assert new_a["password"] != old_a["password"]
    assert ingress_login(cp, old_a).connect_reason == "Not authorized"
    assert ingress_login(cp, new_a).connect_reason == "Success"
    assert broker_of(cp, head, cp.b.ids["slice"]) == old_b  # the other tenant's slice is untouched


def test_ingress_credentials_read_frames_only_through_the_shared_subscription(control_plane: ControlPlane) -> None:
    cp = control_plane
    _, head = join(cp, "head-1")
    robot = ok(cp.client.post(f"/robots/{cp.a.ids['robot']}/rotate", headers=cp.a.it))
    ingress = ingress_login(cp, broker_of(cp, head, cp.a.ids["slice"]))
    app_name = f"t{cp.a.tenant_id}-inspect"
    assert ingress.subscribe("lineside/acme/line-1/+/frames") == ["Not authorized"]
    assert ingress.subscribe(f"$share/{app_name}/lineside/acme/line-1/+/frames") == ["Granted QoS 1"]
    sender = Probe(cp, robot["mqtt_username"], robot["mqtt_password"], robot["client_id"])
    sender.publish(robot["topics"]["frames"], b"\xff\xd8 frame")
    deadline = time.monotonic() + 5
    while not ingress.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ingress.received == [robot["topics"]["frames"]]
    for probe in (sender, ingress):
        probe.close()


def test_a_join_token_makes_one_node_under_concurrent_joins(control_plane: ControlPlane) -> None:
    cp = control_plane
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    server = BackgroundServer(cp.client.app, "127.0.0.1", free_port()).start()  # type: ignore[arg-type]
    start = threading.Barrier(8)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:

            def join_once(k: int) -> int:
                start.wait()  # all eight at once
                body = {"token": token, "hostname": f"edge-{k}", "cpus": 4, "memory_mb": 16000}
                return client.post("/agent/v1/join", json=body).status_code

            with ThreadPoolExecutor(8) as pool:
                codes = sorted(pool.map(join_once, range(8)))
    finally:
        server.stop()
    assert codes == [201] + [401] * 7
    assert len(ok(cp.client.get("/nodes", headers=cp.op))) == 1


def _profile(sha: str, fps: float = 3.0, cold: float = 90.0, hardware: str = "cpu x1") -> dict[str, Any]:
    return {"model_sha256": sha, "hardware": hardware, "frames_per_s_per_replica": fps, "cold_start_s": cold}


def test_nodes_post_profiles_only_for_their_site_and_hardware_within_bounds(control_plane: ControlPlane) -> None:
    cp = control_plane
    clock = {"now": START + timedelta(hours=5)}  # a Monday, in the early shift
    cp.client.app.state.clock = lambda: clock["now"]  # type: ignore[attr-defined]
    sha = ok(cp.client.get("/models/1", headers=cp.a.pm))["sha256"]
    _, head = join(cp, "head-1")
    ok(cp.client.post("/agent/v1/profiles", json=_profile(sha), headers=head), 204)
    ok(cp.client.put(f"/lines/{cp.a.line_id}/order-plan", json=PLAN, headers=cp.a.pm))
    engine = cp.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        capacity.apply_plans(session, clock["now"])
    floor = ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["min_replicas"]

    # A node at another site, where this model serves nothing: the attack of the issue.
    south = ok(cp.client.post("/sites", json={"name": "south", "broker_port": 1884}, headers=cp.op), 201)
    token = ok(cp.client.post(f"/sites/{south['id']}/join-tokens", headers=cp.op), 201)["token"]
    body = {"token": token, "hostname": "south-1", "cpus": 8, "memory_mb": 32000}
    stranger = bearer(ok(cp.client.post("/agent/v1/join", json=body), 201)["node_token"])
    attack = _profile(sha, fps=1e-9, cold=1e12)
    assert cp.client.post("/agent/v1/profiles", json=_profile(sha), headers=stranger).status_code == 404
    assert cp.client.post("/agent/v1/profiles", json=attack, headers=stranger).status_code == 422
    # The site's own node: values out of bounds, or hardware it does not have.
    assert cp.client.post("/agent/v1/profiles", json=attack, headers=head).status_code == 422
    for hardware in ("NVIDIA H100", "cpu x999"):
        sent = cp.client.post("/agent/v1/profiles", json=_profile(sha, hardware=hardware), headers=head)
        assert sent.status_code == 422, (hardware, sent.text)

    with Session(engine) as session:
        capacity.apply_plans(session, clock["now"])
    assert ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["min_replicas"] == floor
    for path in (f"/slices/{cp.a.ids['slice']}/plan", f"/slices/{cp.a.ids['slice']}/capacity",
                 f"/lines/{cp.a.line_id}/order-plan"):  # fmt: skip
        assert cp.client.get(path, headers=cp.a.pm).status_code == 200, path


def test_one_slice_failing_to_plan_does_not_stop_the_others(control_plane: ControlPlane) -> None:
    cp = control_plane
    now = START + timedelta(hours=5)
    sha = ok(cp.client.get("/models/1", headers=cp.a.pm))["sha256"]
    _, head = join(cp, "head-1")
    ok(cp.client.post("/agent/v1/profiles", json=_profile(sha), headers=head), 204)
    for tenancy in (cp.a, cp.b):
        bounds = {"min_replicas": 0, "max_replicas": 3}
        ok(cp.client.post(f"/slices/{tenancy.ids['slice']}/scale", json=bounds, headers=tenancy.pm))
        ok(cp.client.put(f"/lines/{tenancy.line_id}/order-plan", json=PLAN, headers=tenancy.pm))
    engine = cp.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:  # acme's stored plan is damaged (a bad row, a bug): planning it raises
        row = session.exec(select(OrderPlan).where(OrderPlan.line_id == cp.a.line_id)).one()
        row.plan = {"views_per_part": 4}
        session.commit()
        planned = [e.slice_id for e in capacity.apply_plans(session, now)]
    assert planned == [cp.b.ids["slice"]]
    assert ok(cp.client.get(f"/slices/{cp.b.ids['slice']}", headers=cp.b.pm))["min_replicas"] == 1  # early shift
    assert ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["min_replicas"] == 0
    # and an operator sees it: the failure is counted on /metrics
    metrics = cp.client.get("/metrics", headers=cp.op).text
    failures = next(line for line in metrics.splitlines() if line.startswith("lineside_planning_failures_total"))
    assert float(failures.split()[-1]) >= 1
