"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from control_plane.api.deps import SessionDep
from control_plane.errors import ControlPlaneError

router = APIRouter(tags=["health"])


class NotReady(ControlPlaneError):
    code = "not_ready"


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep) -> dict[str, str]:
    """The database answers and holds the current schema."""
    try:
        session.exec(text("SELECT 1 FROM alembic_version"))  # type: ignore[call-overload]
    except Exception as e:  # any driver error means not ready
        raise NotReady(f"database not ready: {str(e).splitlines()[0]}") from e
    return {"status": "ready"}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
