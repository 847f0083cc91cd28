"""How busy this machine is, for heartbeats: CPU share since the last reading, GPU share per GPU."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROC_STAT = Path("/proc/stat")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs, or None where /proc/stat is missing."""
    try:
        fields = [int(v) for v in PROC_STAT.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class UtilizationMeter:
    """``read()`` answers the CPU share used since the previous ``read()`` and each GPU's current share."""

    def __init__(self, has_gpus: bool) -> None:
        self.has_gpus = has_gpus
        self._last = _cpu_times()

    def read(self) -> dict[str, object]:
        now = _cpu_times()
        cpu = 0.0
        if now and self._last and now[1] > self._last[1]:
            cpu = (now[0] - self._last[0]) / (now[1] - self._last[1])
        elif hasattr(os, "getloadavg"):
            cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
        self._last = now
        return {"cpu": round(min(max(cpu, 0.0), 1.0), 3), "gpus": self._gpus()}

    def _gpus(self) -> list[float]:
        if not self.has_gpus:
            return []
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout  # fmt: skip
            return [round(float(v) / 100, 3) for v in out.split()]
        except (OSError, subprocess.SubprocessError, ValueError):
            return []
