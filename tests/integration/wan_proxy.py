"""A TCP proxy that plays a WAN link between two sites: every byte is held ``delay_s`` each way (so a round
trip gains twice that), and ``drop(seconds)`` cuts the link: open connections are reset and new ones are
refused until it comes back, as when a site's uplink fails. (Loss inside a TCP stream shows up to the
endpoints as exactly this: a stall, then a broken connection; MQTT sees a dead link, not lost bytes.)
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from types import TracebackType


class WanProxy:
    def __init__(self, target_port: int, delay_s: float, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._down_until = 0.0
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connections = 0

    def __enter__(self) -> WanProxy:
        threading.Thread(target=self._accept, name="wan-accept", daemon=True).start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._server.close()
        self._reset_all()

    def drop(self, seconds: float) -> None:
        """Cut the link now for ``seconds``: open connections die, new ones are refused."""
        self._down_until = time.monotonic() + seconds
        self._reset_all()

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _reset_all(self) -> None:
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.connections += 1
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Read from ``source``; a writer thread delivers each chunk ``delay_s`` after it arrived, in order."""
        queue: list[tuple[float, int, bytes]] = []
        ready = threading.Condition()
        order = itertools.count()
        closed = threading.Event()

        def deliver() -> None:
            while True:
                with ready:
                    while not queue and not closed.is_set():
                        ready.wait(0.5)
                    if not queue:
                        break
                    due, _, chunk = queue[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        ready.wait(wait)
                        continue
                    heapq.heappop(queue)
                try:
                    sink.sendall(chunk)
                except OSError:
                    break
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        threading.Thread(target=deliver, daemon=True).start()
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                chunk = b""
            with ready:
                if not chunk:
                    closed.set()
                    ready.notify()
                    return
                heapq.heappush(queue, (time.monotonic() + self.delay_s, next(order), chunk))
                ready.notify()
