"""One router file per URL prefix: ``/lines/...`` lives in ``routes/lines.py``, ``/nodes/...`` in ``routes/nodes.py``.

A newcomer looking for a URL opens the file named after its first segment; this test keeps it so, for every
route the app serves and every router module in the package.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType

from fastapi.routing import APIRoute, APIRouter
from starlette.routing import BaseRoute

from control_plane.api import routes
from control_plane.app import create_app
from control_plane.settings import ControlPlaneSettings

HEALTH = {"/healthz", "/readyz", "/metrics"}  # probes at the root, where load balancers and Prometheus look
VERSIONED = {"agent": "/agent/v1"}  # the agents' protocol carries its version in the prefix


def _modules() -> dict[str, ModuleType]:
    found = pkgutil.iter_modules(routes.__path__)
    return {m.name: importlib.import_module(f"{routes.__name__}.{m.name}") for m in found}


def _expected_prefix(name: str) -> str:
    return VERSIONED.get(name, "/" + name.replace("_", "-"))


def _owner(path: str) -> str:
    """The module a path belongs in: its first segment (``/failed-parts/...`` -> failed_parts)."""
    if path in HEALTH:
        return "health"
    return path.strip("/").split("/")[0].replace("-", "_")


def _api_routes(items: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    for route in items:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI keeps included routers as branches
            yield from _api_routes(route.original_router.routes)


def test_each_router_module_owns_exactly_its_prefix() -> None:
    modules = _modules()
    assert "capacity" not in modules  # its routes live under /lines, /slices and /models now
    for name, module in modules.items():
        router = module.router
        assert isinstance(router, APIRouter), name
        if name == "health":
            assert router.prefix == "" and {r.path for r in router.routes} == HEALTH  # type: ignore[attr-defined]
            continue
        assert router.prefix == _expected_prefix(name), f"routes/{name}.py has prefix {router.prefix!r}"
        assert router.tags, f"routes/{name}.py has no tag for the API docs"
        for route in router.routes:
            path = route.path  # type: ignore[attr-defined]
            assert path == router.prefix or path.startswith(router.prefix + "/"), f"{path} in routes/{name}.py"


def test_every_api_route_is_served_from_the_file_named_after_its_url(tmp_path: Path) -> None:
    app = create_app(ControlPlaneSettings(data_dir=tmp_path, monitor_sites=False))
    served = [r for r in _api_routes(app.routes) if r.endpoint.__module__.startswith(routes.__name__ + ".")]
    wrong = {
        (", ".join(sorted(r.methods or ())), r.path, r.endpoint.__module__)
        for r in served
        if r.endpoint.__module__ != f"{routes.__name__}.{_owner(r.path)}"
    }
    assert not wrong
    # Every router module is included, and every operation in the schema comes from one of them or the UI.
    assert {r.endpoint.__module__.rsplit(".", 1)[1] for r in served} == set(_modules())
    in_schema = set(app.openapi()["paths"])
    assert in_schema == {r.path for r in served if r.include_in_schema}
