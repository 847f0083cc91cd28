"""A slice as a real Ray Serve application, fed by simulated robots through a real Mosquitto."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from ray import serve

from contracts import wire
from contracts.slice_spec import BrokerSpec, ReplicaSpec, ResourceSpec, SliceSpec
from edge_node import cluster
from edge_node.broker import MosquittoBroker
from models import synth
from robots.simulate import Simulation

pytestmark = pytest.mark.usefixtures("ray_cluster")

POOL = [(s.label, s.data) for s in (synth.generate(5150, i) for i in range(48))]


@pytest.fixture
def deployed(broker: MosquittoBroker, request: pytest.FixtureRequest) -> Iterator[SliceSpec]:
    spec = SliceSpec(
        name=f"t-{request.node.name[5:25].replace('_', '-')}",
        tenant="acme",
        lines=["line-1"],
        broker=BrokerSpec(port=broker.port),
        replicas=ReplicaSpec(min_replicas=1, max_replicas=1),
    )
    cluster.apply_slice(spec)
    yield spec
    cluster.delete_slice(spec.name)


def test_slice_answers_every_frame(broker: MosquittoBroker, deployed: SliceSpec) -> None:
    status = cluster.slice_status(deployed)
    assert status["status"] == "RUNNING"
    assert status["deployments"]["model"]["replicas"] == {"RUNNING": 1}
    sim = Simulation(broker.host, broker.port, tenant="acme", line="line-1", robots=6, fps=5, pool=POOL)
    report = sim.run(6.0)
    assert report.sent >= 150
    assert report.lost == 0
    assert report.results == report.sent
    assert report.correct / report.results >= 0.85
    stats = cluster.slice_stats(deployed)
    assert stats["frames_received"] >= report.sent


def test_slice_exports_prometheus_metrics(broker: MosquittoBroker, deployed: SliceSpec, ray_cluster: int) -> None:
    sim = Simulation(broker.host, broker.port, tenant="acme", line="line-1", robots=2, fps=5, pool=POOL)
    sent = sim.run(2.0).sent
    deadline = time.monotonic() + 40
    while True:  # Ray exports metrics every few seconds
        body = urllib.request.urlopen(f"http://127.0.0.1:{ray_cluster}/metrics", timeout=5).read().decode()
        answers = [
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("ray_lineside_answers_total{") and f'slice="{deployed.name}"' in line
        ]
        if sum(answers) >= sent:
            break
        assert time.monotonic() < deadline, f"metrics show {sum(answers)} answers of {sent}"
        time.sleep(2)
    assert "ray_lineside_slice_latency_ms_bucket" in body


def test_bad_frames_through_the_slice_get_coded_errors(broker: MosquittoBroker, deployed: SliceSpec) -> None:
    from robots.sdk import RobotClient
    from tests.unit.test_imaging import _png_header_only

    robot = RobotClient(broker.host, broker.port, tenant="acme", line="line-1", robot="cam-1").connect()
    try:
        good = POOL[0][1]
        bad = {
            "bad_image": good[: len(good) // 3],
            "unsupported_format": b"\x00\x01random bytes" * 100,
            "too_large": _png_header_only(20000, 20000),
        }
        futures = {code: robot.send(payload, timeout_s=20) for code, payload in bad.items()}
        after = robot.send(good, timeout_s=20)
        for code, future in futures.items():
            reply = future.result()
            assert isinstance(reply, wire.ErrorReply)
            assert reply.code.value == code
            assert reply.slice == deployed.name
        assert isinstance(after.result(), wire.Result)
    finally:
        robot.close()


def test_killed_ingress_loses_no_acknowledged_frame(broker: MosquittoBroker, deployed: SliceSpec) -> None:
    """kill -9 of the ingress while 20 robots stream at QoS 1: every frame is answered, service resumes."""
    sim = Simulation(broker.host, broker.port, tenant="acme", line="line-1", robots=20, fps=2, pool=POOL,
                     timeout_s=5, retries=3)  # fmt: skip
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(4)  # the scenario: robots stream for a while before the ingress dies
        os.kill(cluster.slice_processes(deployed)["ingress"]["pid"], signal.SIGKILL)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_soon)
    killer.start()
    report = sim.run(22.0)
    killer.join()
    assert killed_at, "the ingress was never killed"
    assert report.lost == 0, report.summary()
    assert report.results == report.sent
    assert report.longest_gap_s(after=killed_at[0]) <= 15.0, "service did not resume within 15 s"
    assert serve.status().applications[deployed.name].deployments["ingress"].replica_states == {"RUNNING": 1}


def test_a_slice_decoding_in_its_ingress_answers_as_one_decoding_in_its_model(
    broker: MosquittoBroker, deployed: SliceSpec
) -> None:
    """decode_at "ingress": the ingress decodes, the model replica gets pixels; the robot sees the same verdicts
    and the same coded errors as from a slice whose model replica decodes (``deployed``)."""
    from robots.sdk import RobotClient
    from tests.unit.test_imaging import _png_header_only

    resources = ResourceSpec(cpus_per_replica=0.5, decode_at="ingress")
    in_ingress = deployed.model_copy(update={"name": "t-decode-in-ingress", "lines": ["line-2"],
                                             "resources": resources})  # fmt: skip
    assert cluster.apply_slice(in_ingress)
    try:
        frames = [data for _, data in POOL[:12]] + [POOL[0][1][:300], _png_header_only(20000, 20000)]
        replies = {}
        for line in ("line-1", "line-2"):
            robot = RobotClient(broker.host, broker.port, tenant="acme", line=line, robot="cam-1").connect()
            try:
                futures = [robot.send(frame, timeout_s=20) for frame in frames]
                replies[line] = [future.result() for future in futures]
            finally:
                robot.close()
        for by_model, by_ingress in zip(replies["line-1"], replies["line-2"], strict=True):
            if isinstance(by_model, wire.Result):
                assert isinstance(by_ingress, wire.Result)
                assert (by_ingress.verdict, by_ingress.defect_class) == (by_model.verdict, by_model.defect_class)
                assert by_ingress.score == pytest.approx(by_model.score, abs=1e-4)
            else:
                assert isinstance(by_ingress, wire.ErrorReply) and by_ingress.code == by_model.code
        codes = [r.code.value for r in replies["line-2"][-2:] if isinstance(r, wire.ErrorReply)]
        assert codes == ["bad_image", "too_large"]
        judged = {}
        for spec in (deployed, in_ingress):
            info = serve.get_deployment_handle("model", app_name=spec.name).info.remote().result(timeout_s=10)
            judged[spec.name] = info["frames_judged"]
        assert judged[deployed.name]["decoded"] == 0 and judged[deployed.name]["encoded"] >= len(frames)
        assert judged[in_ingress.name]["encoded"] <= 1  # the ingress's warm-up call, at most
        assert judged[in_ingress.name]["decoded"] == 12  # the two bad frames never left the ingress
    finally:
        cluster.delete_slice(in_ingress.name)
