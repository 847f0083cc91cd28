"""Control-plane API on SQLite and PostgreSQL: tenant isolation, roles, mass assignment, state machines."""

from __future__ import annotations

import pytest

from tests.integration.cp_fixtures import ControlPlane, ok

# Object type -> (get path, list path) for cross-tenant checks.
OBJECTS = {
    "tenant": ("/tenants/{id}", "/tenants"),
    "line": ("/lines/{id}", "/lines"),
    "robot": ("/robots/{id}", "/robots"),
    "slice": ("/slices/{id}", "/slices"),
}


def test_openapi_health_ready_metrics(control_plane: ControlPlane) -> None:
    c = control_plane.client
    assert ok(c.get("/healthz")) == {"status": "ok"}
    assert ok(c.get("/readyz")) == {"status": "ready"}
    paths = ok(c.get("/openapi.json"))["paths"]
    assert {"/robots", "/slices/{slice_id}/scale", "/agent/v1/desired", "/models"} <= set(paths)
    metrics = c.get("/metrics").text
    assert 'lineside_http_requests_total{method="POST",route="/robots",status="201"}' in metrics


def test_no_or_bad_token_is_401(control_plane: ControlPlane) -> None:
    c = control_plane.client
    assert c.get("/lines").status_code == 401
    response = c.get("/lines", headers={"Authorization": "Bearer ls_not-a-token"})
    assert response.status_code == 401 and response.json()["code"] == "unauthenticated"


@pytest.mark.parametrize("kind", sorted(OBJECTS))
def test_other_tenants_objects_are_404_and_unlisted(control_plane: ControlPlane, kind: str) -> None:
    c, a, b = control_plane.client, control_plane.a, control_plane.b
    get_path, list_path = OBJECTS[kind]
    for caller in (b.pm, b.it):  # 404, not 403: another tenant's ids are not even confirmed to exist
        response = c.get(get_path.format(id=a.ids[kind]), headers=caller)
        assert (response.status_code, response.json()["code"]) == (404, "not_found"), response.text
        listed = ok(c.get(list_path, headers=caller))
        assert all(item["id"] != a.ids[kind] for item in listed), f"{kind} of acme listed to globex"
        assert any(item["id"] == b.ids[kind] for item in listed), f"globex cannot see its own {kind}"
    # Operators see both.
    assert ok(c.get(get_path.format(id=a.ids[kind]), headers=control_plane.op))["id"] == a.ids[kind]


def test_other_tenants_objects_cannot_be_changed_or_used(control_plane: ControlPlane) -> None:
    c, a, b = control_plane.client, control_plane.a, control_plane.b
    assert c.post(f"/robots/{a.ids['robot']}/revoke", headers=b.it).status_code == 404
    assert c.post(f"/robots/{a.ids['robot']}/rotate", headers=b.it).status_code == 404
    assert c.post(f"/slices/{a.ids['slice']}/scale", json={"min_replicas": 0, "max_replicas": 2},
                  headers=b.pm).status_code == 404  # fmt: skip
    assert c.delete(f"/slices/{a.ids['slice']}", headers=b.pm).status_code == 404
    assert c.post("/robots", json={"slug": "spy", "line_id": a.line_id}, headers=b.it).status_code == 404
    body = {"slug": "spy", "line_ids": [a.line_id], "model_version_id": 1}
    assert c.post("/slices", json=body, headers=b.pm).status_code == 404
    # Users: a plant manager lists only their own tenant's users and cannot add to another tenant.
    emails = {u["email"] for u in ok(c.get("/users", headers=b.pm))}
    assert emails == {"plant_manager@globex.example", "factory_it@globex.example"}
    body = {"email": "x@acme.example", "role": "factory_it", "tenant_id": a.tenant_id}
    assert c.post("/users", json=body, headers=b.pm).status_code == 404


def test_tenant_models_are_private(control_plane: ControlPlane) -> None:
    from models import BUNDLED_MANIFEST

    c, a, b = control_plane.client, control_plane.a, control_plane.b
    manifest = BUNDLED_MANIFEST.read_text().replace('"version": "1.0.0"', '"version": "1.0.1"')
    files = {"file": ("m.onnx", (BUNDLED_MANIFEST.parent / "part-inspector.onnx").read_bytes())}
    own = ok(c.post("/models", files=files, data={"manifest": manifest}, headers=a.pm), 201)
    assert own["tenant_id"] == a.tenant_id
    assert c.get(f"/models/{own['id']}", headers=b.pm).status_code == 404
    assert c.get(f"/models/{own['id']}/file", headers=b.pm).status_code == 404
    assert own["id"] not in {m["id"] for m in ok(c.get("/models", headers=b.it))}
    assert own["id"] in {m["id"] for m in ok(c.get("/models", headers=a.it))}
    body = {"slug": "stolen", "line_ids": [b.line_id], "model_version_id": own["id"]}
    assert c.post("/slices", json=body, headers=b.pm).status_code == 404


ALL = ("operator", "plant_manager", "factory_it")
EVERYONE_200 = dict.fromkeys(ALL, 200)

# (method, path, body, {allowed role: the status it must get}) for every route that needs a role; every
# other role must get 403. Callers go in the order of ALL, so a later one may meet what an earlier made.
# {a_*} are acme's ids.
ROUTES = [
    ("POST", "/tenants", {"slug": "new-co", "name": "New"}, {"operator": 201}),
    ("POST", "/sites", {"name": "south"}, {"operator": 201}),
    ("GET", "/sites/{site}/broker-admin", None, {"operator": 200}),
    ("POST", "/sites/{site}/join-tokens", None, {"operator": 201}),
    ("POST", "/sites/{site}/broker/sync", None, {"operator": 200}),
    ("GET", "/nodes", None, {"operator": 200}),
    ("GET", "/nodes/999", None, {"operator": 404}),  # allowed, and there is no such node
    ("POST", "/nodes/999/status", {"status": "draining"}, {"operator": 404}),
    ("GET", "/sites/{site}", None, EVERYONE_200),
    ("GET", "/robots/{a_robot}", None, EVERYONE_200),
    ("GET", "/slices/{a_slice}", None, EVERYONE_200),
    ("GET", "/sites", None, EVERYONE_200),
    # An operator must say which tenant the user joins (400); a plant manager adds to their own.
    ("POST", "/users", {"email": "n@acme.example", "role": "factory_it"}, {"operator": 400, "plant_manager": 201}),
    ("POST", "/lines", {"slug": "line-2", "site_id": "{site}"}, {"plant_manager": 201, "factory_it": 409}),
    ("POST", "/robots", {"slug": "cam-9", "line_id": "{a_line}"}, {"factory_it": 201}),
    ("POST", "/robots/{a_robot}/rotate", None, {"factory_it": 200}),
    ("GET", "/robots", None, EVERYONE_200),
    ("POST", "/slices", {"slug": "more", "line_ids": ["{a_line}"], "model_version_id": 1}, {"plant_manager": 201}),
    ("POST", "/slices/{a_slice}/scale", {"min_replicas": 1, "max_replicas": 2}, {"plant_manager": 200}),
    ("GET", "/slices", None, EVERYONE_200),
    ("DELETE", "/slices/{a_slice}", None, {"plant_manager": 200}),
    ("POST", "/robots/{a_robot}/revoke", None, {"factory_it": 200}),
]


def _fill(value, ids: dict[str, int]):
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return ids[value[1:-1]]
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "body", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, *_ in ROUTES])
def test_every_route_checks_the_role(control_plane: ControlPlane, method: str, path: str, body: object,
                                     allowed: dict[str, int]) -> None:  # fmt: skip
    cp = control_plane
    ids = {"site": cp.site_id, **{f"a_{k}": v for k, v in cp.a.ids.items() if isinstance(v, int)}}
    if "{a_" in path and "operator" not in allowed:
        callers = {"plant_manager": cp.a.pm, "factory_it": cp.a.it}
    else:
        callers = {"operator": cp.op, "plant_manager": cp.a.pm, "factory_it": cp.a.it}
    for role, headers in callers.items():
        response = cp.client.request(method, path.format(**ids), json=_fill(body, ids), headers=headers)
        if role in allowed:
            assert response.status_code == allowed[role], f"{role}: {response.status_code} {response.text}"
        else:
            assert response.status_code == 403, f"{role} was let through: {response.status_code} {response.text}"
            assert role in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/lines", {"slug": "line-3", "site_id": 1, "tenant_id": 2}),
        ("/robots", {"slug": "cam-2", "line_id": 1, "status": "active"}),
        ("/robots", {"slug": "cam-2", "line_id": 1, "tenant_id": 2}),
        ("/slices", {"slug": "s", "line_ids": [1], "model_version_id": 1, "status": "running"}),
        ("/slices", {"slug": "s", "line_ids": [1], "model_version_id": 1, "generation": 9}),
        ("/slices", {"slug": "s", "line_ids": [1], "model_version_id": 1, "tenant_id": 2}),
    ],
)
def test_server_owned_fields_cannot_be_set(control_plane: ControlPlane, path: str, body: dict[str, object]) -> None:
    headers = control_plane.a.pm if path == "/slices" else control_plane.a.it
    response = control_plane.client.post(path, json=body, headers=headers)
    assert response.status_code == 422
    assert "Extra inputs are not permitted" in response.text


def test_illegal_state_changes_are_409_with_the_reason(control_plane: ControlPlane) -> None:
    c, a = control_plane.client, control_plane.a
    ok(c.delete(f"/slices/{a.ids['slice']}", headers=a.pm))
    scale = c.post(f"/slices/{a.ids['slice']}/scale", json={"min_replicas": 1, "max_replicas": 1}, headers=a.pm)
    assert scale.status_code == 409
    assert scale.json()["detail"] == "slice inspect is deleting; it cannot become pending (allowed: deleted)"
    ok(c.post(f"/robots/{a.ids['robot']}/revoke", headers=a.it))
    again = c.post(f"/robots/{a.ids['robot']}/rotate", headers=a.it)
    assert again.status_code == 409 and "revoked" in again.json()["detail"]


def test_duplicate_names_are_409(control_plane: ControlPlane) -> None:
    c, a = control_plane.client, control_plane.a
    response = c.post("/robots", json={"slug": "cam-1", "line_id": a.line_id}, headers=a.it)
    assert response.status_code == 409 and "already exists" in response.json()["detail"]
    response = c.post("/tenants", json={"slug": "acme", "name": "Again"}, headers=control_plane.op)
    assert response.status_code == 409
