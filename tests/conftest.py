"""Shared fixtures. Tests under tests/unit get the ``unit`` marker, tests/integration ``integration``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import synth

HEAVY = frozenset({
    "test_cli", "test_cp_agent_ray", "test_cp_capacity", "test_cp_scheduling", "test_dashboard_browser",
    "test_ingress", "test_month_close", "test_multinode", "test_readme", "test_robot_extra",
    "test_security_shutdown", "test_slice",
})  # fmt: skip
"""Modules that start Ray, a demo or a browser: ``make test`` runs them one after another on one xdist worker
(two Rays or demos side by side on two cores would starve each other); every other module, whole, goes to
whichever worker is free."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        kind = path.parent.name
        if kind in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, kind))
        heavy = path.stem in HEAVY or "ray_cluster" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("heavy" if heavy else path.stem))


def encode(rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    """Encode an RGB array the way a robot's camera would."""
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="session")
def part_frames() -> list[synth.PartSample]:
    """One generated frame of every class, from a seed no model ever trained on."""
    return [synth.generate(4242, i, label) for i, label in enumerate(synth.CLASSES)]
