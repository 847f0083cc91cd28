"""Shared fixtures. Tests under tests/unit get the ``unit`` marker, tests/integration ``integration``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import synth


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, kind))


def encode(rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    """Encode an RGB array the way a robot's camera would."""
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="session")
def part_frames() -> list[synth.PartSample]:
    """One generated frame of every class, from a seed no model ever trained on."""
    return [synth.generate(4242, i, label) for i, label in enumerate(synth.CLASSES)]
