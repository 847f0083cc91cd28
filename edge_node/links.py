"""Round trips to other sites' brokers, for cross-site overflow: the head's agent probes each peer's broker
with an MQTT CONNECT and times the CONNACK (median of a few probes).

No credential is needed or sent: the broker answers an anonymous CONNECT with "not authorised" after one
round trip, which is all a probe needs (the broker logs one refused connection per probe). The time covers
what a frame's answer crosses: the network both ways and the broker's own turn-around.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import time

log = logging.getLogger(__name__)

PROBES = 3
TIMEOUT_S = 3.0


def _connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials."""
    name = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol name, level 4, clean session, keepalive 60 s
    payload = len(name).to_bytes(2, "big") + name
    remaining = len(variable) + len(payload)
    assert remaining < 128  # one-byte remaining length
    return bytes([0x10, remaining]) + variable + payload


def probe_once(host: str, port: int, timeout_s: float = TIMEOUT_S) -> float | None:
    """Milliseconds from sending a CONNECT to receiving the broker's CONNACK; None if none came."""
    packet = _connect_packet(f"lineside-probe-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sent = time.perf_counter()
            sock.sendall(packet)
            answer = sock.recv(4)
            elapsed = (time.perf_counter() - sent) * 1000.0
    except OSError as e:
        log.info("round-trip probe to %s:%s failed: %s", host, port, e)
        return None
    if len(answer) < 2 or answer[0] != 0x20:
        log.info("round-trip probe to %s:%s: no CONNACK came back", host, port)
        return None
    return elapsed


def round_trip_ms(host: str, port: int, probes: int = PROBES) -> float | None:
    """The median of ``probes`` CONNECT/CONNACK round trips; None if the broker never answered."""
    times = []
    for _ in range(probes):
        measured = probe_once(host, port)
        if measured is None:
            break  # a broker that does not answer is not probed again this pass
        times.append(measured)
    return round(statistics.median(times), 2) if times else None
