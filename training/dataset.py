"""Generated data sets as arrays, decoded exactly as the edge node decodes frames.

Training and evaluation both go through ``edge_node.imaging.decode_rgb`` so the
model never sees pixels that a slice would not produce from the same bytes.
Sets are cached on disk because rendering costs ~30 ms a frame.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contracts.wire import MAX_FRAME_BYTES, MAX_FRAME_PIXELS, MAX_FRAME_SIDE
from edge_node.imaging import FrameLimits, decode_rgb
from models import camera, synth

log = logging.getLogger(__name__)

TRAIN_SEED = 1
"""Seed of the training set."""
VALIDATION_SEED = 2
"""Seed of the validation set (threshold calibration, model selection)."""
HELDOUT_SEED = 3
"""Seed of the held-out set the model card reports; never used in training."""

_LIMITS = FrameLimits(MAX_FRAME_BYTES, MAX_FRAME_PIXELS, MAX_FRAME_SIDE)


@dataclass(frozen=True)
class ArraySet:
    """Decoded frames ``(N, H, W, 3)`` uint8 with integer labels into ``synth.CLASSES``."""

    images: np.ndarray
    labels: np.ndarray


def _decode_one(args: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
    seed, index, width, height = args
    sample = synth.generate(seed, index)
    return decode_rgb(sample.data, _LIMITS, (width, height)), synth.CLASSES.index(sample.label)


def build(
    seed: int,
    n: int,
    size: tuple[int, int],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ArraySet:
    """Render and decode ``n`` frames of set ``seed`` at ``size`` (width, height)."""
    jobs = [(seed, i, size[0], size[1]) for i in range(n)]
    images = np.empty((n, size[1], size[0], 3), np.uint8)
    labels = np.empty(n, np.int64)
    with multiprocessing.get_context("spawn").Pool(workers or os.cpu_count() or 1) as pool:
        for i, (image, label) in enumerate(pool.imap(_decode_one, jobs, chunksize=32)):
            images[i], labels[i] = image, label
            if progress and (i + 1) % 500 == 0:
                progress(i + 1, n)
    return ArraySet(images, labels)


def _generator_digest() -> str:
    """Changes whenever the generator's source does, so stale caches are not reused."""
    sources = b"".join(Path(module.__file__ or "").read_bytes() for module in (synth, camera))
    return hashlib.sha256(sources).hexdigest()[:12]


def cached(seed: int, n: int, size: tuple[int, int], cache_dir: Path) -> ArraySet:
    """``build`` with an on-disk cache keyed by seed, size, count and generator version."""
    path = cache_dir / f"set-{seed}-{n}-{size[0]}x{size[1]}-{_generator_digest()}.npz"
    if path.exists():
        with np.load(path) as data:
            return ArraySet(data["images"], data["labels"])
    log.info("rendering %d frames of set %d (cached at %s)", n, seed, path)
    arrays = build(seed, n, size, progress=lambda done, total: log.info("  %d/%d frames", done, total))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=arrays.images, labels=arrays.labels)
    return arrays
