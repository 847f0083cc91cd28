"""Concurrent writers over real HTTP: every request gets an answer, duplicates a clean 409, nothing lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from control_plane.server import BackgroundServer
from edge_node.broker import free_port
from tests.integration.cp_fixtures import ControlPlane


def test_concurrent_writers_lose_nothing(control_plane: ControlPlane) -> None:
    cp = control_plane
    server = BackgroundServer(cp.client.app, "127.0.0.1", free_port()).start()  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=server.url, headers=cp.a.it, timeout=60) as client:

            def create(k: int) -> int:
                # 40 distinct lines and 40 attempts at one name, interleaved across 8 threads.
                slug = f"line-{100 + k // 2}" if k % 2 == 0 else "line-dup"
                return client.post("/lines", json={"slug": slug, "site_id": cp.site_id}).status_code

            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(create, range(80)))
            slugs = [line["slug"] for line in client.get("/lines").json()]
    finally:
        server.stop()
    assert sorted(set(codes)) == [201, 409], codes
    assert codes.count(201) == 41  # 40 distinct lines + the first "line-dup"
    assert sorted(slugs) == sorted(["line-1", "line-dup", *(f"line-{100 + k}" for k in range(40))])
