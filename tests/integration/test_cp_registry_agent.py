"""Model registry uploads and the edge agent's API (join, desired state, heartbeats)."""

from __future__ import annotations

import hashlib
import io
import json
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models import BUNDLED_MANIFEST
from tests.integration.cp_fixtures import ControlPlane, bearer, ok

BUNDLED = (BUNDLED_MANIFEST.parent / "part-inspector.onnx").read_bytes()


def _manifest(data: bytes, **changes: object) -> str:
    manifest = json.loads(BUNDLED_MANIFEST.read_text())
    manifest.update({"version": "2.0.0", "sha256": hashlib.sha256(data).hexdigest()}, **changes)
    return json.dumps(manifest)


def _tiny_model(batch: int | str, side: int = 128) -> bytes:
    """A valid classifier-shaped ONNX graph: global average pool -> 6 fixed scores -> softmax."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, side, side])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 6])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 6], np.ones((3, 6), np.float32).ravel().tolist())
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = io.BytesIO()
    onnx.save(model, out)
    return out.getvalue()


def _upload(cp: ControlPlane, data: bytes, manifest: str, **form: object):
    files = {"file": ("model.onnx", data)}
    return cp.client.post("/models", files=files, data={"manifest": manifest, **form}, headers=cp.a.pm)


def test_good_upload_is_stored_by_hash_and_downloadable(control_plane: ControlPlane) -> None:
    cp = control_plane
    data = _tiny_model("N")
    version = ok(_upload(cp, data, _manifest(data)), 201)
    assert version["sha256"] == hashlib.sha256(data).hexdigest() and version["fixed_batch"] is None
    assert (cp.settings.model_store / f"{version['sha256']}.onnx").read_bytes() == data
    assert cp.client.get(f"/models/{version['id']}/file", headers=cp.a.it).content == data
    again = _upload(cp, data, _manifest(data))
    assert again.status_code == 409 and "bump the version" in again.json()["detail"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not_onnx", "not a valid ONNX model"),
        ("wrong_input_size", "the manifest says [N, 3, 128, 128]"),
        ("wrong_input_name", "is not a graph input"),
        ("fixed_batch", "fixed batch axis of 1 but max_batch_size 8"),
        ("hash_mismatch", "does not match the file's"),
        ("bad_manifest", "manifest is invalid: labels"),
        ("too_large", "limit"),
    ],
)
def test_bad_uploads_are_422_naming_the_problem(control_plane: ControlPlane, case: str, expected: str) -> None:
    cp = control_plane
    data, form = _tiny_model("N"), {}
    manifest = _manifest(data)
    if case == "not_onnx":
        data = b"this is a text file, not a model"
        manifest = _manifest(data)
    elif case == "wrong_input_size":
        data = _tiny_model("N", side=64)
        manifest = _manifest(data)
    elif case == "wrong_input_name":
        spec = json.loads(BUNDLED_MANIFEST.read_text())["input"] | {"name": "pixels"}
        manifest = _manifest(data, input=spec)
    elif case == "fixed_batch":
        data = _tiny_model(1)
        manifest, form = _manifest(data), {"max_batch_size": 8}
    elif case == "hash_mismatch":
        manifest = _manifest(data, sha256="0" * 64)
    elif case == "bad_manifest":
        manifest = _manifest(data, labels=["good"])
    elif case == "too_large":
        cp.settings.max_model_bytes = 100  # the tiny model is ~300 bytes
    response = _upload(cp, data, manifest, **form)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert not any(m["version"] == "2.0.0" for m in ok(cp.client.get("/models", headers=cp.a.pm)))


def _join(cp: ControlPlane, hostname: str = "edge-1") -> dict[str, object]:
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    body = {"token": token, "hostname": hostname, "cpus": 16, "memory_mb": 64000,
            "gpus": [{"model": "NVIDIA L4", "memory_mb": 24000}], "ray_address": "10.0.0.5:6379"}  # fmt: skip
    node = ok(cp.client.post("/agent/v1/join", json=body), 201)
    again = cp.client.post("/agent/v1/join", json=body)
    assert again.status_code == 401 and "used" in again.json()["detail"]
    return node


def test_agent_joins_pulls_desired_state_and_reports(control_plane: ControlPlane) -> None:
    cp = control_plane
    node = _join(cp)
    agent = bearer(str(node["node_token"]))
    assert node["status"] == "joining" and node["gpus"] == [{"model": "NVIDIA L4", "memory_mb": 24000}]
    first = cp.client.get("/agent/v1/desired", headers=agent)
    state, etag = ok(first), first.headers["etag"]
    names = sorted(s["spec"]["name"] for s in state["slices"])
    assert names == [f"t{cp.a.tenant_id}-inspect", f"t{cp.b.tenant_id}-inspect"]
    assert cp.client.get("/agent/v1/desired", headers={**agent, "If-None-Match": etag}).status_code == 304
    ok(
        cp.client.post(
            f"/slices/{cp.a.ids['slice']}/scale", json={"min_replicas": 1, "max_replicas": 3}, headers=cp.a.pm
        )
    )
    changed = cp.client.get("/agent/v1/desired", headers={**agent, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    spec_a = next(s for s in changed.json()["slices"] if s["slice_id"] == cp.a.ids["slice"])
    assert spec_a["generation"] == 2 and spec_a["spec"]["replicas"]["max_replicas"] == 3
    # The model file the slice needs, by hash.
    sha = spec_a["model"]["sha256"]
    assert hashlib.sha256(cp.client.get(f"/agent/v1/models/{sha}", headers=agent).content).hexdigest() == sha
    # Heartbeat with the actual state: the slice becomes running at generation 2.
    report = {"slice_id": cp.a.ids["slice"], "generation": 2, "healthy": True,
              "replicas": {"model": {"RUNNING": 1}}}  # fmt: skip
    beat = ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [report], "applications": []}, headers=agent))
    assert beat["status"] == "online"
    slice_a = ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))
    assert (slice_a["status"], slice_a["observed_generation"]) == ("running", 2)
    # Serve's autoscaler adds replicas within the bounds: recorded as a reactive scale change.
    current = ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["generation"]  # placement bumps it
    more = {**report, "generation": current, "replicas": {"model": {"RUNNING": 3}}}
    ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [more]}, headers=agent))
    reactive = [e for e in ok(cp.client.get(f"/slices/{cp.a.ids['slice']}/events", headers=cp.a.pm))
                if e["kind"] == "reactive"]  # fmt: skip
    assert len(reactive) == 1 and "1 -> 3 running model replicas" in reactive[0]["reason"]
    # A stale report (generation 1) does not overwrite it.
    stale = {**report, "generation": 1, "healthy": False, "failed": True}
    ok(cp.client.post("/agent/v1/heartbeat", json={"slices": [stale]}, headers=agent))
    assert ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["status"] == "running"
    # Releasing: deleting until the agent reports the application gone.
    ok(cp.client.delete(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))
    app_a = f"t{cp.a.tenant_id}-inspect"
    ok(cp.client.post("/agent/v1/heartbeat", json={"applications": [app_a]}, headers=agent))
    assert ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["status"] == "deleting"
    ok(cp.client.post("/agent/v1/heartbeat", json={}, headers=agent))  # a worker node's beat says nothing of apps
    assert ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["status"] == "deleting"
    ok(cp.client.post("/agent/v1/heartbeat", json={"applications": []}, headers=agent))
    assert ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))["status"] == "deleted"
    assert all(
        s["slice_id"] != cp.a.ids["slice"] for s in ok(cp.client.get("/agent/v1/desired", headers=agent))["slices"]
    )


@pytest.mark.parametrize("cp_overrides", [{"heartbeat_timeout_s": 1.0}])
def test_silent_node_goes_offline_and_only_operators_see_nodes(control_plane: ControlPlane) -> None:
    cp = control_plane
    node = _join(cp)
    ok(cp.client.post("/agent/v1/heartbeat", json={}, headers=bearer(str(node["node_token"]))))
    assert ok(cp.client.get(f"/nodes/{node['id']}", headers=cp.op))["status"] == "online"
    deadline = time.monotonic() + 10
    while ok(cp.client.get(f"/nodes/{node['id']}", headers=cp.op))["status"] != "offline":
        assert time.monotonic() < deadline, "a silent node stayed online"
        time.sleep(0.2)
    ok(cp.client.post("/agent/v1/heartbeat", json={}, headers=bearer(str(node["node_token"]))))
    assert ok(cp.client.get(f"/nodes/{node['id']}", headers=cp.op))["status"] == "online"
    assert cp.client.get("/nodes", headers=cp.a.pm).status_code == 403
    drained = ok(cp.client.post(f"/nodes/{node['id']}/status", json={"status": "draining"}, headers=cp.op))
    assert drained["status"] == "drained"  # nothing was placed on it, so draining finishes at once
    agents_only = cp.client.post(f"/nodes/{node['id']}/status", json={"status": "drained"}, headers=cp.op)
    assert agents_only.status_code == 422  # only the agent sets it: a request to fix, not a conflict
    ok(cp.client.post(f"/nodes/{node['id']}/status", json={"status": "removed"}, headers=cp.op))
    illegal = cp.client.post(f"/nodes/{node['id']}/status", json={"status": "online"}, headers=cp.op)
    assert illegal.status_code == 409 and "is removed; it cannot become online" in illegal.json()["detail"]


def test_migrations_are_idempotent(control_plane: ControlPlane) -> None:
    from control_plane import db

    db.migrate(cp_engine := control_plane.client.app.state.engine)  # type: ignore[attr-defined]
    db.migrate(cp_engine)
    assert ok(control_plane.client.get("/readyz")) == {"status": "ready"}
