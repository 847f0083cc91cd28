"""Values a request may not hold answer 422 and quote them; 409 stays for conflicts with stored state.

A caller who sends min_replicas above max_replicas, or a batch the model cannot take, has a request to
fix, not a state to wait out: that is a validation error (422), and its message quotes the values.
Duplicates and illegal state changes keep answering 409 (tests/integration/test_cp_api.py).
"""

from __future__ import annotations

from typing import Any

from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.test_cp_registry_agent import _join, _manifest, _tiny_model, _upload


def _public_model(cp: ControlPlane) -> int:
    return next(m["id"] for m in ok(cp.client.get("/models", headers=cp.a.pm)) if m["tenant_id"] is None)


def _slice_body(cp: ControlPlane, **knobs: Any) -> dict[str, Any]:
    return {"slug": "second", "line_ids": [cp.a.line_id], "model_version_id": _public_model(cp), **knobs}


def _slugs(cp: ControlPlane) -> list[str]:
    return [s["slug"] for s in ok(cp.client.get("/slices", headers=cp.a.pm))]


def test_new_slice_with_floor_above_ceiling_is_422_quoting_both(control_plane: ControlPlane) -> None:
    cp = control_plane
    response = cp.client.post("/slices", json=_slice_body(cp, min_replicas=5, max_replicas=3), headers=cp.a.pm)
    assert response.status_code == 422, response.text
    assert "max_replicas (3) must be >= min_replicas (5)" in response.text
    assert _slugs(cp) == ["inspect"]


def test_scaling_to_floor_above_ceiling_is_422_and_changes_nothing(control_plane: ControlPlane) -> None:
    cp = control_plane
    path = f"/slices/{cp.a.ids['slice']}"
    before = ok(cp.client.get(path, headers=cp.a.pm))
    response = cp.client.post(f"{path}/scale", json={"min_replicas": 4, "max_replicas": 2}, headers=cp.a.pm)
    assert response.status_code == 422, response.text
    assert "max_replicas (2) must be >= min_replicas (4)" in response.text
    after = ok(cp.client.get(path, headers=cp.a.pm))
    assert (after["min_replicas"], after["max_replicas"], after["generation"]) == (
        before["min_replicas"], before["max_replicas"], before["generation"])  # fmt: skip


def test_slice_over_lines_of_two_sites_is_422(control_plane: ControlPlane) -> None:
    cp = control_plane
    south = ok(cp.client.post("/sites", json={"name": "south", "broker_port": 1884}, headers=cp.op), 201)
    line = ok(cp.client.post("/lines", json={"slug": "line-s", "site_id": south["id"]}, headers=cp.a.it), 201)
    body = _slice_body(cp, line_ids=[cp.a.line_id, line["id"]])
    response = cp.client.post("/slices", json=body, headers=cp.a.pm)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_input"
    assert f"lines [{cp.a.line_id}, {line['id']}] are on sites [{cp.site_id}, {south['id']}]" in response.text
    assert _slugs(cp) == ["inspect"]


def test_batch_above_the_models_fixed_batch_is_422_naming_both(control_plane: ControlPlane) -> None:
    cp = control_plane
    data = _tiny_model(4)
    model = ok(_upload(cp, data, _manifest(data), max_batch_size=4), 201)
    assert model["fixed_batch"] == 4
    body = _slice_body(cp, model_version_id=model["id"], max_batch_size=8)
    response = cp.client.post("/slices", json=body, headers=cp.a.pm)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_input"
    assert "takes batches of 4; max_batch_size 8 is too large" in response.text
    ok(cp.client.post("/slices", json={**body, "max_batch_size": 4}, headers=cp.a.pm), 201)


def test_a_status_only_the_agent_sets_is_422(control_plane: ControlPlane) -> None:
    cp = control_plane
    node = _join(cp)
    response = cp.client.post(f"/nodes/{node['id']}/status", json={"status": "offline"}, headers=cp.op)
    assert response.status_code == 422, response.text
    assert "draining, online or removed" in response.text and "offline" in response.text
    assert ok(cp.client.get(f"/nodes/{node['id']}", headers=cp.op))["status"] == "joining"


def test_a_new_slice_gets_the_edge_specs_defaults(control_plane: ControlPlane) -> None:
    """What a caller leaves out is what an edge node's slice spec would default to."""
    from contracts.slice_spec import BatchSpec, ReplicaSpec, ResourceSpec

    cp = control_plane
    created = ok(cp.client.post("/slices", json=_slice_body(cp), headers=cp.a.pm), 201)
    for spec in (ReplicaSpec(), BatchSpec(), ResourceSpec()):
        shared = {name: created[name] for name in type(spec).model_fields if name in created}
        assert shared and shared == spec.model_dump(include=set(shared)), type(spec).__name__
