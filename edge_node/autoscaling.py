"""Lineside's reactive autoscaling policy for Ray Serve: the default policy plus hysteresis.

Ray's default policy asks for ``total ongoing requests / target`` replicas and
moves whenever that rounds to another number, so a load that sits between two
replica counts flips back and forth (measured: 5 to 15 changes in 10 minutes of
steady load, ``lineside bench autoscale``). A production line wants capacity
added fast and removed only when it is clearly idle:

* scale up as soon as the work exceeds the replicas running (after the slice's
  ``upscale_delay_s``, applied by Serve);
* scale down only when one replica fewer would still run at or below
  ``downscale_utilization`` of the target, and then to the count that does
  (after ``downscale_delay_s``).

Serve applies min/max bounds and the delays around this function.
"""

from __future__ import annotations

import math
from typing import Any

POLICY = "edge_node.autoscaling:LinePolicy"


class LinePolicy:
    """Called by Serve's controller with an ``AutoscalingContext`` every control-loop tick."""

    def __init__(self, downscale_utilization: float = 0.7) -> None:
        self.downscale_utilization = downscale_utilization

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        running = ctx.current_num_replicas
        if running == 0:
            return ctx.target_num_replicas, {}
        work = ctx.total_num_requests / ctx.config.get_target_ongoing_requests()  # replicas' worth at target
        return desired_replicas(running, work, self.downscale_utilization), {}


def desired_replicas(running: int, work: float, downscale_utilization: float) -> int:
    """Replicas wanted for ``work`` (in replicas at target) starting from ``running``."""
    if work > running:
        return math.ceil(work)
    fewer = max(math.ceil(work / downscale_utilization), 1)
    return fewer if fewer < running else running
