"""A robot's small computer installs ``lineside[robot]`` and nothing heavy, and sends frames with the SDK.

One test, because installing into a fresh virtualenv from PyPI takes a while: it installs the
project's files with the ``robot`` extra, checks what pip put there, then runs a script in that
virtualenv that sends one frame with ``robots.sdk.RobotClient`` through a Mosquitto the test started.
The test itself plays the slice's ingress (subscribes to the frames, answers a wire ``Result``), so
the verdict the robot prints can only be the one the test sent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from contracts import wire
from edge_node.broker import MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("pyproject.toml", "README.md", "contracts", "robots", "models", "edge_node", "training",
                 "control_plane", "bench", "lineside")  # fmt: skip
HEAVY = {"ray", "onnxruntime", "onnxruntime-gpu", "fastapi", "numpy", "typer", "sqlmodel", "pillow", "onnx"}
TENANT, LINE, ROBOT = "acme", "line-1", "cam-7"

ROBOT_SCRIPT = """
import json, sys
from robots.sdk import RobotClient
robot = RobotClient("127.0.0.1", int(sys.argv[1]), tenant="acme", line="line-1", robot="cam-7").connect()
reply = robot.inspect(b"\\xff\\xd8 a frame", frame_id="part-17", timeout_s=5.0, retries=1)
robot.close()
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"numpy", "ray", "onnxruntime", "fastapi", "PIL", "typer"})
print(json.dumps({"kind": type(reply).__name__, "reply": reply.model_dump(mode="json"), "heavy": heavy}))
"""


def verdict_for(frame_id: str) -> wire.Result:
    """The answer a slice would send: a failed part with a scratch."""
    return wire.Result(
        frame_id=frame_id, tenant=TENANT, line=LINE, robot=ROBOT, slice="fake-ingress", node="test",
        verdict="fail", defect_class="scratch", score=0.91, fail_score=0.91,
        scores={"ok": 0.09, "scratch": 0.91}, model="bundled:1",
        timings_ms=wire.Timings(queue=0.1, inference=1.0, total=1.2),
    )  # fmt: skip


@pytest.fixture
def fake_ingress(broker: MosquittoBroker) -> Iterator[list[str]]:
    """Answers every frame of the robot with ``verdict_for`` its id; yields the frame ids it answered."""
    answered: list[str] = []
    subscribed = threading.Event()
    results = wire.topic(TENANT, LINE, ROBOT, wire.TopicKind.RESULTS)

    def on_message(client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        frame_id = msg.properties.CorrelationData.decode()  # type: ignore[union-attr]
        answered.append(frame_id)
        client.publish(results, verdict_for(frame_id).model_dump_json(), qos=1, properties=Properties(msg.properties))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-ingress", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(wire.topic(TENANT, LINE, ROBOT, wire.TopicKind.FRAMES), qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert subscribed.wait(10), "the fake ingress got no SUBACK from the test's broker"
    yield answered
    client.disconnect()
    client.loop_stop()


def project_copy(target: Path) -> Path:
    """The project's files, so that building the wheel writes nothing into the checkout."""
    target.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target / name)
    return target


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False)


def test_robot_extra_installs_only_the_sdk_and_sends_a_frame(
    tmp_path: Path, broker: MosquittoBroker, fake_ingress: list[str]
) -> None:
    venv = tmp_path / "robot-venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    source = project_copy(tmp_path / "lineside")
    installed = run(python, "-m", "pip", "install", "--quiet", f"{source}[robot]", timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]

    listed = run(python, "-m", "pip", "list", "--format=json")
    packages = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"lineside", "paho-mqtt", "pydantic"} <= packages, packages
    assert not packages & HEAVY, f"the robot extra pulled in server packages: {sorted(packages & HEAVY)}"

    sent = run(python, "-c", ROBOT_SCRIPT, str(broker.port), timeout=60)
    assert sent.returncode == 0, sent.stderr[-3000:]
    robot = json.loads(sent.stdout.strip().splitlines()[-1])
    assert fake_ingress == ["part-17"]
    assert robot["kind"] == "Result"
    assert robot["reply"] == verdict_for("part-17").model_dump(mode="json")
    assert robot["heavy"] == []

    # The console script comes along; without the server extra it names what to install.
    command = run(venv / "bin" / "lineside", "--help")
    assert command.returncode == 1
    assert "robot-only install" in command.stderr and 'pip install "lineside[server,cpu]"' in command.stderr
    assert "Traceback" not in command.stderr
