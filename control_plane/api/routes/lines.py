"""Production lines of a tenant; each is served from one site.

A line carries its robots' frame policy (frames per second and bytes per frame, per robot);
changing it gives the slices serving the line a new generation, so their ingress enforces it.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import select

from control_plane.api.deps import CurrentUser, IdPath, PageDep, SessionDep, insert, own_tenant, scoped_get
from control_plane.errors import NotFound
from control_plane.models import Line, LineCreate, LinePublic, LineUpdate, Site, Slice, utcnow
from control_plane.security import CAN

router = APIRouter(prefix="/lines", tags=["lines"])


@router.post("", response_model=LinePublic, status_code=201)
def create_line(body: LineCreate, session: SessionDep, caller: CurrentUser) -> Line:
    caller.require(*CAN["manage_lines"], action="creating lines")
    if session.get(Site, body.site_id) is None:
        raise NotFound(f"site {body.site_id} not found")
    assert caller.tenant_id is not None
    line = Line(tenant_id=caller.tenant_id, **body.model_dump())
    return insert(session, line, conflict=f"line {body.slug!r} already exists in your tenant")


@router.get("", response_model=list[LinePublic])
def list_lines(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[Line]:
    """Your tenant's lines by id (operators: all), a page at a time (X-Next-Cursor)."""
    return page.of(session, own_tenant(select(Line), Line, caller), Line)


@router.get("/{line_id}", response_model=LinePublic)
def get_line(line_id: IdPath, session: SessionDep, caller: CurrentUser) -> Line:
    return scoped_get(session, Line, line_id, caller)


@router.patch("/{line_id}", response_model=LinePublic)
def update_line(line_id: IdPath, body: LineUpdate, session: SessionDep, caller: CurrentUser) -> Line:
    caller.require(*CAN["manage_lines"], action="changing lines")
    line = scoped_get(session, Line, line_id, caller)
    for key, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(line, key, value)
    session.add(line)
    for item in session.exec(select(Slice).where(Slice.tenant_id == line.tenant_id)).all():
        if line_id in item.line_ids:  # its spec carries the line's policy: a new generation for the agent
            item.generation += 1
            item.updated_at = utcnow()
            session.add(item)
    session.commit()
    session.refresh(line)
    return line
