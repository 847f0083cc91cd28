"""ONNX Runtime on the bundled model, through the same code a slice replica uses."""

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from contracts.manifest import load_manifest, model_file, sha256_of
from edge_node.errors import ModelIntegrityError, TooLarge, UnsupportedFormat
from edge_node.runtime import InspectionModel, Verdict
from edge_node.settings import EdgeSettings
from models import BUNDLED_MANIFEST, synth


@pytest.fixture(scope="module")
def model() -> InspectionModel:
    return InspectionModel(BUNDLED_MANIFEST, EdgeSettings(intra_op_threads=1))


def test_reports_the_provider_it_runs_on(model: InspectionModel) -> None:
    assert model.providers[-1] == "CPUExecutionProvider"


def test_batched_and_single_inference_agree(model: InspectionModel, part_frames: list[synth.PartSample]) -> None:
    frames = [s.data for s in part_frames]
    batched = model.inspect(frames)
    single = [model.inspect([f])[0] for f in frames]
    for b, s in zip(batched, single, strict=True):
        assert isinstance(b, Verdict)
        assert isinstance(s, Verdict)
        assert b.verdict == s.verdict
        assert b.fail_score == pytest.approx(s.fail_score, abs=1e-4)


def test_bad_frames_get_errors_and_good_frames_still_get_verdicts(
    model: InspectionModel, part_frames: list[synth.PartSample]
) -> None:
    small = EdgeSettings(max_frame_bytes=1000)
    strict = InspectionModel(BUNDLED_MANIFEST, small)
    outcomes = model.inspect([part_frames[0].data, b"not an image", part_frames[1].data])
    assert isinstance(outcomes[0], Verdict)
    assert isinstance(outcomes[1], UnsupportedFormat)
    assert isinstance(outcomes[2], Verdict)
    assert isinstance(strict.inspect([part_frames[0].data])[0], TooLarge)


def test_clear_parts_are_judged_right(model: InspectionModel) -> None:
    """Over a few dozen unseen parts the verdict matches ground truth nearly always."""
    samples = [synth.generate(777, i) for i in range(48)]
    outcomes = model.inspect([s.data for s in samples])
    right = sum(
        isinstance(o, Verdict) and (o.verdict == "pass") == (s.label == "good")
        for s, o in zip(samples, outcomes, strict=True)
    )
    assert right >= 44


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    manifest = load_manifest(BUNDLED_MANIFEST)
    shutil.copy(BUNDLED_MANIFEST, tmp_path / BUNDLED_MANIFEST.name)
    data = bytearray(model_file(BUNDLED_MANIFEST, manifest).read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / manifest.file).write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="re-download"):
        InspectionModel(tmp_path / BUNDLED_MANIFEST.name)


def test_exported_file_matches_its_manifest() -> None:
    manifest = load_manifest(BUNDLED_MANIFEST)
    path = model_file(BUNDLED_MANIFEST, manifest)
    assert sha256_of(path) == manifest.sha256
    assert path.stat().st_size < 5 << 20
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = graph.graph.input
    (out,) = graph.graph.output
    assert inp.name == manifest.input.name
    assert out.name == manifest.output.name
    batch_dim = inp.type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param, "batch axis must be dynamic"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, manifest.input.height, manifest.input.width]


def test_probabilities_sum_to_one(model: InspectionModel) -> None:
    batch = np.random.default_rng(0).standard_normal((5, 3, model.manifest.input.height, model.manifest.input.width))
    probs = model.predict(batch.astype(np.float32))
    assert probs.shape == (5, len(model.manifest.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_gpu_provider_that_cannot_start_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU seam on a CPU machine: CUDA listed as available but unusable still yields a working model."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model = InspectionModel(BUNDLED_MANIFEST, EdgeSettings(intra_op_threads=1))
    assert model.providers == ["CPUExecutionProvider"]
    outcome = model.inspect([synth.generate(4242, 6, "good").data])[0]
    assert isinstance(outcome, Verdict)
