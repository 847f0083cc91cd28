"""Faults of the chaos table (issue 18) that the soak and the chaos tests inject the same way."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

from edge_node import cluster
from robots.sdk import Reply, RobotClient


def resume(pid: int) -> None:
    """SIGCONT a stalled (SIGSTOPped) process; it may be gone: Serve evicts and kills a stalled replica."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def serve_controller_pids() -> list[int]:
    """PIDs of the ``ray::ServeController`` of the Ray this process started (pytest-xdist runs one per worker)."""
    return [p.pid for p in cluster.run_processes() if p.name.startswith("ray::ServeController")]


def flood(host: str, port: int, *, tenant: str, line: str, frames: Sequence[bytes], fps: float, seconds: float,
          stop: threading.Event | None = None) -> tuple[int, list[Reply]]:  # fmt: skip
    """One robot ("flooder") sending ``fps`` frames a second for ``seconds`` without waiting for answers.

    Returns the frames sent and the answers that came (an unanswered flood frame is the flooder's own loss).
    """
    robot = RobotClient(host, port, tenant=tenant, line=line, robot="flooder").connect()
    futures: list[Future[Reply]] = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            futures.append(robot.send(frames[len(futures) % len(frames)], timeout_s=10, retries=0))
            time.sleep(1 / fps)
        replies: list[Reply] = []
        for future in futures:
            with contextlib.suppress(Exception):
                replies.append(future.result())
        return len(futures), replies
    finally:
        robot.close()
