import io

import pytest
from PIL import Image

from models import synth


def test_same_seed_and_index_give_identical_bytes() -> None:
    assert synth.generate(7, 3).data == synth.generate(7, 3).data


def test_different_seeds_give_different_parts() -> None:
    assert synth.generate(7, 3).data != synth.generate(8, 3).data


@pytest.mark.parametrize("label", synth.CLASSES)
def test_every_class_renders_a_decodable_frame(label: str) -> None:
    sample = synth.generate(11, 0, label)
    assert sample.label == label
    image = Image.open(io.BytesIO(sample.data))
    assert image.size == (synth.IMAGE_SIZE, synth.IMAGE_SIZE)
    assert image.format in ("JPEG", "PNG")


def test_class_mix_follows_good_share() -> None:
    labels = [synth.class_for_index(5, i) for i in range(3000)]
    good = labels.count("good") / len(labels)
    assert abs(good - synth.GOOD_SHARE) < 0.03
    assert set(labels) == set(synth.CLASSES)


def test_all_families_appear() -> None:
    assert {synth.generate(3, i).family for i in range(40)} == set(synth.FAMILIES)


def test_a_defect_changes_the_part() -> None:
    """Same seed and index, different class: the defect must leave visible pixels."""
    good = synth.render(__import__("numpy").random.default_rng(1), "brushed", "good")
    scratched = synth.render(__import__("numpy").random.default_rng(1), "brushed", "scratch")
    assert (abs(good.astype(int) - scratched.astype(int)) > 8).sum() > 20
