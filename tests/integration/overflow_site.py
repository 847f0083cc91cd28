"""The east site's Ray cluster for ``test_overflow_ray``: a Ray of its own (one Ray per process) that runs the
slice spec east's agent made (``argv[1]``: JSON, secrets included), as the agent's apply would. Prints ``ready``
once Serve runs it; on ``delete`` from stdin removes it as the agent does (the ingress drains) and prints its
ingress's counters as JSON; ends on EOF."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from contracts.slice_spec import SliceSpec
from edge_node import cluster


def main() -> None:
    spec = SliceSpec.model_validate_json(Path(sys.argv[1]).read_text())
    cluster.start(num_cpus=2)
    try:
        cluster.apply_slice(spec, wait_s=300)
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "delete":
                stats = cluster.slice_stats(spec)
                cluster.delete_slice(spec.name)
                print(json.dumps(stats, default=str), flush=True)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
