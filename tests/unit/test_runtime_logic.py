import numpy as np
import pytest

from contracts.manifest import load_manifest
from edge_node.errors import ProviderUnavailable
from edge_node.runtime import choose_providers, decide
from edge_node.settings import EdgeSettings
from models import BUNDLED_MANIFEST

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def test_best_available_provider_first() -> None:
    assert choose_providers([CPU, CUDA, TRT]) == [TRT, CUDA, CPU]
    assert choose_providers([CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers([CPU]) == [CPU]


def test_requested_providers_keep_cpu_as_fallback() -> None:
    assert choose_providers([CPU, CUDA, TRT], [CUDA]) == [CUDA, CPU]


def test_requesting_a_missing_provider_says_what_to_install() -> None:
    with pytest.raises(ProviderUnavailable, match="onnxruntime-gpu"):
        choose_providers([CPU], [CUDA])


def test_providers_and_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINESIDE_PROVIDERS", f'["{CPU}"]')
    monkeypatch.setenv("LINESIDE_INTRA_OP_THREADS", "3")
    settings = EdgeSettings()
    assert settings.providers == [CPU]
    assert settings.intra_op_threads == 3


def _probs(manifest, **scores: float) -> np.ndarray:
    return np.array([scores.get(label, 0.0) for label in manifest.labels], np.float32)


def test_fail_when_defect_probability_reaches_threshold() -> None:
    manifest = load_manifest(BUNDLED_MANIFEST)
    t = manifest.decision.threshold + 0.01
    verdict = decide(manifest, _probs(manifest, good=1 - t, scratch=t * 0.7, dent=t * 0.3))
    assert verdict.verdict == "fail"
    assert verdict.defect_class == "scratch"
    assert verdict.fail_score == pytest.approx(t, abs=1e-6)
    assert set(verdict.scores) == set(manifest.labels)


def test_pass_below_threshold() -> None:
    manifest = load_manifest(BUNDLED_MANIFEST)
    t = manifest.decision.threshold
    verdict = decide(manifest, _probs(manifest, good=1 - t * 0.9, crack=t * 0.9))
    assert verdict.verdict == "pass"
    assert verdict.defect_class is None
    assert verdict.score == pytest.approx(1 - t * 0.9, abs=1e-6)
