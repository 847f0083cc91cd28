"""Chaos scenario 10 (issue 18), sized for CI: the frame decoder under mutated JPEG and PNG frames gives only
typed frame errors (what the robot is answered with), never a crash, a hang or growing memory.
``lineside bench fuzz-decoder`` runs a million cases (BENCHMARKS.md)."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_decoder import SIZE, measure, mutate, seeds
from edge_node.errors import FrameError
from edge_node.imaging import FrameLimits, decode_rgb
from edge_node.settings import EdgeSettings

POOL = seeds()
LIMITS = FrameLimits.from_settings(EdgeSettings())


def test_twenty_thousand_mutated_frames_in_a_child_process_give_only_typed_errors() -> None:
    report = measure(20_000, seed=7, batch=20_000)
    assert report["crashes"] == [], report["crashes"]
    assert report["unexpected"] == [], report["unexpected"]
    assert report["cases"] == 20_000
    assert set(report["outcomes"]) <= {"decoded", "bad_image", "too_large", "unsupported_format"}
    assert report["outcomes"]["bad_image"] > 0 and report["outcomes"]["decoded"] > 0  # the mutations bite, not all
    assert report["slowest_ms"] < 1000  # no case near a hang
    assert report["rss_growth_mb"] < 64, report  # decoding does not keep what it read


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(range(len(POOL))), noise=st.binary(max_size=64), at=st.floats(0, 1),
       chain=st.integers(0, 2**32 - 1))  # fmt: skip
def test_hypothesis_mutations_decode_or_raise_a_frame_error(seed: int, noise: bytes, at: float, chain: int) -> None:
    frame = POOL[seed]
    cut = int(len(frame) * at)
    mutated = mutate(frame[:cut] + noise + frame[cut + len(noise) :], random.Random(chain), POOL)
    try:
        rgb = decode_rgb(mutated, LIMITS, SIZE)
    except FrameError:
        return
    assert rgb.shape == (*SIZE, 3)


def test_a_mutation_chain_that_empties_the_frame_keeps_mutating() -> None:
    """A truncation to nothing followed by a bit flip once ended the bench's batch with ValueError (an empty
    range for randrange): seven of ten batches of the million-case run died in the harness, not the decoder."""
    for chain in range(2_000):
        mutated = mutate(b"", random.Random(chain), POOL)
        assert isinstance(mutated, bytes)
