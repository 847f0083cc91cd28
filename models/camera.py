"""The simulated camera: pixel grid, smooth noise, and photographing a rendered part on the conveyor.

Split from ``models.synth`` (which renders the part and its defects) so each file stays readable; the
random draws happen in the same order as before, so seeds render the same frames.
"""

from __future__ import annotations

import functools
import io
from typing import Final

import numpy as np
from PIL import Image, ImageFilter

IMAGE_SIZE: Final = 256
"""Side of every generated frame, in pixels."""

Array = np.ndarray


@functools.cache
def grid() -> tuple[Array, Array]:
    """Pixel-centre coordinates relative to the frame centre (read-only, shared)."""
    half = IMAGE_SIZE / 2
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    x, y = x - half + 0.5, y - half + 0.5
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def smooth_noise(rng: np.random.Generator, scale: int, shape: tuple[int, int] | None = None) -> Array:
    """Zero-mean, unit-ish noise with features about ``scale`` pixels across."""
    h, w = shape or (IMAGE_SIZE, IMAGE_SIZE)
    coarse = rng.standard_normal((h // scale + 2, w // scale + 2)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((w + 2 * scale, h + 2 * scale), Image.Resampling.BICUBIC)
    out = np.asarray(img)[scale : scale + h, scale : scale + w]
    return out / (out.std() + 1e-6)


def photograph(rng: np.random.Generator, rgb: Array, mask: Array) -> Array:
    """Place the part on the conveyor, light it, and add the camera's imperfections."""
    part = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    alpha = Image.fromarray((mask * 255).astype(np.uint8))
    angle = rng.uniform(-10, 10)
    shift = (int(rng.integers(-8, 9)), int(rng.integers(-8, 9)))
    part = part.rotate(angle, Image.Resampling.BILINEAR, translate=shift)
    alpha = alpha.rotate(angle, Image.Resampling.BILINEAR, translate=shift)
    belt = 0.12 + 0.03 * smooth_noise(rng, 4) + 0.01 * smooth_noise(rng, 40)
    background = Image.fromarray((np.clip(np.repeat(belt[..., None], 3, 2), 0, 1) * 255).astype(np.uint8))
    frame = Image.composite(part, background, alpha)
    if rng.random() < 0.7:
        frame = frame.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.8)))
    img = np.asarray(frame).astype(np.float32) / 255
    x, y = grid()
    gx, gy = rng.uniform(-0.0015, 0.0015, 2)
    hx, hy = rng.uniform(-80, 80, 2)
    light = rng.uniform(0.85, 1.15) * (1 + gx * x + gy * y)
    light += rng.uniform(0, 0.15) * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (2 * 60**2))
    img = img * light[..., None] + rng.normal(0, rng.uniform(0.005, 0.02), img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def encode(rng: np.random.Generator, rgb: Array) -> tuple[str, bytes]:
    out = io.BytesIO()
    if rng.random() < 0.15:
        Image.fromarray(rgb).save(out, format="PNG", compress_level=1)
        return "png", out.getvalue()
    Image.fromarray(rgb).save(out, format="JPEG", quality=int(rng.integers(60, 96)))
    return "jpeg", out.getvalue()
