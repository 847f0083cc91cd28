"""README examples are real commands: run the control-plane walkthrough exactly as written."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from edge_node.broker import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str) -> str:
    """The ```sh blocks that follow ``<!-- readme-test: marker -->`` in README.md, in order, as one script."""
    blocks = re.findall(rf"<!-- readme-test: {marker} -->\n```sh\n(.*?)```", README.read_text(), re.S)
    assert blocks, f"README.md has no block marked readme-test: {marker}"
    return "\n".join(blocks)


def test_control_plane_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = readme_block("control-plane")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CP_PORT": str(free_port()),
        "BROKER_PORT": str(free_port()),
    }
    log = tmp_path / "walkthrough.log"
    with log.open("w") as sink:  # a file, not a pipe: the background services keep their stdout open
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, start_new_session=True,
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            process.wait(timeout=400)
        finally:
            _stop_group(process.pid)
    output = log.read_text()
    assert process.returncode == 0, output[-4000:]
    assert '"verdict":' in output, output[-4000:]  # mosquitto_rr printed the robot's verdict
    assert '"max_replicas":2' in output, output[-4000:]  # the scale call answered the new bounds
    assert "mosquitto_pub -h 127.0.0.1" in output  # factory IT's ready-to-run example was printed
    assert '"shortfall_cost_per_hour"' in output and '"floor_now"' in output  # the order plan and its floors
    assert '"kind":"manual"' in output  # the scale call's event, with its reason


def _stop_group(pgid: int) -> None:
    """The walkthrough leaves the control plane, broker and agent in the background: stop them."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
