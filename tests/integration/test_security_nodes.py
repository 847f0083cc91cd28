"""What a site's nodes can get and do (issue 11, items 4, 5 and 6), against a real Mosquitto and both databases.

A node is trusted with what it runs, nothing more: only the node that runs the slices' ingress (the
site's Ray head, whose agent applies the slices) receives broker passwords, those passwords rotate when
a node leaves, and a node's model profiles speak only for its own site and hardware.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from control_plane.server import BackgroundServer
from edge_node.broker import free_port
from tests.integration.cp_fixtures import ControlPlane, bearer, ok
from tests.integration.test_cp_broker import Probe


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

    username, password = broker_sync.ingress_connection(broker["username"], broker["password"], rank=0)
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
