"""Capacity alerts (``/alerts``): reserved capacity that no longer fits on its site, for operators.

The placement records one (a scale event of kind ``alert``) whenever a reserved slice's replicas cannot
all be placed on its site's eligible nodes; the operator answers by adding or undraining nodes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from sqlmodel import select

from control_plane.api.deps import PageDep, SessionDep, allowed
from control_plane.models import ScaleEvent, ScaleEventPublic, ScaleKind
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=list[ScaleEventPublic])
def list_alerts(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_NODES, "reading capacity alerts")],
    page: PageDep,
) -> list[ScaleEvent]:
    """Reserved capacity that no longer fits anywhere, newest first (operators); paged (X-Next-Cursor)."""
    query = select(ScaleEvent).where(ScaleEvent.kind == ScaleKind.ALERT)
    return page.of(session, query, ScaleEvent, newest_first=True)
