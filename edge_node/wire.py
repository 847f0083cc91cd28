"""Lineside's wire contract: what crosses MQTT between robots and slices.

Importable without Ray, ONNX Runtime or paho so that robots, the control
plane (which derives broker ACLs from it) and the edge node share one
definition. Bump ``WIRE_VERSION`` on any incompatible change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

WIRE_VERSION: Final = 1
"""Version of the topics, payload limits and JSON schemas defined here."""

MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
"""Largest encoded frame (JPEG or PNG bytes) a slice accepts by default."""

MAX_FRAME_PIXELS: Final = 16_000_000
"""Largest decoded frame, width x height, a slice accepts by default (checked before decoding)."""

MAX_FRAME_SIDE: Final = 8192
"""Longest side, in pixels, a slice accepts by default (checked before decoding)."""


class ErrorCode(StrEnum):
    """Stable codes on the errors topic; robots may switch on them."""

    BAD_IMAGE = "bad_image"
    """The payload claims JPEG/PNG but cannot be decoded: resend a valid image."""
    TOO_LARGE = "too_large"
    """The payload exceeds the byte or pixel limits: send a smaller or cropped frame."""
    UNSUPPORTED_FORMAT = "unsupported_format"
    """The payload is neither JPEG nor PNG: encode frames as JPEG or PNG."""
