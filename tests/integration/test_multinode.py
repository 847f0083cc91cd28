"""Multi-node Ray: replicas run where the scheduler put them and leave a node whose window ends with notice,
replacement first (issue 14, section 3), losing no frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_replicas_follow_the_scheduler_across_ray_nodes() -> None:
    scenario = Path(__file__).with_name("multinode_scenario.py")
    done = subprocess.run([sys.executable, str(scenario)], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    before, after, drained = result["placed_before"], result["placed_after"], result["drained"]
    assert len(before) == 2 and len(set(before)) == 2 and drained in before, result  # spread over two nodes
    assert result["ray_before"] == {f"model-lineside_node_{n}": [n] for n in before}, result
    # For the notice the leaving replica and its replacement both run, on three nodes.
    assert result["placed_during_notice"] == [1, 2, 3] and result["notice_events"] == [drained], result
    assert result["ray_during_notice"] == {f"model-lineside_node_{n}": [n] for n in (1, 2, 3)}, result
    assert drained not in after and len(after) == 2, result
    # The replica on the node that stays keeps running through both applies (Serve 2.60 restarted every
    # replica on every apply until each deployment got a version from what it runs: serving.deployment_version).
    assert result["kept_replicas"] == [f"model-lineside_node_{n}" for n in before if n != drained], result
    assert result["ray_after"] == {f"model-lineside_node_{n}": [n] * after.count(n) for n in set(after)}, result
    assert result["lost"] == 0 and result["answered_after_drain"] > 0, result
    # No two ingress versions fought over one MQTT session (that answered frames ~96 s late, with thousands
    # of duplicate answers), and no frame waited for the robots' 5 s timeout: each apply replaces the ingress,
    # and frames published while no ingress was subscribed were dropped by the broker (38-65 resends a run,
    # and 15.2 s for a frame dropped in both handovers) until the replacement subscribed before the old one
    # left (Serve's max_surge_percent, and an ingress constructor that waits for its SUBACK).
    assert result["duplicates"] == 0 and result["resent"] == 0 and result["max_latency_ms"] < 5000, result
    print(json.dumps({k: result[k] for k in ("replacement_ready_s", "move_s", "longest_gap_s", "resent",
                                             "max_latency_ms", "sent", "lost")}))  # fmt: skip
