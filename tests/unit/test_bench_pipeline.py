"""The pipeline benchmark's pieces that need no broker or Ray: the heavy reference model it builds, the
machine's limit from its stages, decoding on all cores, and how ``--model`` is resolved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bench.pipeline import decode_fps, limit_fps, resolve_model
from contracts.manifest import load_manifest, model_file
from edge_node.runtime import InspectionModel
from edge_node.settings import EdgeSettings
from models import BUNDLED_MANIFEST, reference, synth


def test_the_reference_model_is_mobilenetv2_class_and_serves_as_a_classifier(tmp_path: Path) -> None:
    path = reference.write(tmp_path)
    manifest = load_manifest(path)  # checks the file's sha256 against the manifest
    assert (manifest.input.height, manifest.input.width, manifest.output.kind) == (224, 224, "probabilities")
    assert 280e6 <= int((tmp_path / "macs.txt").read_text()) <= 320e6  # MobileNetV2 1.0 at 224 px: about 300 M
    session = ort.InferenceSession(str(model_file(path, manifest)), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"image": np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert probs.shape == (2, len(synth.CLASSES)) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # The runtime takes it as it is: frames of the generator in, a verdict each out.
    model = InspectionModel(path, EdgeSettings(intra_op_threads=1, providers=None))
    verdicts = model.inspect([synth.generate(7, i).data for i in range(3)])
    assert [type(v).__name__ for v in verdicts] == ["Verdict"] * 3
    assert reference.write(tmp_path / "again").read_text() == path.read_text()  # seeded: the same model again


def test_the_limit_adds_each_stages_cost_per_frame_unless_the_model_is_on_a_gpu() -> None:
    assert limit_fps(300.0, 600.0, 600.0) == pytest.approx(150.0)  # 1/300 + 1/600 + 1/600 s a frame
    assert limit_fps(300.0, 600.0, 600.0, model_on_gpu=True) == pytest.approx(300.0)
    assert limit_fps(2000.0, 600.0, 600.0, model_on_gpu=True) == pytest.approx(300.0)  # then the cores bound it


def test_decoding_is_measured_on_every_core() -> None:
    frames = [synth.generate(3, i).data for i in range(4)]
    assert decode_fps(BUNDLED_MANIFEST, frames, seconds=0.3) > 0


def test_model_choice_is_the_bundled_the_reference_or_a_manifest(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_model(None) == BUNDLED_MANIFEST
    built = resolve_model("reference")
    assert built.is_relative_to(tmp_path / "lineside") and built.name == "reference-mobilenetv2.manifest.json"
    assert resolve_model(str(built)) == built
    with pytest.raises(FileNotFoundError, match=r"give a NAME\.manifest\.json"):
        resolve_model(str(tmp_path / "missing.json"))
