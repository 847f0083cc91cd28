"""The edge agent's side of the API: join, heartbeat with actual state, desired state, model files, and the
site's model fits (queued fits, their photos, progress reports and the fitted model)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from sqlmodel import Session, col, select, update
from starlette.concurrency import run_in_threadpool

from contracts.agent_api import (
    Caller,
    CallerCheck,
    DesiredState,
    FitJob,
    FitJobs,
    FitProgress,
    Heartbeat,
    NodeJoin,
    ProfileReport,
    SliceReport,
)
from control_plane import fits, metering, overflow, placement, registry, sites, uploads
from control_plane.api.deps import CurrentNode, IdPath, NowDep, SessionDep, SettingsDep, principal_of_token
from control_plane.dashboard import running_models
from control_plane.errors import Conflict, InvalidInput, InvalidUpload, NotFound, Unauthenticated
from control_plane.models import (
    FitStatus,
    JoinToken,
    ModelFit,
    ModelProfile,
    ModelVersion,
    Node,
    NodeJoined,
    NodePublic,
    Rollout,
    RolloutState,
    ScaleEvent,
    ScaleKind,
    Site,
    Slice,
    Tenant,
    as_utc,
    utcnow,
)
from control_plane.security import new_token, token_hash
from control_plane.states import NodeStatus, SliceStatus, transition

router = APIRouter(prefix="/agent/v1", tags=["edge agent"])


@router.post("/join", response_model=NodeJoined, status_code=201)
def join(body: NodeJoin, session: SessionDep) -> NodeJoined:
    """Register a node with a one-time join token; answers the node's own token (shown once).

    Checking and spending the token is one conditional UPDATE: of concurrent joins with one token,
    exactly one changes the row, and only that one makes a node.
    """
    now, hashed = utcnow(), token_hash(body.token)
    spend = (
        update(JoinToken)
        .where(col(JoinToken.token_hash) == hashed, col(JoinToken.used_at).is_(None), col(JoinToken.expires_at) > now)
        .values(used_at=now)
    )
    if session.execute(spend).rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise Unauthenticated("join token unknown, used or expired; ask an operator for a new one")
    site_id, owner = session.exec(
        select(JoinToken.site_id, JoinToken.owner_tenant_id).where(JoinToken.token_hash == hashed)
    ).one()
    if owner is not None and body.ray_address is None:  # the Ray head is sent every slice's broker password
        session.rollback()
        raise InvalidInput("a node a tenant owns joins as a worker of the site's Ray head: give --ray-address")
    node_token = new_token("node")
    node = Node(
        site_id=site_id, owner_tenant_id=owner, hostname=body.hostname, cpus=body.cpus, memory_mb=body.memory_mb,
        gpus=[gpu.model_dump() for gpu in body.gpus], ray_address=body.ray_address,
        token_hash=token_hash(node_token), last_heartbeat_at=utcnow(),
    )  # fmt: skip
    session.add(node)
    session.commit()
    session.refresh(node)
    return NodeJoined(**NodePublic.model_validate(node).model_dump(), node_token=node_token)


@router.post("/heartbeat", response_model=NodePublic)
def heartbeat(body: Heartbeat, session: SessionDep, node: CurrentNode, now: NowDep, settings: SettingsDep) -> Node:
    """Liveness, inventory and the actual state of the site's slices (from the head's agent).

    A heartbeat with ``observed_at`` is one the agent buffered while this control plane was unreachable
    (chaos scenario 6): it meters its slices' capacity up to that time and moves nothing else."""
    if body.observed_at is not None:
        return _buffered_heartbeat(body, session, node, settings.heartbeat_timeout_s)
    previous, node.last_heartbeat_at = node.last_heartbeat_at, utcnow()
    came_online = node.status in (NodeStatus.JOINING, NodeStatus.OFFLINE)
    if came_online:
        node.status = transition(node.status, NodeStatus.ONLINE, what=f"node {node.id}")
    if body.ray_resources is not None:
        node.ray_resources = sorted(body.ray_resources)
    node.cpus = body.cpus or node.cpus
    node.memory_mb = body.memory_mb or node.memory_mb
    if body.gpus is not None:
        node.gpus = [gpu.model_dump() for gpu in body.gpus]
    if body.utilization is not None:
        node.utilization = body.utilization.model_dump()
    for report in body.slices:
        _record(session, node, report)
    at, timeout = node.last_heartbeat_at, settings.heartbeat_timeout_s  # metering never fails a heartbeat
    metering.guarded(session, "capacity", lambda: metering.record_capacity(session, node, body.slices, previous,
                                                                           at, timeout))  # fmt: skip
    if body.applications is not None:
        _finish_deletions(session, node.site_id, set(body.applications))
    overflow.record_links(session, node, [(link.site_id, link.rtt_ms) for link in body.links])
    session.commit()
    if came_online:
        site = session.get(Site, node.site_id)
        assert site is not None
        placement.place_site(session, site, now)
    session.refresh(node)
    return node


def _buffered_heartbeat(body: Heartbeat, session: Session, node: Node, timeout_s: float) -> Node:
    """Meter a late heartbeat's capacity over ``[previous heartbeat, observed_at)``.

    The node's clock is not trusted: ``observed_at`` is clamped between the previous heartbeat and now, so
    replays bill no second twice (a repeated one covers nothing new; its records' keys are the ones stored)
    and never bill time that has not passed here. The node's liveness and its slices' state are left to
    the live heartbeat that follows."""
    previous, now = node.last_heartbeat_at, utcnow()
    if previous is None or body.observed_at is None:
        return node  # nothing known to have run before it
    at = min(max(as_utc(body.observed_at), as_utc(previous)), as_utc(now))
    metering.guarded(session, "capacity",
                     lambda: metering.record_capacity(session, node, body.slices, previous, at, timeout_s))  # fmt: skip
    node.last_heartbeat_at = at
    session.commit()
    session.refresh(node)
    return node


def _record(session: SessionDep, node: Node, report: SliceReport) -> None:
    item = session.get(Slice, report.slice_id)
    if item is None or item.status in (SliceStatus.DELETING, SliceStatus.DELETED):
        return
    # Its home reports its state; a site running its overflow does only while none of it runs at home.
    if item.site_id != node.site_id and (item.placement or str(node.site_id) not in item.overflow):
        return
    if report.generation != item.generation:
        return  # an older generation's report: the agent has not caught up yet
    target = SliceStatus.FAILED if report.failed else SliceStatus.RUNNING if report.healthy else SliceStatus.DEGRADED
    item.status = transition(item.status, target, what=f"slice {item.slug}")
    item.observed_generation = report.generation
    item.status_message = report.message
    before, after = running_models(item.actual.get("replicas", {})), running_models(report.replicas)
    if item.actual and before != after:
        assert item.id is not None
        session.add(ScaleEvent(
            tenant_id=item.tenant_id, slice_id=item.id, kind=ScaleKind.REACTIVE, min_before=item.min_replicas,
            min_after=item.min_replicas, max_before=item.max_replicas, max_after=item.max_replicas,
            reason=f"Serve's autoscaler: {before} -> {after} running model replicas (load within the bounds)",
            running_before=before, running_after=after,
        ))  # fmt: skip
    item.actual = {"replicas": report.replicas, "reported_at": utcnow().isoformat()}


def _finish_deletions(session: SessionDep, site_id: int, present: set[str]) -> None:
    deleting = session.exec(select(Slice).where(Slice.site_id == site_id, Slice.status == SliceStatus.DELETING)).all()
    for item in deleting:
        if item.app_name not in present:
            item.status = transition(item.status, SliceStatus.DELETED, what=f"slice {item.slug}")


def _check_hardware(node: Node, hardware: str) -> None:
    """The class must be one the node has: 'cpu xN' within its CPUs, or a GPU model of its inventory."""
    threads = hardware.removeprefix("cpu x")
    if threads != hardware and threads.isdigit() and 1 <= int(threads) <= node.cpus:
        return
    if hardware in {str(gpu.get("model")) for gpu in node.gpus}:
        return
    raise InvalidInput(f"hardware {hardware!r} is not this node's: send 'cpu xN' (N up to {node.cpus}) or the "
                       "model of one of its GPUs as its heartbeat reports them")  # fmt: skip


@router.post("/profiles", status_code=204)
def report_profile(body: ProfileReport, session: SessionDep, node: CurrentNode) -> None:
    """A profiling run's result for a model served at this node's site, or rolling out there (measured before
    it is promoted), on this node's hardware (newest wins)."""
    versions = select(ModelVersion.id).where(ModelVersion.sha256 == body.model_sha256)
    here = select(Slice.id).where(Slice.site_id == node.site_id)
    served = session.exec(here.where(col(Slice.model_version_id).in_(versions))).first()
    rolling_out = select(Rollout.id).where(Rollout.state == RolloutState.RUNNING, col(Rollout.slice_id).in_(here),
                                           col(Rollout.model_version_id).in_(versions))  # fmt: skip
    if served is None and session.exec(rolling_out).first() is None:
        raise NotFound(f"model {body.model_sha256} is not served at this node's site; profile only models it runs")
    _check_hardware(node, body.hardware)
    same = (ModelProfile.site_id == node.site_id, ModelProfile.model_sha256 == body.model_sha256,
            ModelProfile.hardware == body.hardware)  # fmt: skip
    row = session.exec(select(ModelProfile).where(*same)).first() or ModelProfile(
        site_id=node.site_id,
        model_sha256=body.model_sha256,
        hardware=body.hardware,
        frames_per_s_per_replica=0,
        cold_start_s=0,
    )
    row.frames_per_s_per_replica, row.cold_start_s = body.frames_per_s_per_replica, body.cold_start_s
    row.measured_at = utcnow()
    session.add(row)
    session.commit()


@router.post("/callers", response_model=Caller)
def check_caller(body: CallerCheck, session: SessionDep, settings: SettingsDep, node: CurrentNode) -> Caller:
    """Whose is an API token an HTTP caller gave the node's inference endpoint: its tenant and role. 404 for an
    unknown, revoked or expired token, or one of a tenant with no slice at the node's site (401 is kept for
    the node's own token, so the node can tell the two apart)."""
    try:
        principal = principal_of_token(session, settings, body.token)
    except Unauthenticated:
        raise NotFound("no such API token (unknown, revoked or expired)") from None
    tenant = session.get(Tenant, principal.tenant_id) if principal.tenant_id is not None else None
    here = select(Slice.id).where(Slice.site_id == node.site_id, Slice.tenant_id == principal.tenant_id)
    if tenant is None or session.exec(here).first() is None:
        raise NotFound("this API token's tenant runs no slice at this site")
    return Caller(tenant=tenant.slug, role=principal.role.value)


@router.get("/desired", response_model=DesiredState)
def desired(
    session: SessionDep,
    settings: SettingsDep,
    node: CurrentNode,
    if_none_match: str | None = Header(default=None),
) -> Response:
    """The site's desired slices; ``If-None-Match`` with the last ETag answers 304 when nothing changed.

    Answered as ``DesiredState.content()``: FastAPI's own serialization would mask the ingress's broker
    password (a ``SecretStr``), which the head's agent needs."""
    site = session.get(Site, node.site_id)
    assert site is not None
    state, etag = sites.desired_state(session, settings, site, node)
    headers = {"ETag": f'"{etag}"'}
    if if_none_match and if_none_match.strip('"') == etag:
        return Response(status_code=304, headers=headers)
    return JSONResponse(state.content(), headers=headers)


@router.get("/models/{sha256}", response_class=FileResponse)
def model_file(sha256: str, session: SessionDep, settings: SettingsDep, node: CurrentNode) -> FileResponse:
    """A model file by hash, for slices on the node's site and their rollouts' candidates (or public models);
    verify the hash on arrival."""
    versions = session.exec(select(ModelVersion).where(col(ModelVersion.sha256) == sha256)).all()
    used_here = session.exec(
        select(Slice).where(Slice.site_id == node.site_id, col(Slice.model_version_id).in_([v.id for v in versions]))
    ).first()
    ids = [v.id for v in versions]
    site = session.get(Site, node.site_id)
    if used_here is None and site is not None:  # another site's slice whose overflow this site runs
        used_here = next((s for s in sites.overflowing_to(session, site) if s.model_version_id in ids), None)
    candidate_here = session.exec(  # a running rollout's candidate on one of the site's slices
        select(Rollout)
        .join(Slice, col(Slice.id) == Rollout.slice_id)
        .where(
            Slice.site_id == node.site_id, Rollout.state == RolloutState.RUNNING, col(Rollout.model_version_id).in_(ids)
        )
    ).first()
    allowed = any(v.tenant_id is None for v in versions) or used_here is not None or candidate_here is not None
    path = settings.model_store / f"{sha256}.onnx"
    if not allowed or not path.exists():
        raise NotFound(f"model file {sha256} not found")
    return FileResponse(path, media_type="application/octet-stream")


def _fit_job(fit: ModelFit) -> FitJob:
    assert fit.id is not None
    return FitJob(fit_id=fit.id, status=fit.status.value, name=fit.name, version=fit.version,
                  false_reject_rate=fit.false_reject_rate, time_limit_s=fit.time_limit_s,
                  defect_photos=fit.defect_photos)  # fmt: skip


def _site_fit(session: Session, node: Node, fit_id: int) -> ModelFit:
    fit = session.get(ModelFit, fit_id)
    if fit is None or fit.site_id != node.site_id:
        raise NotFound(f"fit {fit_id} not found at this node's site")
    return fit


@router.get("/fits", response_model=FitJobs)
def fit_jobs(session: SessionDep, settings: SettingsDep, node: CurrentNode) -> FitJobs:
    """The site's queued and running fits, oldest first, for its head agent to run as Ray tasks."""
    fits.expire_overdue(session, settings.data_dir, site_id=node.site_id)
    live = (FitStatus.QUEUED, FitStatus.RUNNING)
    rows = session.exec(select(ModelFit).where(ModelFit.site_id == node.site_id, col(ModelFit.status).in_(live))
                        .order_by(col(ModelFit.id)).limit(100)).all()  # fmt: skip
    return FitJobs(fits=[_fit_job(fit) for fit in rows])


@router.get("/fits/{fit_id}/photos/{kind}", response_class=FileResponse)
def fit_photos(
    fit_id: IdPath, kind: str, session: SessionDep, settings: SettingsDep, node: CurrentNode
) -> FileResponse:
    """A live fit's photos (``good`` or ``defects``) as a zip, for the site's head agent."""
    fit = _site_fit(session, node, fit_id)
    path = fits.photos_path(settings.data_dir, fit_id, kind)
    if fit.status.finished or not path.exists():
        raise NotFound(f"fit {fit_id} has no {kind} photos to fit on (it may have finished)")
    return FileResponse(path, media_type="application/zip")


@router.post("/fits/{fit_id}/progress", response_model=FitJob)
def fit_progress(fit_id: IdPath, body: FitProgress, session: SessionDep, settings: SettingsDep,
                 node: CurrentNode) -> FitJob:  # fmt: skip
    """Claim a queued fit (running), report its stage and progress, or end it (failed, timed_out).

    A fit a user cancelled answers its status unchanged: the agent then cancels its Ray task."""
    fit = _site_fit(session, node, fit_id)
    if fit.status.finished:
        return _fit_job(fit)
    target = FitStatus(body.status)
    fit.cpu_s = max(fit.cpu_s, body.cpu_s)  # before the move: a fit that ends is metered with it
    fits.move(session, fit, target)
    if target == FitStatus.RUNNING and fit.node_id is None:
        fit.node_id = node.id
    fit.stage, fit.progress = body.stage or fit.stage, max(fit.progress, body.progress)
    fit.message = body.message or fit.message
    session.commit()
    if fit.status.finished:
        fits.forget_photos(settings.data_dir, fit_id)
    return _fit_job(fit)


def _report(fields: dict[str, str]) -> dict[str, Any]:
    try:
        report = json.loads(fields.get("report", "{}"))
    except json.JSONDecodeError as e:
        raise InvalidUpload("the fit's report is not JSON", reason="form") from e
    if not isinstance(report, dict):
        raise InvalidUpload("the fit's report must be a JSON object", reason="form")
    card = fields.get("card", "")[: fits.MAX_CARD_CHARS]
    return {**report, "card": card}


@router.post("/fits/{fit_id}/result", response_model=FitJob, status_code=201)
async def fit_result(fit_id: IdPath, request: Request, session: SessionDep, settings: SettingsDep,
                     node: CurrentNode) -> FitJob:  # fmt: skip
    """The fitted model (``file``: ONNX, ``manifest``, ``card``, ``report``): checked as ``POST /models`` checks
    an upload and registered as a private version of the fit's tenant. A refused model fails the fit."""
    fit = await run_in_threadpool(_site_fit, session, node, fit_id)
    if fit.status != FitStatus.RUNNING:
        raise Conflict(f"fit {fit_id} is {fit.status.value}; only a running fit takes a result")
    with registry.VALIDATIONS.slot(settings.validator_concurrency):
        upload = await uploads.receive(request, settings.data_dir / "uploads", max_file_bytes=settings.max_model_bytes)
        try:
            report = _report(upload.fields)
            manifest = registry.parse_manifest(upload.fields.get("manifest", ""))
            validated = await run_in_threadpool(
                registry.validate_file, upload.path, manifest, limits=registry.CheckLimits.of(settings),
                max_batch_size=32, sha256=upload.sha256,
            )  # fmt: skip
            fits.check_result(fit, validated)
            registry.store(upload.path, validated.sha256, settings.model_store, move=True)
        except InvalidUpload as e:
            await run_in_threadpool(fits.fail, session, fit, f"the fitted model was refused: {e}", settings.data_dir)
            raise
        finally:
            upload.path.unlink(missing_ok=True)
    return await run_in_threadpool(_succeed, session, settings, fit, validated, report)


def _succeed(session: Session, settings: SettingsDep, fit: ModelFit, validated: registry.ValidatedModel,
             report: dict[str, Any]) -> FitJob:  # fmt: skip
    try:
        version = fits.record_version(session, fit.tenant_id, validated)
    except Conflict as e:
        fits.fail(session, fit, str(e), settings.data_dir)
        raise
    fit.cpu_s = max(fit.cpu_s, float(report.get("cpu_s", 0) or 0))
    fits.move(session, fit, FitStatus.SUCCEEDED)
    fit.model_version_id, fit.report, fit.stage, fit.progress = version.id, report, "done", 1.0
    fit.message = f"registered as model version {version.id} ({version.name} {version.version})"
    session.commit()
    assert fit.id is not None
    fits.forget_photos(settings.data_dir, fit.id)
    return _fit_job(fit)
