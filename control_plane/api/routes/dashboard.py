"""JSON behind the dashboard's overview pages (``/dashboard``): line tiles and, for operators, sites.

Every route is scoped like the rest of the API (a tenant's users see their own
lines and slices, operators see all), so the pages show nothing a caller could
not read through the API anyway. A line's series and failed parts live under
``/lines``, a slice's capacity chart under ``/slices``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from sqlmodel import select

from control_plane import dashboard
from control_plane.api.deps import CurrentUser, PageDep, SessionDep, allowed, own_tenant
from control_plane.models import Line, Site, utcnow
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/dashboard", tags=["dashboard"])


@router.get("/lines")
def lines_overview(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[dict[str, Any]]:
    """Each of your lines: robots online, frames/s, latency p50/p99 against its budget, defect rate.

    By line id, a page at a time (X-Next-Cursor)."""
    now = utcnow()
    lines = page.of(session, own_tenant(select(Line), Line, caller), Line)
    return [dashboard.line_summary(session, line, now) for line in lines]


@router.get("/sites")
def sites_overview(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_NODES, "viewing sites and nodes")],
    page: PageDep,
) -> list[dict[str, Any]]:
    """Operators: every site with its nodes' status, utilization and the slices placed on them.

    By site id, a page at a time (X-Next-Cursor)."""
    return dashboard.operator_overview(session, utcnow(), page.of(session, select(Site), Site))
