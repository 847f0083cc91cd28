"""Who owns a node and where a slice's frames may go (issue 14, sections 1 and 4), on both databases.

Acme is a factory with one small edge server of its own; globex acts as a lab that lends a big GPU server
on weekday nights. Each has an ``edge_operator`` who joins, lends and takes back its tenant's nodes and
sees no one else's; the operator sees them all.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.integration.cp_fixtures import ControlPlane, bearer, coming_monday, ok

MONDAY_NIGHT = coming_monday(22)
NIGHTS = {"contributed": True, "windows": [{"days": [0, 1, 2, 3, 4], "start": "20:00", "end": "07:00"}]}


def edge_operator(cp: ControlPlane, tenant_id: int, creator: dict[str, str], email: str) -> dict[str, str]:
    body = {"email": email, "role": "edge_operator", "tenant_id": tenant_id}
    user = ok(cp.client.post("/users", json=body, headers=creator), 201)
    assert user["role"] == "edge_operator" and user["tenant_id"] == tenant_id
    return bearer(user["token"])


def join(client: TestClient, token: str, hostname: str, cpus: int, *, worker: bool = True) -> dict[str, object]:
    body = {"token": token, "hostname": hostname, "cpus": cpus, "memory_mb": 64000,
            "ray_address": "10.0.0.1:6379" if worker else None}  # fmt: skip
    node = ok(client.post("/agent/v1/join", json=body), 201)
    ok(client.post("/agent/v1/heartbeat", json={}, headers=bearer(node["node_token"])))
    return dict(node)


def site_of_owners(cp: ControlPlane) -> tuple[dict[str, str], dict[str, str], int, int, int, dict[str, str]]:
    """The operator's 8-CPU head node, acme's 2-CPU edge server, globex's 16-CPU lab server lent on weekday nights."""
    cp.client.app.state.clock = lambda: MONDAY_NIGHT  # type: ignore[attr-defined]
    acme_eo = edge_operator(cp, cp.a.tenant_id, cp.a.pm, "edge@acme.example")  # a plant manager may add one
    lab_eo = edge_operator(cp, cp.b.tenant_id, cp.op, "edge@globex.example")
    head_token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)
    assert head_token["owner_tenant_id"] is None
    head = join(cp.client, head_token["token"], "op-head", cpus=8, worker=False)
    issued = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=acme_eo), 201)
    assert issued["owner_tenant_id"] == cp.a.tenant_id
    refused = cp.client.post("/agent/v1/join", json={"token": issued["token"], "hostname": "acme-1", "cpus": 2,
                                                     "memory_mb": 64000})  # fmt: skip
    assert refused.status_code == 422 and "--ray-address" in refused.json()["detail"]  # never the Ray head
    acme_node = join(cp.client, issued["token"], "acme-1", cpus=2)  # the refused join left the token usable
    lab_token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=lab_eo), 201)["token"]
    lab = join(cp.client, lab_token, "lab-gpu-1", cpus=16)
    assert (acme_node["owner_tenant_id"], lab["owner_tenant_id"]) == (cp.a.tenant_id, cp.b.tenant_id)
    ok(cp.client.put(f"/nodes/{lab['id']}/contribution", json=NIGHTS, headers=lab_eo))
    ids = int(str(head["id"])), int(str(acme_node["id"])), int(str(lab["id"]))
    return acme_eo, lab_eo, *ids, bearer(str(lab["node_token"]))


def test_edge_operators_join_see_lend_and_take_back_only_their_own_nodes(control_plane: ControlPlane) -> None:
    cp = control_plane
    acme_eo, lab_eo, head, acme_node, lab, _ = site_of_owners(cp)
    assert [n["id"] for n in ok(cp.client.get("/nodes", headers=acme_eo))] == [acme_node]
    assert [n["id"] for n in ok(cp.client.get(f"/nodes?site_id={cp.site_id}", headers=lab_eo))] == [lab]
    every = {n["id"]: n["owner_tenant_id"] for n in ok(cp.client.get("/nodes", headers=cp.op))}
    assert every == {head: None, acme_node: cp.a.tenant_id, lab: cp.b.tenant_id}
    # Another owner's node, or the operator's, is missing to an edge operator, whatever it asks.
    for node in (lab, head):
        assert cp.client.get(f"/nodes/{node}", headers=acme_eo).status_code == 404
        assert cp.client.put(f"/nodes/{node}/contribution", json=NIGHTS, headers=acme_eo).status_code == 404
        assert cp.client.post(f"/nodes/{node}/status", json={"status": "draining"}, headers=acme_eo).status_code == 404
    assert ok(cp.client.get(f"/nodes/{head}", headers=cp.op))["status"] == "online"  # untouched
    other = cp.client.post(f"/sites/{cp.site_id}/join-tokens?owner_tenant_id={cp.b.tenant_id}", headers=acme_eo)
    assert other.status_code == 404
    # Other roles see no nodes; edge operators run no slices.
    assert cp.client.get("/nodes", headers=cp.a.pm).status_code == 403
    assert cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.a.it).status_code == 403
    body = {"slug": "x", "line_ids": [cp.a.line_id], "model_version_id": 1}
    assert cp.client.post("/slices", json=body, headers=acme_eo).status_code == 403
    # The owner takes its node back (drain) and returns it; removing it stays the operator's.
    assert ok(cp.client.post(f"/nodes/{acme_node}/status", json={"status": "draining"}, headers=acme_eo))["status"] in (
        "draining",
        "drained",
    )
    assert (
        ok(cp.client.post(f"/nodes/{acme_node}/status", json={"status": "online"}, headers=acme_eo))["status"]
        == "online"
    )
    removed = cp.client.post(f"/nodes/{acme_node}/status", json={"status": "removed"}, headers=acme_eo)
    assert removed.status_code == 403 and "operator" in removed.json()["detail"]
    # Operators issue tokens for a tenant's own servers too.
    issued = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens?owner_tenant_id={cp.a.tenant_id}", headers=cp.op), 201)
    assert issued["owner_tenant_id"] == cp.a.tenant_id
    assert cp.client.post(f"/sites/{cp.site_id}/join-tokens?owner_tenant_id=999999", headers=cp.op).status_code == 404


def test_an_own_nodes_slice_never_runs_on_a_lent_node_of_another_owner(control_plane: ControlPlane) -> None:
    cp = control_plane
    acme_eo, _, head, acme_node, lab, _ = site_of_owners(cp)
    base = {"line_ids": [cp.a.line_id], "model_version_id": 1, "priority": "bank", "max_replicas": 4}
    # Acme's new slices go to its own server first, though the operator's head has more room.
    first = ok(cp.client.post("/slices", json={**base, "slug": "first", "priority": "reserved", "max_replicas": 1},
                              headers=cp.a.pm), 201)  # fmt: skip
    assert first["residency"] == "site" and first["placement"] == {str(acme_node): 1}
    own = ok(cp.client.post("/slices", json={**base, "slug": "own-only", "residency": "own_nodes"}, headers=cp.a.pm),
             201)  # fmt: skip
    assert own["residency"] == "own_nodes"
    assert own["placement"] == {str(acme_node): 1}  # all that is left on acme's server; the lab has 16 free CPUs
    # The same slice allowed into the bank does use the lab's lent server: the lab had the room.
    anywhere = ok(cp.client.post("/slices", json={**base, "slug": "anywhere", "residency": "any_bank"},
                                 headers=cp.a.pm), 201)  # fmt: skip
    assert anywhere["placement"] == {str(lab): 4}
    events = ok(cp.client.get(f"/slices/{own['id']}/events", headers=cp.a.pm))
    [alert] = [e for e in events if e["reason"].startswith("residency own_nodes:")]
    assert alert["kind"] == "alert" and "it runs 1 of 4 replica(s)" in alert["reason"]
    # Acme takes its server back: the slice has nowhere it may go, says so, and still stays off the lab.
    ok(cp.client.post(f"/nodes/{acme_node}/status", json={"status": "draining"}, headers=acme_eo))
    assert ok(cp.client.get(f"/slices/{own['id']}", headers=cp.a.pm))["placement"] == {}
    events = ok(cp.client.get(f"/slices/{own['id']}/events", headers=cp.a.pm))
    residency = [e["reason"] for e in events if e["reason"].startswith("residency own_nodes:")]
    assert len(residency) == 2 and any("it runs 0 of 4 replica(s), below its floor of 1" in r for r in residency)
    # Re-placing with nothing changed records nothing more.
    ok(cp.client.put(f"/nodes/{lab}/contribution", json=NIGHTS, headers=cp.op))
    again = ok(cp.client.get(f"/slices/{own['id']}/events", headers=cp.a.pm))
    assert len([e for e in again if e["reason"].startswith("residency ")]) == 2
    # An operator_nodes slice never lands on a tenant's server either.
    body = {**base, "slug": "operator-only", "residency": "operator_nodes", "priority": "burst", "max_replicas": 2}
    operator_only = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
    assert set(operator_only["placement"]) <= {str(head)}


def test_a_lent_node_running_a_tenants_slice_gets_no_broker_password(control_plane: ControlPlane) -> None:
    """The lab's server runs acme's bank replicas, not their ingress: no slice's broker password reaches it."""
    cp = control_plane
    *_, acme_node, lab, lab_agent = site_of_owners(cp)
    body = {"slug": "night", "line_ids": [cp.a.line_id], "model_version_id": 1, "priority": "bank",
            "residency": "any_bank", "max_replicas": 4}  # fmt: skip
    night = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
    assert night["placement"] == {str(acme_node): 2, str(lab): 2}  # its own server first, then the lab's
    slices = ok(cp.client.get("/agent/v1/desired", headers=lab_agent))["slices"]
    assert night["id"] in {s["slice_id"] for s in slices}
    assert all(s["spec"]["broker"]["password"] is None for s in slices)


def test_an_edge_operator_logs_in_to_the_contributors_page(control_plane: ControlPlane) -> None:
    cp = control_plane
    body = {"email": "edge@globex.example", "role": "edge_operator", "tenant_id": cp.b.tenant_id,
            "password": "lends-at-night"}  # fmt: skip
    ok(cp.client.post("/users", json=body, headers=cp.op), 201)
    ok(cp.client.post("/auth/login", json={"email": body["email"], "password": body["password"]}))
    home = cp.client.get("/ui", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"] == "/ui/contributor"
    page = cp.client.get("/ui/contributor")
    assert page.status_code == 200 and "Your contribution this month" in page.text
    plant = cp.client.get("/ui/plant")
    assert plant.status_code == 403 and "edge_operator" in plant.text
