"""Shared fixtures. Tests under tests/unit get the ``unit`` marker, tests/integration ``integration``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models import synth

HEAVY = frozenset({
    "test_byo_models", "test_chaos_cp", "test_chaos_head", "test_cli", "test_cp_agent_ray", "test_cp_capacity",
    "test_cp_fits_ray", "test_cp_scheduling",
    "test_dashboard_browser", "test_ingress", "test_month_close", "test_multinode", "test_readme", "test_robot_extra",
    "test_rollout_ray", "test_security_shutdown", "test_slice",
})  # fmt: skip
"""Modules that start Ray, a demo or a browser: ``make test`` runs them one after another on one xdist worker
(two Rays or demos side by side on two cores would starve each other); every other module, whole, goes to
whichever worker is free."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, kind))


def scope_of(nodeid: str) -> str:
    """The unit of work a test goes to a worker with: every HEAVY module together, else its module."""
    path = nodeid.split("::", 1)[0]
    return "heavy" if Path(path).stem in HEAVY else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` as ``make test`` runs it: whole modules per worker, HEAVY ones on one worker.

    A scheduler of our own, not ``xdist_group`` marks: with pytest-xdist 3.8 the marks reached the node ids
    and yet every module was spread over both workers, so a module-scoped demo or Ray started on each."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class HeavyTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return HeavyTogether(config, log)


def encode(rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    """Encode an RGB array the way a robot's camera would."""
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture(scope="session")
def part_frames() -> list[synth.PartSample]:
    """One generated frame of every class, from a seed no model ever trained on."""
    return [synth.generate(4242, i, label) for i, label in enumerate(synth.CLASSES)]
