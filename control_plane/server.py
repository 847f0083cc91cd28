"""Serve the control plane from a background thread (the demo; tests of real HTTP clients)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from control_plane.errors import ControlPlaneError


class BackgroundServer:
    """uvicorn on ``host:port`` in a daemon thread; ``stop`` waits for it to finish."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.url = f"http://{host}:{port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="control-plane", daemon=True)

    def start(self, timeout_s: float = 20.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ControlPlaneError(f"the control plane did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
