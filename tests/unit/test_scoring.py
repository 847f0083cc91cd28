import pytest

from training.evaluate import score

FAIL = ("scratch", "dent", "crack", "stain", "missing_feature")


def test_fail_recall_and_false_reject_rate() -> None:
    labels = ["good", "good", "good", "good", "scratch", "dent", "crack", "stain"]
    predicted = ["good", "good", "good", "stain", "scratch", "scratch", "good", "stain"]
    verdicts = ["pass", "pass", "pass", "fail", "fail", "fail", "pass", "fail"]
    metrics = score(labels, predicted, verdicts, FAIL)
    assert metrics["n"] == 8
    assert metrics["fail_recall"] == pytest.approx(3 / 4)
    assert metrics["false_reject_rate"] == pytest.approx(1 / 4)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["per_class"]["scratch"] == {"support": 1, "precision": 0.5, "recall": 1.0}
    assert metrics["per_class"]["stain"]["precision"] == 0.5
    assert metrics["per_class"]["missing_feature"] == {"support": 0, "precision": 0.0, "recall": 0.0}
