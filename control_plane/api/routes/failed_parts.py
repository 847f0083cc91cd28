"""Failed parts (``/failed-parts``): the thumbnails a line's failed-parts list points to.

A line's list of failed parts is ``GET /lines/{id}/failed-parts``; each part's JPEG is served here,
scoped like the part's line (another tenant's part answers 404, as a missing one does).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane.api.deps import CurrentUser, IdPath, SessionDep, scoped_get
from control_plane.models import FailedPart

router = APIRouter(prefix="/failed-parts", tags=["dashboard"])


@router.get("/{part_id}/thumbnail", response_class=Response)
def thumbnail(part_id: IdPath, session: SessionDep, caller: CurrentUser) -> Response:
    """A failed part's thumbnail (JPEG)."""
    part = scoped_get(session, FailedPart, part_id, caller)
    return Response(part.thumbnail, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
