"""Ids out of range and paginated lists (issue 11, item 15).

Every route with an integer id in its path is called with ids no database column holds: each must
answer 4xx, never 500. Every list route takes ``limit`` (with a documented maximum) and ``after``,
and walking a list page by page (``X-Next-Cursor``, or the ``Link: rel="next"`` header) returns every
item exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.settings import ControlPlaneSettings
from tests.integration.cp_fixtures import BOOT, ControlPlane, bearer, ok

OP = bearer(BOOT)
BOUNDED_SERIES = {"/lines/{line_id}/series"}  # points over a time range, at most 288 whatever the range
HUGE_IDS = ["99999999999999999999", str(2**31), str(2**63), "0", "-1"]


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = ControlPlaneSettings(data_dir=tmp_path / "data", database_url=database_url, bootstrap_token=BOOT,
                                    monitor_sites=False)  # fmt: skip
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    app.state.engine.dispose()


def _id_routes(client: TestClient) -> list[tuple[str, str, list[str]]]:
    """(method, path, names of its integer path parameters) of every API operation with one, per the OpenAPI."""
    found = []
    for path, operations in ok(client.get("/openapi.json"))["paths"].items():
        for method, operation in operations.items():
            ints = [p["name"] for p in operation.get("parameters", [])
                    if p["in"] == "path" and p["schema"].get("type") == "integer"]  # fmt: skip
            if ints:
                found.append((method.upper(), path, ints))
    return found


def test_every_id_route_refuses_ids_out_of_range(client: TestClient) -> None:
    routes = _id_routes(client)
    assert len(routes) >= 25, routes  # the walk found the API's id routes
    answers: dict[str, int] = {}
    for method, path, names in routes:
        for huge in HUGE_IDS:
            url = path
            for name in names:
                url = url.replace("{" + name + "}", huge)
            url = re.sub(r"\{[^}]+\}", "x", url)  # non-integer parameters (a sha256)
            answer = client.request(method, url, headers=OP, json={})
            answers[f"{method} {url}"] = answer.status_code
    broken = {call: status for call, status in answers.items() if status >= 500}
    assert broken == {}
    assert answers["GET /robots/99999999999999999999"] == 422
    assert answers["GET /tenants/0"] == 422


@pytest.mark.parametrize("query", ["line_id=99999999999999999999", "after=99999999999999999999", "limit=0",
                                   "limit=100000", "site_id=2147483648"])  # fmt: skip
def test_list_parameters_out_of_range_are_refused(client: TestClient, query: str) -> None:
    path = "/nodes" if query.startswith("site_id") else "/robots"
    assert client.get(f"{path}?{query}", headers=OP).status_code == 422


def test_every_list_route_is_paginated_with_a_documented_maximum(client: TestClient) -> None:
    spec = ok(client.get("/openapi.json"))
    lists = []
    for path, operations in spec["paths"].items():
        get = operations.get("get")
        schema = (get or {}).get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
        if schema.get("schema", {}).get("type") != "array" or path in BOUNDED_SERIES:
            continue
        lists.append(path)
        params = {p["name"]: p for p in get.get("parameters", [])}
        assert "after" in params and "limit" in params, path
        assert params["limit"]["schema"]["maximum"] <= 1000, path
        assert "X-Next-Cursor" in get["description"] or "X-Next-Cursor" in params["after"].get("description", "")
    assert {"/robots", "/users", "/tenants", "/lines", "/slices", "/models", "/nodes", "/sites"} <= set(lists)


def _walk(client: TestClient, path: str, limit: int, use_link: bool) -> tuple[list[int], int]:
    ids: list[int] = []
    pages = 0
    url: str | None = f"{path}?limit={limit}"
    while url is not None:
        answer = client.get(url, headers=OP)
        page = ok(answer)
        assert len(page) <= limit
        ids += [item["id"] for item in page]
        pages += 1
        cursor = answer.headers.get("X-Next-Cursor")
        link = answer.headers.get("Link")
        assert (cursor is None) == (link is None)
        if cursor is None:
            url = None
        elif use_link:
            url = re.fullmatch(r'<([^>]+)>; rel="next"', link or "").group(1)  # type: ignore[union-attr]
        else:
            url = f"{path}?limit={limit}&after={cursor}"
    return ids, pages


@pytest.mark.parametrize("use_link", [False, True])
def test_walking_a_list_page_by_page_returns_everything_once(client: TestClient, use_link: bool) -> None:
    for i in range(7):
        ok(client.post("/tenants", json={"slug": f"plant-{i}", "name": f"Plant {i}"}, headers=OP), 201)
        ok(client.post("/users", json={"email": f"u{i}@lineside.example", "role": "operator"}, headers=OP), 201)
    for path, total in (("/tenants", 7), ("/users", 8)):  # users: the bootstrap operator too
        everything = [item["id"] for item in ok(client.get(path, headers=OP))]
        assert len(everything) == total
        ids, pages = _walk(client, path, 3, use_link)
        assert ids == everything and len(set(ids)) == total
        assert pages == -(-total // 3)
    tokens, _ = _walk(client, "/users/me/tokens", 1, use_link)
    assert len(tokens) == len(set(tokens)) == 1


def test_a_newest_first_list_walks_backwards(client: TestClient) -> None:
    """Lists shown newest first (alerts, scale events, failed parts) take ``after`` as "older than"."""
    spec: dict[str, Any] = ok(client.get("/openapi.json"))
    after = {p["name"]: p for p in spec["paths"]["/alerts"]["get"]["parameters"]}["after"]
    assert "older" in after["description"] or "newest first" in spec["paths"]["/alerts"]["get"]["description"]


def test_ids_in_bodies_out_of_range_are_refused(control_plane: ControlPlane) -> None:
    """Ids sent in request bodies (and in agents' reports) are bounded like path ids: 422, never 500."""
    from tests.integration.test_security_nodes import join

    cp = control_plane
    _, agent = join(cp, "head-1")
    huge = 10**20
    calls = [
        ("/lines", {"slug": "l9", "site_id": huge}, cp.a.it),
        ("/robots", {"slug": "r9", "line_id": huge}, cp.a.it),
        ("/slices", {"slug": "s9", "line_ids": [huge], "model_version_id": 1}, cp.a.pm),
        ("/slices", {"slug": "s9", "line_ids": [cp.a.line_id], "model_version_id": huge}, cp.a.pm),
        ("/users", {"email": "x@acme.example", "role": "factory_it", "tenant_id": huge}, cp.op),
        ("/agent/v1/heartbeat", {"slices": [{"slice_id": huge, "generation": 1, "healthy": True}]}, agent),
    ]
    for path, body, headers in calls:
        response = cp.client.post(path, json=body, headers=headers)
        assert response.status_code == 422, (path, body, response.status_code, response.text[:200])
