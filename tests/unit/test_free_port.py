"""``free_port`` hands out ports no outgoing connection can take before their listener binds them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge_node.broker import free_port

pytestmark = pytest.mark.unit


def test_free_ports_are_bindable_and_outside_the_kernels_ephemeral_range() -> None:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(50)}
    assert all(not low <= port <= high for port in ports), sorted(ports)
    assert all(not 10002 <= port <= 19999 for port in ports), "Ray's worker ports"
    for port in list(ports)[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
