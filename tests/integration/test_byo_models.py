"""Bring your own model: each kind uploaded through the API, checked, and served on frames.

The models are tiny graphs from ``tests.byo_models`` whose verdicts a test can predict from the
colours it draws. Uploads go through the real registry (its checker child process); the stored file
and manifest are then what the runtime, and a real Ray Serve slice, load.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts import wire
from contracts.slice_spec import BrokerSpec, ReplicaSpec, SliceSpec
from edge_node import cluster
from edge_node.broker import MosquittoBroker
from edge_node.runtime import InspectionModel, Verdict
from robots.sdk import RobotClient
from tests import byo_models as byo
from tests.integration.cp_fixtures import ControlPlane, ok

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _kinds() -> dict[str, tuple[bytes, dict[str, Any]]]:
    """One model of each kind, with its manifest."""
    logits = byo.classifier(kind="logits", layout="NHWC", dtype="uint8", color="BGR")
    anomaly, raw, post = byo.anomaly(), byo.detector(raw=True), byo.detector(raw=False)
    raw_pixels = {"scale": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}
    bgr_uint8 = {"layout": "NHWC", "dtype": "uint8", "color": "BGR"}
    return {
        "logits": (logits, byo.manifest(logits, name="logits", kind="logits", input=bgr_uint8, preprocess=raw_pixels)),
        "anomaly": (anomaly, byo.anomaly_manifest(anomaly)),
        "detections_raw": (raw, byo.detector_manifest(raw, raw=True)),
        "detections": (post, byo.detector_manifest(post, raw=False, fit="stretch")),
    }


# A frame that fails each kind (red or bright patch) and one that passes it (blue or dark).
FAILING = byo.frame(128, 128, ((32, 32, 64, 64), WHITE), ((64, 64, 128, 128), RED))
PASSING = byo.frame(128, 128, ((0, 0, 128, 128), (0, 0, 40)))


def _upload(cp: ControlPlane, data: bytes, manifest: dict[str, Any]) -> Any:
    files = {"file": ("model.onnx", data)}
    return cp.client.post("/models", files=files, data={"manifest": json.dumps(manifest)}, headers=cp.a.pm)


def _download(cp: ControlPlane, version: dict[str, Any], folder: Path) -> Path:
    """The stored model and manifest as an agent gets them, written to ``folder``; the manifest's path."""
    manifest = version["manifest"]
    (folder / manifest["file"]).write_bytes(cp.client.get(f"/models/{version['id']}/file", headers=cp.a.it).content)
    path = folder / f"{version['name']}.manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def _upload_all(cp: ControlPlane, folder: Path) -> dict[str, Path]:
    paths = {}
    for kind, (data, manifest) in _kinds().items():
        version = ok(_upload(cp, data, manifest), 201)
        paths[kind] = _download(cp, version, folder)
    return paths


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_each_kind_is_accepted_and_judges_frames_as_uploaded(control_plane: ControlPlane, tmp_path: Path) -> None:
    for kind, path in _upload_all(control_plane, tmp_path).items():
        model = InspectionModel(path, warmup_batch=2)
        failed, passed = model.inspect([FAILING, PASSING])
        assert isinstance(failed, Verdict) and isinstance(passed, Verdict)
        assert (failed.verdict, passed.verdict) == ("fail", "pass"), kind
        if kind == "anomaly":
            assert failed.location is not None and failed.location["box"] is not None
        if kind.startswith("detections"):
            assert failed.boxes and all(b["label"] == "scratch" for b in failed.boxes)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_anomaly_model_shaped_like_a_fitted_one_is_accepted(control_plane: ControlPlane) -> None:
    """256 x 256 input, score (N, 1), map (N, 64, 64), a raw threshold far above 1."""
    data = byo.anomaly(side=256, squeezed=True)
    version = ok(_upload(control_plane, data, byo.anomaly_manifest(data, side=256, threshold=42.5)), 201)
    assert version["manifest"]["decision"]["threshold"] == 42.5
    assert version["manifest"]["output"] == {"name": "score", "kind": "anomaly", "map": "anomaly_map"}


def _mismatch(case: str) -> tuple[bytes, dict[str, Any]]:
    if case == "probabilities_not_summing_to_1":
        data = byo.classifier(kind="logits")
        return data, byo.manifest(data, name="c", kind="probabilities", output={"name": "logits"})
    if case == "logits_already_softmax":
        data = byo.classifier(kind="probabilities")
        return data, byo.manifest(data, name="c", kind="logits", output={"name": "probs"})
    if case == "detector_of_wrong_rank":
        data = byo.anomaly()
        spec = byo.detector_manifest(data, raw=True)
        return data, {**spec, "output": {"name": "score", "kind": "detections_raw"}}
    if case == "post_nms_declared_raw":
        data = byo.detector(raw=False)
        spec = byo.detector_manifest(data, raw=True)
        return data, {**spec, "output": {"name": "detections", "kind": "detections_raw"}}
    if case == "detector_without_sigmoid":
        data = byo.detector(raw=True, gain=4.0)
        return data, byo.detector_manifest(data, raw=True)
    data = byo.anomaly(flat_map=True)
    return data, byo.anomaly_manifest(data)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("probabilities_not_summing_to_1", "declared probabilities but its rows sum to"),
        ("logits_already_softmax", "declared logits but it is already a softmax"),
        ("detector_of_wrong_rank", "detector output 'score' has shape [2]; kind detections_raw expects [2, 7,"),
        ("post_nms_declared_raw", "detector output 'detections' has shape [2, 64, 6]"),
        ("detector_without_sigmoid", "they must be 0..1 (export the model with its sigmoid)"),
        ("anomaly_map_of_wrong_rank", "anomaly map 'anomaly_map' has shape [2, 256]; expected [2, h, w]"),
    ],
)
def test_an_output_that_is_not_its_declared_kind_is_422(control_plane: ControlPlane, case: str, expected: str) -> None:
    data, manifest = _mismatch(case)
    response = _upload(control_plane, data, manifest)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert expected in detail
    assert "onnxruntime." not in detail and "Traceback" not in detail  # our words, not a library's
    assert not any(
        m["name"] == manifest["name"] for m in ok(control_plane.client.get("/models", headers=control_plane.a.pm))
    )


# --- a real slice --------------------------------------------------------------------------------


@pytest.fixture
def robot(broker: MosquittoBroker) -> Iterator[RobotClient]:
    client = RobotClient(broker.host, broker.port, tenant="acme", line="line-1", robot="cam-1").connect()
    yield client
    client.close()


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_uploaded_models_of_each_kind_serve_on_a_slice(
    control_plane: ControlPlane, broker: MosquittoBroker, robot: RobotClient, tmp_path: Path
) -> None:
    """One slice moves through a model of each kind; robots get verdicts with the anomaly's location and
    the defect boxes."""
    paths = _upload_all(control_plane, tmp_path)
    spec = SliceSpec(name="byo", tenant="acme", lines=["line-1"], broker=BrokerSpec(port=broker.port),
                     replicas=ReplicaSpec(min_replicas=1, max_replicas=1))  # fmt: skip
    try:
        for kind in ("anomaly", "detections_raw", "detections", "logits"):
            spec = spec.model_copy(update={"manifest": paths[kind]})
            assert cluster.apply_slice(spec, wait_s=120)
            failed, passed = robot.inspect(FAILING, timeout_s=20), robot.inspect(PASSING, timeout_s=20)
            assert isinstance(failed, wire.Result) and isinstance(passed, wire.Result), (failed, passed)
            assert (failed.verdict, passed.verdict) == ("fail", "pass"), kind
            assert failed.model == f"{paths[kind].name.split('.')[0]}:1.0.0"
            if kind == "anomaly":
                assert failed.location is not None and failed.location.box is not None
                assert failed.fail_score >= 5.0 > passed.fail_score  # raw scores against the raw threshold
            elif kind.startswith("detections"):
                assert failed.boxes and {b.label for b in failed.boxes} == {"scratch"}
                assert passed.location is None
            else:
                assert failed.location is None and failed.boxes is None
                assert sum(failed.scores.values()) == pytest.approx(1, abs=1e-5)  # softmax of the logits
    finally:
        cluster.delete_slice(spec.name)
