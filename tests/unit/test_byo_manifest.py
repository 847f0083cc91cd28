"""Manifests of the model kinds factories bring: classifiers, anomaly detectors, object detectors."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from contracts.manifest import ModelManifest, load_manifest
from models import BUNDLED_MANIFEST


def _bundled() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BUNDLED_MANIFEST.read_text())
    return data


def anomaly_manifest(**decision: Any) -> dict[str, Any]:
    data = _bundled()
    data["input"] = {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB", "height": 256, "width": 256}
    data["preprocess"] = {"resize": "bilinear", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}
    data["output"] = {"name": "score", "kind": "anomaly", "map": "anomaly_map"}
    data["labels"] = ["good", "anomaly"]
    data["decision"] = {"fail_classes": ["anomaly"], "threshold": 17.5, **decision}
    return data


def detector_manifest(kind: str = "detections_raw") -> dict[str, Any]:
    data = _bundled()
    data["output"] = {"name": "output0", "kind": kind}
    data["labels"] = ["scratch", "dent"]
    data["decision"] = {"fail_classes": ["scratch", "dent"], "threshold": 0.4}
    return data


def test_bundled_manifest_reads_as_before() -> None:
    manifest = load_manifest(BUNDLED_MANIFEST)
    assert manifest.output.kind == "probabilities"
    assert manifest.preprocess.fit == "stretch"
    assert manifest.output.map is None


def test_anomaly_threshold_is_a_raw_score() -> None:
    manifest = ModelManifest.model_validate(anomaly_manifest())
    assert manifest.decision.threshold == 17.5
    assert manifest.output.map == "anomaly_map"


def test_classifier_threshold_stays_below_one() -> None:
    data = _bundled()
    data["decision"]["threshold"] = 2.0
    with pytest.raises(ValidationError, match="only kind 'anomaly' takes a raw score"):
        ModelManifest.model_validate(data)


def test_anomaly_labels_are_good_then_anomaly() -> None:
    data = anomaly_manifest(fail_classes=["good"])
    with pytest.raises(ValidationError, match="two labels, the good one then the anomalous one"):
        ModelManifest.model_validate(data)


def test_a_map_belongs_to_anomaly_models_only() -> None:
    data = _bundled()
    data["output"]["map"] = "heat"
    with pytest.raises(ValidationError, match="only for kind 'anomaly'"):
        ModelManifest.model_validate(data)


@pytest.mark.parametrize("kind", ["detections", "detections_raw"])
def test_a_detector_may_have_only_defect_classes(kind: str) -> None:
    manifest = ModelManifest.model_validate(detector_manifest(kind))
    assert manifest.pass_classes == ()


def test_a_classifier_still_needs_a_pass_label() -> None:
    data = detector_manifest()
    data["output"]["kind"] = "logits"
    with pytest.raises(ValidationError, match="at least one label must mean pass"):
        ModelManifest.model_validate(data)


def test_uint8_input_refuses_scaling() -> None:
    data = _bundled()
    data["input"]["dtype"] = "uint8"
    with pytest.raises(ValidationError, match=r"uint8 takes raw 0\.\.255 pixels"):
        ModelManifest.model_validate(data)


def test_typo_in_a_fit_is_named() -> None:
    data = _bundled()
    data["preprocess"]["fit"] = "letterboxed"
    with pytest.raises(ValidationError, match="fit"):
        ModelManifest.model_validate(data)
