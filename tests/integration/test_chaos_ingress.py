"""Chaos scenario 7 (issue 18): one of two ``$share`` ingress replicas dies for good (kill -9, its rank never
returns), against a real Mosquitto, the bundled model in ONNX Runtime and simulated robots; no Ray, since Serve
would bring the replica back under the same rank.

Mosquitto 2.0 keeps a dead persistent session in the shared group: it goes on routing that session its share
of the line's frames, and keeps the frames it had in flight, for the session's whole expiry (24 h). The dead
connection's will announces it ``ADOPT_AFTER_S`` later, and the surviving replica adopts the session: it answers
what the session holds, and ends it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_node.broker import MosquittoBroker
from edge_node.ingress.mqtt_session import ADOPT_AFTER_S
from models import synth
from robots.simulate import Simulation

ROOT = Path(__file__).resolve().parents[2]
POOL = [(s.label, s.data) for s in (synth.generate(7070, i) for i in range(24))]


class IngressProcess:
    """``tests/integration/ingress_process.py`` as a child process, with the counters it last printed."""

    def __init__(self, port: int, client_id: str, log: Path) -> None:
        self.client_id = client_id
        self.counts: dict[str, int] = {}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.integration.ingress_process", str(port), client_id],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)  # fmt: skip
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "ready":
                self.ready.set()
            elif line.startswith("{"):
                self.counts = json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def two_replicas(broker: MosquittoBroker, tmp_path: Path) -> Iterator[tuple[IngressProcess, ...]]:
    # Rank 0 and rank 1 of slot 0, named as edge_node.serving names them without the control plane's logins.
    pair = tuple(IngressProcess(broker.port, f"lineside-c7-ingress-{i}", tmp_path / f"ingress-{i}.log") for i in (0, 2))
    try:
        for replica in pair:
            assert replica.ready.wait(60), f"{replica.client_id} did not subscribe"
        yield pair
    finally:
        for replica in pair:
            replica.stop()


def _session_present(broker: MosquittoBroker, client_id: str) -> bool:
    """Whether the broker still holds a session for ``client_id`` (connecting without a clean start, then
    disconnecting so that it keeps whatever it found)."""
    answer: list[bool] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)

    def on_connect(_c: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, _r: object, _p: object) -> None:
        answer.append(flags.session_present)
        done.set()

    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0  # ends the session on the way out: the probe leaves nothing behind
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    assert done.wait(10), "no CONNACK"
    client.loop_stop()
    client.disconnect()
    return answer[0]


def test_7_a_shared_ingress_replica_dead_for_good_loses_no_frame(
    broker: MosquittoBroker, two_replicas: tuple[IngressProcess, ...]
) -> None:
    """kill -9 of one of two ingress replicas under 20 robots at 2 frames/s, never restarted: every frame gets its
    verdict (those it held, and those the broker routed to its dead session, through the survivor's adoption),
    and no session is left behind."""
    survivor, victim = two_replicas
    killed: list[float] = []

    def kill() -> None:
        time.sleep(6)
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed.append(time.monotonic())

    fault = threading.Thread(target=kill, daemon=True)
    fault.start()
    simulation = Simulation(broker.host, broker.port, tenant="acme", line="line-1", robots=20, fps=2.0, pool=POOL,
                            timeout_s=5, retries=3)  # fmt: skip
    report = simulation.run(30.0)
    fault.join()
    time.sleep(1.5)  # the survivor's next counters
    summary = report.summary()
    figures = {"scenario": 7, **summary, "adopt_after_s": ADOPT_AFTER_S,
               "gap_after_kill_s": report.longest_gap_s(after=killed[0]), "survivor": survivor.counts}  # fmt: skip
    print(json.dumps(figures))
    assert victim.proc.wait(5) == -signal.SIGKILL
    assert report.lost == 0, figures
    assert report.results == report.sent, figures
    assert survivor.counts.get("sessions_adopted") == 1, figures
    assert survivor.counts.get("frames_adopted", 0) > 0, figures
    assert not _session_present(broker, victim.client_id), "the dead replica's session is still with the broker"
