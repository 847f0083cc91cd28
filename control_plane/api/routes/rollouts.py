"""Rollouts (``/rollouts``): move a slice to a new model version through shadow and canary steps, watch
its comparison, step it forward or stop it. Plant managers and factory IT of the slice's tenant start and
steer them; another tenant's rollout answers 404 like a missing one. The logic is ``control_plane.rollouts``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from control_plane import rollouts
from control_plane.api.deps import IdFilter, IdPath, PageDep, SessionDep, UtcNowDep, allowed, own_tenant, scoped_get
from control_plane.api.routes.models import visible_model
from control_plane.errors import Conflict
from control_plane.models import Rollout, RolloutCreate, RolloutPublic, RolloutState, Slice
from control_plane.security import Permission, Principal
from control_plane.sites import LIVE_SLICES

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


@router.post("", response_model=RolloutPublic, status_code=201)
def start_rollout(
    body: RolloutCreate,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.ROLL_OUT_MODELS, "rolling out model versions")],
    now: UtcNowDep,
) -> RolloutPublic:
    """Start moving a slice to another model version: shadow, then canary shares, then full; each step is
    watched for ``window_s`` and rolls back on its own when a threshold passes."""
    item = scoped_get(session, Slice, body.slice_id, caller)
    if item.status not in LIVE_SLICES:
        raise Conflict(f"slice {item.slug} is {item.status.value}: only a live slice can roll out a model")
    candidate = visible_model(session, body.model_version_id, caller)
    rollout = rollouts.start(session, item, body, candidate, user_id=caller.user_id, now=now)
    try:
        session.commit()
    except IntegrityError as e:  # another start won the race for the slice (one running rollout per slice)
        session.rollback()
        raise Conflict(f"slice {item.slug} already has a rollout running: advance or abort it first") from e
    session.refresh(rollout)
    return rollouts.public(rollout)


@router.get("", response_model=list[RolloutPublic])
def list_rollouts(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_SLICES, "reading rollouts")],
    page: PageDep,
    slice_id: IdFilter = None,
) -> list[RolloutPublic]:
    """Your tenant's rollouts, newest first (``slice_id``: of one slice), a page at a time (X-Next-Cursor)."""
    query = own_tenant(select(Rollout), Rollout, caller)
    if slice_id is not None:
        query = query.where(Rollout.slice_id == slice_id)
    return [rollouts.public(r) for r in page.of(session, query, Rollout, newest_first=True)]


@router.get("/{rollout_id}", response_model=RolloutPublic)
def get_rollout(
    rollout_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_SLICES, "reading rollouts")],
) -> RolloutPublic:
    """The rollout's step, thresholds and the comparison of the two models in this step and those before."""
    return rollouts.public(scoped_get(session, Rollout, rollout_id, caller))


@router.post("/{rollout_id}/advance", response_model=RolloutPublic)
def advance_rollout(
    rollout_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.ROLL_OUT_MODELS, "advancing rollouts")],
    now: UtcNowDep,
) -> RolloutPublic:
    """Step forward now, whatever the window says (the last step makes the candidate the slice's model)."""
    why = f"advanced by user {caller.user_id}"
    return _steer(session, caller, rollout_id, lambda item, r: rollouts.advance(session, item, r, why, now))


@router.post("/{rollout_id}/abort", response_model=RolloutPublic)
def abort_rollout(
    rollout_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.ROLL_OUT_MODELS, "aborting rollouts")],
    now: UtcNowDep,
) -> RolloutPublic:
    """Stop the rollout: the slice goes back to its current model alone."""
    why = f"aborted by user {caller.user_id}"
    return _steer(session, caller, rollout_id,
                  lambda item, r: rollouts.stop(session, item, r, RolloutState.ABORTED, why, now))  # fmt: skip


Move = Callable[[Slice, Rollout], None]


def _steer(session: Session, caller: Principal, rollout_id: int, move: Move) -> RolloutPublic:
    """Apply ``move`` to the caller's rollout and its slice (an ended rollout refuses it: 409)."""
    rollout = scoped_get(session, Rollout, rollout_id, caller)
    move(scoped_get(session, Slice, rollout.slice_id, caller), rollout)
    session.commit()
    session.refresh(rollout)
    return rollouts.public(rollout)
