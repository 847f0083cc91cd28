import json

import pytest
from pydantic import ValidationError

from contracts.manifest import ModelManifest, load_manifest
from models import BUNDLED_MANIFEST


def _bundled_dict() -> dict:
    return json.loads(BUNDLED_MANIFEST.read_text())


def test_bundled_manifest_is_valid() -> None:
    manifest = load_manifest(BUNDLED_MANIFEST)
    assert manifest.labels[0] == "good"
    assert manifest.pass_classes == ("good",)
    assert manifest.opset >= 17


def test_unknown_field_is_named_in_the_error() -> None:
    data = _bundled_dict()
    data["input"]["hieght"] = 128
    with pytest.raises(ValidationError, match="hieght"):
        ModelManifest.model_validate(data)


def test_fail_class_must_be_a_label() -> None:
    data = _bundled_dict()
    data["decision"]["fail_classes"] = ["scratch", "rust"]
    with pytest.raises(ValidationError, match="rust"):
        ModelManifest.model_validate(data)


def test_some_label_must_pass() -> None:
    data = _bundled_dict()
    data["decision"]["fail_classes"] = data["labels"]
    with pytest.raises(ValidationError, match="at least one label must mean pass"):
        ModelManifest.model_validate(data)


@pytest.mark.parametrize(("field", "value"), [("sha256", "abc"), ("version", "v1"), ("opset", 11)])
def test_malformed_values_are_refused(field: str, value: object) -> None:
    data = _bundled_dict()
    data[field] = value
    with pytest.raises(ValidationError, match=field):
        ModelManifest.model_validate(data)


def test_non_positive_std_is_refused() -> None:
    data = _bundled_dict()
    data["preprocess"]["std"] = [0.25, 0.0, 0.25]
    with pytest.raises(ValidationError, match="std"):
        ModelManifest.model_validate(data)
