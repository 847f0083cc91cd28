"""A running ``lineside demo`` and a headless Chromium, for the dashboard's browser tests and screenshots.

Chromium is Debian's (``apt-get install chromium``; ``make browser`` does it),
driven by Playwright's Python client; no browser is downloaded. Set
``LINESIDE_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.dashboard import chromium_path
from edge_node.broker import free_port

__all__ = ["RunningDemo", "chromium_path", "login"]

LINESIDE = str(Path(sys.executable).with_name("lineside"))


@dataclass
class RunningDemo:
    """``lineside demo`` in a subprocess: its dashboard URL, logins and API tokens, as it printed them."""

    process: subprocess.Popen[str]
    log: Path
    url: str = ""
    logins: dict[str, tuple[str, str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, workdir: Path, robots: int = 4, fps: float = 3.0, timeout_s: float = 240) -> RunningDemo:
        log = workdir / "demo.log"
        port = free_port()
        args = [LINESIDE, "demo", "--robots", str(robots), "--fps", str(fps), "--port", str(port)]
        process = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)  # fmt: skip
        demo = cls(process, log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = log.read_text()
            if re.search(r"^t= *\d", text, re.MULTILINE):  # robots are streaming
                demo._parse(text)
                return demo
            if process.poll() is not None:
                raise RuntimeError(f"the demo exited ({process.returncode}):\n{text[-3000:]}")
            time.sleep(0.5)
        demo.stop()
        raise RuntimeError(f"the demo did not start streaming within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")

    def _parse(self, text: str) -> None:
        url = re.search(r"dashboard: (http://\S+)/ui/", text)
        assert url, text
        self.url = url.group(1)
        for role, email, password, token in re.findall(r"(\w+) +login: (\S+) / (\S+) +API token: (\S+)", text):
            self.logins[role] = (email, password)
            self.tokens[role] = token

    def stop(self, timeout_s: float = 120) -> tuple[int, str]:
        """Ctrl-C, as a user would; returns the exit code and the whole output."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
                for pid in self.leftover_brokers():  # its own session: SIGKILL of the demo misses it
                    os.kill(pid, signal.SIGKILL)
        return self.process.returncode, self.log.read_text()

    def leftover_brokers(self) -> list[int]:
        """PIDs of this demo's Mosquitto still running."""
        config = re.search(r"\(config (\S+)\)", self.log.read_text())
        if config is None:
            return []
        found = subprocess.run(["pgrep", "-f", config.group(1)], capture_output=True, text=True).stdout
        return [int(pid) for pid in found.split()]


def login(page: Any, url: str, email: str, password: str) -> None:
    """Log in with the keyboard only, as the accessibility basics ask."""
    page.goto(f"{url}/ui/")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(re.compile(r".*/ui/(plant|it|operator|contributor)$"))
