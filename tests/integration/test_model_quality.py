"""The model card's numbers hold on a fresh evaluation with ONNX Runtime."""

from models import BUNDLED_MANIFEST
from training.evaluate import card_metrics, evaluate

CARD = BUNDLED_MANIFEST.parent / "MODEL_CARD.md"
SAMPLE = 480
# On 480 frames (~290 defective, ~190 good) one standard error is about 0.01 for
# either rate at the card's values; three standard errors plus rounding:
TOLERANCE = 0.035


def test_card_meets_the_targets() -> None:
    card = card_metrics(CARD)
    assert card["n"] >= 2000
    assert card["fail_recall"] >= 0.97
    assert card["false_reject_rate"] <= 0.03


def test_fresh_evaluation_agrees_with_the_card() -> None:
    card = card_metrics(CARD)
    fresh = evaluate(BUNDLED_MANIFEST, n=SAMPLE, seed=card["seed"])
    assert fresh["n"] == SAMPLE
    assert abs(fresh["fail_recall"] - card["fail_recall"]) <= TOLERANCE
    assert abs(fresh["false_reject_rate"] - card["false_reject_rate"]) <= TOLERANCE
    assert abs(fresh["accuracy"] - card["accuracy"]) <= 2 * TOLERANCE
