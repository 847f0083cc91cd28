"""A real multi-node Ray cluster on one machine (head + two worker raylets, each a Lineside node
with its own ``lineside_node_<id>`` resource): the scheduler places a bank slice's model replicas, Ray
runs them on those nodes (checked with Ray's state API); then, on a controlled clock, node 2's
lending window ends with a 10-minute notice: its replica's replacement starts elsewhere first (both
run), and only at the window's end does the old replica stop; robots stream throughout. Run by
test_multinode.py in a subprocess (one Ray per process); prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from contracts.slice_spec import NODE_RESOURCE_PREFIX, BrokerSpec, ReplicaSpec, ResourceSpec, SliceSpec
from control_plane.scheduler import EventKind, NodeSpec, Priority, SliceDemand, Window, place
from edge_node import cluster as lineside_cluster
from edge_node.broker import MosquittoBroker
from robots.simulate import Simulation, render_pool

WINDOW_END = datetime(2026, 11, 30, 12, 10)  # node 2 (a lab's) lends every day 08:00-12:10
NOTICE = timedelta(minutes=10)
STREAM_S = 65
"""Seconds the robots stream: long enough to see answers after the last move, which takes about 30 s while the
leaving replica shuts down."""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _model_replicas(app: str) -> list[tuple[str, Any]]:
    """Alive model replicas of ``app`` as (deployment, Ray's actor state), from Ray's state API."""
    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    prefix = f"ServeReplica:{app}:model"
    return [(a.class_name.split(":")[-1], a) for a in alive if (a.class_name or "").startswith(prefix)]


def replica_nodes(app: str, ray_to_lineside: dict[str, int]) -> dict[str, list[int]]:
    """Alive model replicas per deployment and the Lineside node each runs on."""
    found: dict[str, list[int]] = {}
    for deployment, actor in _model_replicas(app):
        found.setdefault(deployment, []).append(ray_to_lineside[str(actor.node_id)])
    return {k: sorted(v) for k, v in sorted(found.items())}


def replica_actors(app: str) -> dict[str, list[str]]:
    """Alive model replicas' actor ids per deployment: a replica that restarted has a new one."""
    found: dict[str, list[str]] = {}
    for deployment, actor in _model_replicas(app):
        found.setdefault(deployment, []).append(actor.actor_id)
    return {k: sorted(v) for k, v in found.items()}


def placement_of(assignments: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in assignments:
        counts[f"{NODE_RESOURCE_PREFIX}{node}"] = counts.get(f"{NODE_RESOURCE_PREFIX}{node}", 0) + 1
    return counts


def wait_for(app: str, ray_to_lineside: dict[str, int], expected: dict[str, int], timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    want = {f"model-{k}": [int(k.removeprefix(NODE_RESOURCE_PREFIX))] * v for k, v in expected.items()}
    while time.monotonic() < deadline:
        seen = replica_nodes(app, ray_to_lineside)
        if seen == want:
            return seen
        time.sleep(1)
    return replica_nodes(app, ray_to_lineside)


def main() -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="lineside-multinode-"))
    ray_cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {f"{NODE_RESOURCE_PREFIX}1": 1000}, "include_dashboard": True})  # fmt: skip
    for node_id in (2, 3):
        ray_cluster.add_node(num_cpus=1, resources={f"{NODE_RESOURCE_PREFIX}{node_id}": 1000})
    say("cluster up; connecting")
    ray.init(address=ray_cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    ray_to_lineside = {
        n["NodeID"]: next(int(r.removeprefix(NODE_RESOURCE_PREFIX)) for r in n["Resources"]
                          if r.startswith(NODE_RESOURCE_PREFIX))
        for n in ray.nodes() if n["Alive"]
    }  # fmt: skip
    every_day = frozenset(range(7))
    lab = NodeSpec(2, cpus=1.0, memory_mb=4000, contributed=True, notice=NOTICE,
                   windows=(Window(every_day, clock(8, 0), WINDOW_END.time()),))  # fmt: skip
    today = frozenset({date(2026, 11, 30)})
    nodes = [lab, *(NodeSpec(i, cpus=1.0, memory_mb=4000, contributed=True, holidays=today) for i in (1, 3))]
    demand = SliceDemand(1, Priority.BANK, replicas=2, cpus=0.3, memory_mb=1000)
    first = place(nodes, [demand], now=WINDOW_END - NOTICE - timedelta(minutes=5))
    result: dict[str, Any] = {"placed_before": sorted(first.assignments[1])}
    pool = render_pool(32, jpeg_only=True)
    with MosquittoBroker(workdir / "broker") as broker:
        applies = iter(range(10))

        def spec(assignments: list[int]) -> SliceSpec:
            return SliceSpec(
                ingress_slot=next(applies) % 2,  # the agent alternates it on every changed apply
                name="multi", tenant="acme", lines=["line-1"], broker=BrokerSpec(host=broker.host, port=broker.port),
                replicas=ReplicaSpec(min_replicas=len(assignments), max_replicas=len(assignments)),
                resources=ResourceSpec(cpus_per_replica=0.3, ingress_cpus=0.2, ort_threads=1),
                placement=placement_of(assignments),
            )  # fmt: skip

        say(f"applying placement {first.assignments[1]}")
        lineside_cluster.apply_slice(spec(first.assignments[1]))
        say("applied")
        result["ray_before"] = wait_for("multi", ray_to_lineside, placement_of(first.assignments[1]))
        actors_before = replica_actors("multi")
        simulation = Simulation(broker.host, broker.port, tenant="acme", line="line-1", robots=4, fps=4, pool=pool,
                                timeout_s=5, retries=4)  # fmt: skip
        streaming = threading.Thread(target=simulation.run, args=(STREAM_S,))
        streaming.start()
        time.sleep(8)  # the scenario: robots stream on the first placement before the notice starts
        during = place(nodes, [demand], first.assignments, now=WINDOW_END - NOTICE)
        result.update(placed_during_notice=sorted(during.assignments[1]),
                      notice_events=[e.node_id for e in during.events if e.kind is EventKind.NOTICE])  # fmt: skip
        say(f"node {lab.node_id}'s window ends in {NOTICE}: placement {during.assignments[1]}")
        notice_at = time.monotonic()
        lineside_cluster.apply_slice(spec(during.assignments[1]))
        result["ray_during_notice"] = wait_for("multi", ray_to_lineside, placement_of(during.assignments[1]))
        result["replacement_ready_s"] = round(time.monotonic() - notice_at, 1)
        time.sleep(4)  # the replacement serves beside the leaving replica
        after = place(nodes, [demand], during.assignments, now=WINDOW_END)
        result.update(drained=lab.node_id, placed_after=sorted(after.assignments[1]))
        say(f"window over: placement {after.assignments[1]}")
        ended_at = time.monotonic()
        lineside_cluster.apply_slice(spec(after.assignments[1]))
        result["ray_after"] = wait_for("multi", ray_to_lineside, placement_of(after.assignments[1]))
        result["move_s"] = round(time.monotonic() - ended_at, 1)
        actors_after = replica_actors("multi")
        result["kept_replicas"] = sorted(name for name, ids in actors_after.items() if actors_before.get(name) == ids)
        stream_end = notice_at - 8 + STREAM_S  # the robots stop sending STREAM_S after they start
        streaming.join()
        report = simulation.report
        result.update(sent=report.sent, answered=report.results + report.errors, lost=report.lost,
                      answered_after_drain=sum(1 for t in report.answered_at if t > ended_at + result["move_s"]),
                      longest_gap_s=round(report.longest_gap_s(), 1),
                      longest_gap_during_move_s=round(report.longest_gap_s(after=notice_at), 1),
                      resent=report.resent, duplicates=report.duplicates,
                      max_latency_ms=round(max(report.latencies_ms, default=0.0)),
                      answered_after_stream_end=sum(1 for t in report.answered_at if t > stream_end + 1))  # fmt: skip
        serve.shutdown()
    ray.shutdown()
    ray_cluster.shutdown()
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.exit(0)
