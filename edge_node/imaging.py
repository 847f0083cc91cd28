"""Frame preprocessing: encoded JPEG/PNG bytes to the model's input tensor.

Limits are checked before any pixel is decoded: the byte size first, then
the dimensions from the image header, so a 20000x20000 PNG is refused
without allocating it.

The frame is fitted to the input size as the manifest says (stretch, letterbox
or centre-crop); a ``Placement`` remembers how, so that boxes and anomaly
locations the model reports in input pixels go back to the robot in 0..1
coordinates of the frame it sent.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from contracts.manifest import Fit, ModelManifest
from edge_node.errors import BadImage, TooLarge, UnsupportedFormat
from edge_node.settings import EdgeSettings

_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


@dataclass(frozen=True)
class FrameLimits:
    """What a slice accepts; defaults come from the wire contract via settings."""

    max_bytes: int
    max_pixels: int
    max_side: int

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> FrameLimits:
        return cls(settings.max_frame_bytes, settings.max_frame_pixels, settings.max_frame_side)


def sniff_format(data: bytes) -> str:
    """``"JPEG"`` or ``"PNG"`` from the magic bytes; anything else is unsupported."""
    for signature, fmt in _SIGNATURES.items():
        if data.startswith(signature):
            return fmt
    raise UnsupportedFormat(f"payload starts with {data[:8]!r}; send the frame as JPEG or PNG bytes")


@dataclass(frozen=True)
class Placement:
    """Where the resized frame lies in the input: input pixel x is frame fraction (x - left) / width."""

    left: float
    top: float
    width: float
    height: float

    def point(self, x: float, y: float) -> tuple[float, float]:
        """Input pixel coordinates to 0..1 frame coordinates (clipped to the frame)."""
        fx = (float(x) - self.left) / self.width
        fy = (float(y) - self.top) / self.height
        return round(min(max(fx, 0.0), 1.0), 4), round(min(max(fy, 0.0), 1.0), 4)

    def box(self, x1: float, y1: float, x2: float, y2: float) -> list[float]:
        """An input-pixel box to ``[x1, y1, x2, y2]`` in 0..1 frame coordinates (clipped to the frame)."""
        return [*self.point(x1, y1), *self.point(x2, y2)]


def fitted_size(fit: Fit, frame: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) to resize a ``frame``-sized image to before it is padded or cropped to ``size``."""
    if fit == "stretch":
        return size
    ratio = (min if fit == "letterbox" else max)(size[0] / frame[0], size[1] / frame[1])
    width, height = round(frame[0] * ratio), round(frame[1] * ratio)
    if fit == "letterbox":
        return min(max(width, 1), size[0]), min(max(height, 1), size[1])
    return max(width, size[0]), max(height, size[1])


def fit_into(rgb: np.ndarray, size: tuple[int, int], pad_value: int) -> tuple[np.ndarray, Placement]:
    """Pad (letterbox) or centre-crop a resized image to exactly ``size``; a ``size`` image is kept."""
    height, width = rgb.shape[:2]
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    placement = Placement(left, top, width, height)
    if (width, height) == size:
        return rgb, placement
    if width <= size[0] and height <= size[1]:
        canvas = np.full((size[1], size[0], 3), pad_value, np.uint8)
        canvas[top : top + height, left : left + width] = rgb
        return canvas, placement
    return rgb[-top : -top + size[1], -left : -left + size[0]], placement


def decode_rgb(data: bytes, limits: FrameLimits, size: tuple[int, int], fit: Fit = "stretch") -> np.ndarray:
    """Decode a frame to an RGB uint8 array, enforcing ``limits``.

    The array is ``size`` (width, height) for ``fit`` "stretch"; otherwise it keeps the frame's aspect
    ratio at ``fitted_size``, for ``fit_into`` to pad or crop.
    """
    if len(data) > limits.max_bytes:
        raise TooLarge(f"frame is {len(data)} bytes; the limit is {limits.max_bytes}")
    if sniff_format(data) == "JPEG":
        return _decode_jpeg(data, limits, size, fit)
    return _decode_with_pillow(data, "PNG", limits, size, fit)


def _check_dimensions(fmt: str, width: int, height: int, limits: FrameLimits) -> None:
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise TooLarge(
            f"{fmt} frame is {width}x{height} pixels; the limit is {limits.max_pixels} pixels "
            f"and {limits.max_side} per side: crop or downscale on the robot"
        )


def _decode_jpeg(data: bytes, limits: FrameLimits, size: tuple[int, int], fit: Fit) -> np.ndarray:
    """libjpeg-turbo through simplejpeg, scaling in the DCT domain (about twice Pillow's speed)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e:
        raise BadImage(f"cannot read JPEG header: {e}") from e
    _check_dimensions("JPEG", width, height, limits)
    if colorspace not in ("YCbCr", "Gray"):  # CMYK/YCCK: let Pillow convert the colours
        return _decode_with_pillow(data, "JPEG", limits, size, fit)
    size = fitted_size(fit, (width, height), size)
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size[1], min_width=size[0], strict=True)
    except ValueError as e:
        raise BadImage(f"JPEG data is corrupt or truncated: {e}") from e
    if rgb.shape[1::-1] != size:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    return rgb


def _decode_with_pillow(data: bytes, fmt: str, limits: FrameLimits, size: tuple[int, int], fit: Fit) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as e:
        raise TooLarge(f"{fmt} header declares a decompression bomb: {e}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"cannot read {fmt} header: {e}") from e
    _check_dimensions(fmt, *image.size, limits)
    size = fitted_size(fit, image.size, size)
    try:
        if fmt == "JPEG":
            image.draft("RGB", size)  # DCT-domain downscale: decode only what the model needs
        rgb = image.convert("RGB")
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(rgb)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"{fmt} data is corrupt or truncated: {e}") from e


class Preprocessor:
    """Turns encoded frames into the input tensor a manifest describes (one frame, no batch axis)."""

    def __init__(self, manifest: ModelManifest, limits: FrameLimits) -> None:
        spec, pre = manifest.input, manifest.preprocess
        self.size = (spec.width, spec.height)
        self.limits = limits
        self.fit: Fit = pre.fit
        self.pad_value = pre.pad_value
        self.bgr = spec.color == "BGR"
        self.channels_first = spec.layout == "NCHW"
        self.raw = spec.dtype == "uint8"  # pixels as they are: the manifest refuses scaling for uint8
        std = np.asarray(pre.std, np.float32)
        # (x * scale - mean) / std, folded into one multiply-add per channel
        self._gain = (pre.scale / std).astype(np.float32)
        self._offset = -np.asarray(pre.mean, np.float32) / std
        if self.channels_first:
            self._gain, self._offset = self._gain.reshape(3, 1, 1), self._offset.reshape(3, 1, 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One frame's tensor shape, without the batch axis."""
        width, height = self.size
        return (3, height, width) if self.channels_first else (height, width, 3)

    @property
    def dtype(self) -> type[np.generic]:
        """The input tensor's element type."""
        return np.uint8 if self.raw else np.float32

    def to_tensor(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB at the input size -> the input tensor of one frame, normalised."""
        pixels = rgb[..., ::-1] if self.bgr else rgb
        if self.channels_first:
            pixels = pixels.transpose(2, 0, 1)
        if self.raw:
            return np.ascontiguousarray(pixels)
        return np.ascontiguousarray(pixels, dtype=np.float32) * self._gain + self._offset

    def decode(self, data: bytes) -> tuple[np.ndarray, Placement]:
        """Encoded bytes -> (H, W, 3) uint8 RGB at the input size and where the frame lies in it; raises a
        ``FrameError``. What an ingress that decodes sends its model replica (``to_tensor`` finishes it there)."""
        return fit_into(decode_rgb(data, self.limits, self.size, self.fit), self.size, self.pad_value)

    def prepare(self, data: bytes) -> tuple[np.ndarray, Placement]:
        """Encoded bytes -> the input tensor and where the frame lies in it; raises a ``FrameError``."""
        rgb, placement = self.decode(data)
        return self.to_tensor(rgb), placement

    def __call__(self, data: bytes) -> np.ndarray:
        """Encoded bytes -> the input tensor; raises a ``FrameError`` with a wire code."""
        return self.prepare(data)[0]
