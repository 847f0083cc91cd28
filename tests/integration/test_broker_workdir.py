"""One data folder, one broker.

Regression (CI, 1 December): a test's own broker and its control plane's broker were both started in
``tmp_path / "broker"``. Both wrote ``mosquitto.db`` there; at an autosave one found the file it was renaming
gone ("Error: No such file or directory" in the shared log) and Mosquitto exited, so the robot lost its broker
and every retry of its frame went unanswered. A second broker in a folder in use is now refused.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edge_node.broker import BrokerError, MosquittoBroker


def _publish(broker: MosquittoBroker) -> int:
    """mosquitto_pub's exit status against ``broker`` (0: it connected and published)."""
    command = [shutil.which("mosquitto_pub") or "mosquitto_pub", "-h", broker.host, "-p", str(broker.port),
               "-t", "probe", "-m", "x", "-q", "1"]  # fmt: skip
    return subprocess.run(command, capture_output=True, timeout=10).returncode


def test_a_second_broker_in_a_folder_in_use_is_refused_and_the_first_serves_on(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as first:
        with pytest.raises(BrokerError, match="data folder"):
            MosquittoBroker(tmp_path / "broker").start()
        assert _publish(first) == 0
    # Stopped, the folder is free again (a broker restarted over its own data, as after a crash).
    with MosquittoBroker(tmp_path / "broker") as again:
        assert _publish(again) == 0


def test_a_killed_broker_frees_its_folder_for_its_restart(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker").start()
    broker.kill()
    with broker:  # the same object started again, as a chaos test restarts it
        assert _publish(broker) == 0
