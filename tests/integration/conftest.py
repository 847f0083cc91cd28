"""Real services for integration tests: a Mosquitto per test, one ONNX model and one Ray per session."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_node.broker import MosquittoBroker
from edge_node.runtime import InspectionModel
from edge_node.settings import EdgeSettings
from models import BUNDLED_MANIFEST


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto process of its own, on a free port, with Lineside's generated config."""
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture(scope="session")
def model() -> InspectionModel:
    return InspectionModel(BUNDLED_MANIFEST, EdgeSettings(intra_op_threads=1))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[int]:
    """One local Ray (with Serve, no HTTP proxy) for the whole test session; yields its metrics port."""
    from edge_node import cluster
    from edge_node.broker import free_port

    metrics_port = free_port()
    cluster.start(num_cpus=2, metrics_port=metrics_port)
    yield metrics_port
    cluster.stop()


from tests.integration.cp_fixtures import control_plane, cp_overrides, database_url, postgres_url  # noqa: E402, F401


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """Ray's sockets live under its temp dir, whose path must stay short (a Unix socket path has 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ls-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
