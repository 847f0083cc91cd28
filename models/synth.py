"""Seeded generator of part images for training and evaluating the inspection model.

No inspection data set can be downloaded where Lineside is built, so the model
learns from parts rendered here. Every image is a function of ``(seed, index)``:
the same pair always yields the same bytes, on any machine.

A frame is what an inspection robot's camera sends: one part on a dark conveyor,
slightly rotated and shifted, under an uneven light, with sensor noise, a little
blur and JPEG (sometimes PNG) compression. Parts come in five surface families
that factories inspect: brushed sheet metal, machined (turned) flanges, cast
housings, painted panels and printed labels. Each family has a fixed layout of
features (bolt holes, bores, printed marks) so that a missing one is detectable.

How the generator is made hard, on purpose:

* Defects are small and faint. A scratch is 3-4 px wide (under two pixels at
  the model's 128 px input), covers well under 1 % of the frame and changes
  brightness by 15-30 %; a pit is 5-10 px across; a stain blends in at 35-55 %
  opacity; cracks are 2-3 px wide and dark grey rather than black.
* Defect contrast is of the same order as the surface texture itself
  (brushing, turning marks, casting grain, orange peel), which varies per part.
* Good parts carry harmless features that look like defects to a naive
  detector: long tool marks along the machining direction, dust specks, broad
  grey tonal blotches, engraved serial marks, and specular highlights.
* Lighting gradients, hot spots, blur, noise and JPEG quality 60-95 change per
  frame, so the model cannot key on absolute brightness or exact pixels.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np

from models.camera import IMAGE_SIZE, encode, grid, photograph, smooth_noise

CLASSES: Final = ("good", "scratch", "dent", "crack", "stain", "missing_feature")
"""Ground-truth classes; ``good`` is the only one that passes."""

FAMILIES: Final = ("brushed", "machined", "cast", "painted", "printed")
"""Surface families a part can belong to."""

GOOD_SHARE: Final = 0.4
"""Share of good parts in a generated set; the rest is split evenly between defects."""

Array = np.ndarray


@dataclass(frozen=True)
class PartSample:
    """One generated frame and its ground truth."""

    index: int
    label: str
    family: str
    encoding: str
    data: bytes


def class_for_index(seed: int, index: int) -> str:
    """Ground-truth class of sample ``index``: deterministic, balanced by ``GOOD_SHARE``."""
    rng = np.random.default_rng([seed, index, 1])
    if rng.random() < GOOD_SHARE:
        return "good"
    return str(CLASSES[1 + int(rng.integers(len(CLASSES) - 1))])


def generate(seed: int, index: int, label: str | None = None, family: str | None = None) -> PartSample:
    """Render sample ``index`` of the set ``seed`` (optionally forcing its class and its surface family).

    A forced family replaces the drawn one after the draw, so every other random draw, and with it every
    frame of the set that is not forced, stays the same.
    """
    label = label or class_for_index(seed, index)
    rng = np.random.default_rng([seed, index, 2])
    drawn = str(FAMILIES[int(rng.integers(len(FAMILIES)))])
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown surface family {family!r}; choose one of {FAMILIES}")
    family = family or drawn
    rgb = render(rng, family, label)
    encoding, data = encode(rng, rgb)
    return PartSample(index=index, label=label, family=family, encoding=encoding, data=data)


def _generate_args(args: tuple[int, int, str | None, str | None]) -> PartSample:
    return generate(*args)


def generate_many(
    seed: int,
    indices: Iterable[int],
    *,
    workers: int | None = None,
    chunksize: int = 16,
    label: str | None = None,
    family: str | None = None,
) -> Iterator[PartSample]:
    """``generate(seed, i, label, family)`` for each index, in order, rendered by a pool of processes."""
    with multiprocessing.get_context("spawn").Pool(workers or os.cpu_count() or 1) as pool:
        yield from pool.imap(_generate_args, [(seed, i, label, family) for i in indices], chunksize=chunksize)


def render(rng: np.random.Generator, family: str, label: str) -> Array:
    """Render one frame as an ``(IMAGE_SIZE, IMAGE_SIZE, 3)`` uint8 RGB array."""
    n = IMAGE_SIZE
    mask = _part_mask(family)
    base, tint = _surface(rng, family)
    features = _features(rng, family)
    if label == "missing_feature":
        features.pop(int(rng.integers(len(features))))
    luma = base.copy()
    colour = np.ones((n, n, 3), np.float32) * tint
    for feature in features:
        _draw_feature(luma, colour, feature)
    _harmless_marks(rng, luma, family)
    if label in ("scratch", "dent", "crack"):
        _DEFECTS[label](rng, luma, mask, features)
    rgb = luma[..., None] * colour
    if label == "stain":
        _stain(rng, rgb, mask, features)
    return photograph(rng, rgb, mask)


# --- surfaces -------------------------------------------------------------


def _part_mask(family: str) -> Array:
    x, y = grid()
    if family == "machined":
        return (np.hypot(x, y) < 108).astype(np.float32)
    half_w, half_h, radius = {
        "brushed": (112, 92, 10),
        "cast": (106, 96, 26),
        "painted": (114, 84, 6),
        "printed": (110, 80, 4),
    }[family]
    dx = np.maximum(np.abs(x) - (half_w - radius), 0)
    dy = np.maximum(np.abs(y) - (half_h - radius), 0)
    return (np.hypot(dx, dy) < radius).astype(np.float32)


def _streaks(rng: np.random.Generator, length: int) -> Array:
    """Noise smeared along x: the look of brushed or ground metal."""
    n = IMAGE_SIZE
    raw = rng.standard_normal((n, n + length)).astype(np.float32)
    csum = np.cumsum(raw, axis=1)
    out = (csum[:, length:] - csum[:, :-length]) / np.sqrt(length)
    return out[:, :n]


def _surface(rng: np.random.Generator, family: str) -> tuple[Array, Array]:
    """Grey-level texture of the part and its colour tint."""
    x, y = grid()
    level = float(rng.uniform(0.55, 0.75))
    if family == "brushed":
        tex = 0.035 * _streaks(rng, int(rng.integers(30, 80))) + 0.02 * smooth_noise(rng, 40)
        tint = np.array([1.0, 1.0, 1.02]) * rng.uniform(0.97, 1.03, 3)
    elif family == "machined":
        radius = np.hypot(x, y)
        rings = rng.standard_normal(200).astype(np.float32)
        period = rng.uniform(2.5, 5.0)
        tex = 0.025 * np.interp(radius, np.arange(200), rings) + 0.02 * np.sin(2 * np.pi * radius / period)
        tex += 0.015 * smooth_noise(rng, 30)
        tint = np.array([1.0, 0.99, 0.97]) * rng.uniform(0.97, 1.03, 3)
    elif family == "cast":
        tex = 0.035 * smooth_noise(rng, 24) + 0.025 * smooth_noise(rng, 6)
        tex += 0.03 * rng.standard_normal(x.shape).astype(np.float32)
        level -= 0.08
        tint = np.array([1.0, 0.97, 0.93]) * rng.uniform(0.95, 1.05, 3)
    elif family == "painted":
        tex = 0.02 * smooth_noise(rng, 5) + 0.02 * smooth_noise(rng, 50)
        hue = rng.uniform(0.35, 1.0, 3)
        tint = hue / hue.max() * 1.15
        level -= 0.05
    else:  # printed label
        tex = 0.012 * smooth_noise(rng, 3) + 0.01 * smooth_noise(rng, 60)
        level = float(rng.uniform(0.78, 0.9))
        tint = np.array([1.0, 1.0, 0.97]) * rng.uniform(0.98, 1.02, 3)
    return (level + tex).astype(np.float32), tint.astype(np.float32)


# --- features (what a "missing feature" removes) ---------------------------


@dataclass(frozen=True)
class Feature:
    """A designed feature of the part: a hole/bore or a printed mark."""

    kind: str
    cx: float
    cy: float
    size: float


def _features(rng: np.random.Generator, family: str) -> list[Feature]:
    j = lambda: float(rng.normal(0, 1.0))  # noqa: E731 - position jitter of a real fixture
    if family == "brushed":
        return [Feature("hole", sx * 88 + j(), sy * 68 + j(), 9) for sx in (-1, 1) for sy in (-1, 1)]
    if family == "machined":
        count = 6
        phase = rng.uniform(0, 2 * np.pi)
        holes = [
            Feature("hole", 78 * np.cos(phase + k * 2 * np.pi / count), 78 * np.sin(phase + k * 2 * np.pi / count), 8)
            for k in range(count)
        ]
        return [Feature("hole", j(), j(), 26), *holes]
    if family == "cast":
        return [Feature("hole", sx * 62 + j(), j(), 15) for sx in (-1, 1)] + [Feature("hole", j(), 58 + j(), 8)]
    if family == "painted":
        return [Feature("hole", sx * 92 + j(), sy * 60 + j(), 7) for sx in (-1, 1) for sy in (-1, 1)]
    marks = [Feature("mark", -60 + j(), -40 + j(), 16), Feature("bar", 30 + j(), -40 + j(), 18)]
    return marks + [Feature("dot", sx * 90 + j(), 58 + j(), 5) for sx in (-1, 1)]


def _draw_feature(luma_full: Array, colour_full: Array, feature: Feature) -> None:
    half, reach = IMAGE_SIZE // 2, int(feature.size * 2 + 6)
    x0, y0 = max(int(feature.cx) + half - reach, 0), max(int(feature.cy) + half - reach, 0)
    window = np.s_[y0 : y0 + 2 * reach, x0 : x0 + 2 * reach]
    luma, colour = luma_full[window], colour_full[window]
    x, y = grid()
    dx, dy = x[window] - feature.cx, y[window] - feature.cy
    if feature.kind == "hole":
        r = np.hypot(dx, dy)
        inside = np.clip(feature.size - r + 0.5, 0, 1)
        rim = np.exp(-(((r - feature.size - 1.5) / 1.2) ** 2))
        luma[:] = luma * (1 - inside) + 0.08 * inside + 0.12 * rim
    else:
        if feature.kind == "mark":  # a filled square logo
            cover = (np.abs(dx) < feature.size) & (np.abs(dy) < feature.size)
        elif feature.kind == "bar":  # a bar code block
            stripes = (np.floor((dx + 100) / 3).astype(int) * 7919 % 5) < 2
            cover = (np.abs(dx) < feature.size * 2) & (np.abs(dy) < feature.size) & stripes
        else:  # a round fiducial dot
            cover = np.hypot(dx, dy) < feature.size
        luma[cover] = 0.12
        colour[cover] = 1.0


def _harmless_marks(rng: np.random.Generator, luma: Array, family: str) -> None:
    """Things good parts have too: tool marks, dust specks, tonal blotches, serials."""
    x, y = grid()
    n = IMAGE_SIZE
    for _ in range(int(rng.integers(0, 3))):  # long tool mark along the texture direction
        if family == "machined":
            luma += rng.choice([-1, 1]) * 0.03 * np.exp(-(((np.hypot(x, y) - rng.uniform(30, 100)) / 0.8) ** 2))
        else:
            luma += rng.choice([-1, 1]) * 0.03 * np.exp(-(((y - rng.uniform(-80, 80)) / 0.8) ** 2))
    for _ in range(int(rng.integers(0, 12))):  # dust specks, smaller than any pit
        px, py = rng.integers(8, n - 8, 2)
        luma[py, px] += rng.uniform(-0.08, 0.1)
    if rng.random() < 0.5:  # broad, grey tonal blotch
        luma += 0.03 * smooth_noise(rng, int(rng.integers(40, 90)))
    if family in ("brushed", "cast") and rng.random() < 0.6:  # engraved serial number
        ox, oy = rng.uniform(-40, 10), rng.uniform(-20, 20)
        for k in range(int(rng.integers(5, 9))):
            cover = (np.abs(x - ox - 7 * k) < 2) & (np.abs(y - oy) < 3)
            luma[cover] -= 0.06


# --- defects ----------------------------------------------------------------


def _free_spot(rng: np.random.Generator, mask: Array, features: list[Feature], margin: float) -> tuple[float, float]:
    """A point on the part, ``margin`` away from its edge and from every feature.

    Crowded parts may have no such point for a long defect; the margin then
    shrinks step by step so the defect still lands on bare surface.
    """
    half = IMAGE_SIZE / 2
    for attempt in range(600):
        reach = margin * 0.8 ** (attempt // 100)
        cx, cy = rng.uniform(-half + reach, half - reach, 2)
        ix, iy, r = int(cx + half), int(cy + half), int(reach)
        window = mask[max(iy - r, 0) : iy + r + 1, max(ix - r, 0) : ix + r + 1]
        clear = all(np.hypot(cx - f.cx, cy - f.cy) > f.size + reach + 3 for f in features)
        if clear and window.min() > 0:
            return float(cx), float(cy)
    raise RuntimeError(f"no free spot of margin {margin:.0f}px on this part")


def _polyline_distance(points: Array) -> Array:
    """Distance of every pixel to the polyline through ``points`` (k, 2)."""
    x, y = grid()
    best = np.full(x.shape, np.inf, np.float32)
    for (ax, ay), (bx, by) in itertools.pairwise(points):
        vx, vy = bx - ax, by - ay
        t = np.clip(((x - ax) * vx + (y - ay) * vy) / (vx * vx + vy * vy + 1e-6), 0, 1)
        best = np.minimum(best, np.hypot(x - ax - t * vx, y - ay - t * vy))
    return best


def _scratch(rng: np.random.Generator, luma: Array, mask: Array, features: list[Feature]) -> None:
    length = rng.uniform(25, 90)
    cx, cy = _free_spot(rng, mask, features, length / 2 + 4)
    angle, bend = rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4)
    t = np.linspace(-0.5, 0.5, 12)[:, None]
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    points = np.array([cx, cy]) + t * length * direction + (t**2 - 0.25) * bend * length * normal
    width = rng.uniform(1.3, 2.2)
    strength = rng.uniform(0.15, 0.3) * rng.choice([-1, 1])
    luma += strength * np.exp(-((_polyline_distance(points) / width) ** 2)) * mask


def _dent(rng: np.random.Generator, luma: Array, mask: Array, features: list[Feature]) -> None:
    x, y = grid()
    light = rng.uniform(0, 2 * np.pi)
    cx0, cy0 = _free_spot(rng, mask, features, 16)
    for k in range(int(rng.integers(1, 4))):
        cx, cy = (cx0, cy0) if k == 0 else (cx0 + rng.uniform(-10, 10), cy0 + rng.uniform(-10, 10))
        radius = rng.uniform(5.0, 10.0) / (1 + 0.3 * k)
        dx, dy = (x - cx) / radius, (y - cy) / radius
        bowl = np.exp(-(dx**2 + dy**2))
        shade = -(dx * np.cos(light) + dy * np.sin(light)) * bowl  # lit on one side, shadowed on the other
        depth = rng.uniform(0.22, 0.38)
        luma += depth * (0.8 * shade - 0.5 * bowl) * mask


def _crack(rng: np.random.Generator, luma: Array, mask: Array, features: list[Feature]) -> None:
    length = rng.uniform(30, 100)
    cx, cy = _free_spot(rng, mask, features, length / 2 + 4)
    steps = int(length / 4)
    heading = rng.uniform(0, 2 * np.pi)
    turns = np.cumsum(rng.normal(0, 0.45, steps)) * 0.5 + heading
    walk = np.cumsum(np.stack([np.cos(turns), np.sin(turns)], 1) * 4, axis=0)
    points = walk - walk.mean(0) + np.array([cx, cy])
    distance = _polyline_distance(points)
    if rng.random() < 0.5:  # a side branch
        start = points[int(rng.integers(1, steps - 1))]
        branch_turns = turns[: steps // 3] + rng.choice([-0.9, 0.9])
        branch = start + np.cumsum(np.stack([np.cos(branch_turns), np.sin(branch_turns)], 1) * 3, axis=0)
        distance = np.minimum(distance, _polyline_distance(np.vstack([start, branch])))
    width = rng.uniform(1.0, 1.6)
    luma -= rng.uniform(0.2, 0.4) * np.exp(-((distance / width) ** 2)) * mask


def _stain(rng: np.random.Generator, rgb: Array, mask: Array, features: list[Feature]) -> None:
    x, y = grid()
    radius = rng.uniform(14, 35)
    cx, cy = _free_spot(rng, mask, features, radius * 0.6)
    envelope = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / radius**2))
    blob = envelope * (1 + 0.35 * smooth_noise(rng, 8))
    cover = np.clip((blob - 0.5) * 4, 0, 1) * mask
    kind = int(rng.integers(3))
    if kind == 0:  # rust / coolant residue
        colour = np.array([0.55, 0.33, 0.18])
    elif kind == 1:  # oil: dark with a slight sheen
        colour = np.array([0.18, 0.2, 0.16]) + rng.uniform(0, 0.15, 3)
    else:  # dried water spot: lighter with a ring
        colour = np.array([0.9, 0.9, 0.85])
        cover = cover * (0.5 + np.clip((blob - 0.5) * 4, 0, 1) * (1 - np.clip((blob - 0.7) * 6, 0, 1)))
    alpha = rng.uniform(0.35, 0.55) * cover[..., None]
    rgb[:] = rgb * (1 - alpha) + alpha * colour * rgb.mean(axis=(0, 1)) / 0.6


_DEFECTS = {"scratch": _scratch, "dent": _dent, "crack": _crack}
