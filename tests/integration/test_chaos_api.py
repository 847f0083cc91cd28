"""Chaos scenario 11 (issue 18): 200 concurrent API requests against a pool of two PostgreSQL connections.

Each request holds a session (one connection) only while it runs, so a small pool makes requests queue, never
fail: every request is answered as it would be alone (no 503 ``database_busy``, no 500), the writes all land,
and afterwards no connection is left checked out of the pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from control_plane.server import BackgroundServer
from edge_node.broker import free_port
from tests.integration.cp_fixtures import ControlPlane

REQUESTS = 200


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("cp_overrides", [{"db_pool_size": 2, "db_max_overflow": 0}])
def test_200_concurrent_requests_share_a_pool_of_two_and_return_every_connection(control_plane: ControlPlane) -> None:
    cp = control_plane
    engine = cp.client.app.state.engine  # type: ignore[attr-defined]
    assert engine.pool.size() == 2
    server = BackgroundServer(cp.client.app, "127.0.0.1", free_port()).start()  # type: ignore[arg-type]
    tenants = (cp.a, cp.b)

    def call(k: int) -> tuple[str, int, str]:
        tenant = tenants[k % 2]
        with httpx.Client(base_url=server.url, timeout=120) as client:
            kind = k % 4
            if kind == 0:  # a write: a robot on the tenant's line
                body = {"slug": f"cam-{100 + k}", "line_id": tenant.line_id}
                response = client.post("/robots", json=body, headers=tenant.it)
            elif kind == 1:
                response = client.get("/robots", headers=tenant.it)
            elif kind == 2:
                response = client.get("/dashboard/lines", headers=tenant.pm)
            else:
                response = client.get(f"/slices/{tenant.ids['slice']}", headers=tenant.pm)
            return tenant.slug, response.status_code, response.text[:200]

    try:
        with ThreadPoolExecutor(REQUESTS) as pool:
            answers = list(pool.map(call, range(REQUESTS)))
        with httpx.Client(base_url=server.url, timeout=60) as client:
            robots = {t.slug: {r["slug"] for r in client.get("/robots?limit=500", headers=t.it).json()}
                      for t in tenants}  # fmt: skip
    finally:
        server.stop()
    failed = [a for a in answers if a[1] not in (200, 201)]
    assert not failed, failed[:5]
    for index, tenant in enumerate(tenants):  # every write landed, each in its own tenant only
        written = {f"cam-{100 + k}" for k in range(REQUESTS) if k % 4 == 0 and k % 2 == index}
        assert written <= robots[tenant.slug]
        assert not (written & robots[tenants[1 - index].slug])
    assert engine.pool.checkedout() == 0, "a request kept its database connection"
