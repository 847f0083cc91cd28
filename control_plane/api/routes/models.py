"""Model registry (``/models``): upload an ONNX file with its manifest, list versions, download by hash,
and read the profiles (frames/s per replica, cold start) agents measured for a version; fit an anomaly model
from photos of good parts on the tenant's site (``/models/fits``, declared before ``/models/{id}``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError
from sqlmodel import Session, col, or_, select
from starlette.concurrency import run_in_threadpool

from control_plane import fits, registry, uploads
from control_plane.api.deps import CurrentUser, IdPath, PageDep, SessionDep, SettingsDep, allowed
from control_plane.errors import Conflict, InvalidUpload, NotFound
from control_plane.models import (
    FitCreate,
    FitStatus,
    ModelFit,
    ModelFitPublic,
    ModelProfile,
    ModelProfilePublic,
    ModelVersion,
    ModelVersionPublic,
)
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/models", tags=["model registry"])


def _visible(caller: Principal):  # type: ignore[no-untyped-def]
    """Public models and the caller's tenant's own (operators: all)."""
    if caller.is_operator:
        return True
    return or_(col(ModelVersion.tenant_id).is_(None), ModelVersion.tenant_id == caller.tenant_id)


UPLOAD_FORM = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file", "manifest"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "The ONNX file (LINESIDE_MAX_MODEL_BYTES)."},
            "manifest": {"type": "string", "description": "The model manifest (JSON), as in models/bundled."},
            "max_batch_size": {"type": "integer", "minimum": 1, "maximum": 512, "default": 32,
                               "description": "Largest batch slices will send."},
        },
    }}},
}  # fmt: skip


def _max_batch_size(fields: dict[str, str]) -> int:
    raw = fields.get("max_batch_size", "32").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 512:
        raise InvalidUpload(f"max_batch_size must be an integer from 1 to 512, not {raw[:20]!r}", reason="form")
    return int(raw)


UPLOAD_ANSWERS: dict[int | str, dict[str, str]] = {
    422: {"description": "The upload cannot be served: `reason` says why."},
    429: {"description": "All validation slots are taken; retry after Retry-After seconds."},
}


@router.post("", response_model=ModelVersionPublic, status_code=201, openapi_extra={"requestBody": UPLOAD_FORM},
             responses=UPLOAD_ANSWERS)  # fmt: skip
async def upload_model(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.UPLOAD_MODELS, "uploading models")],
) -> ModelVersion:
    """Validate and store a model version for your tenant (operators: a public model).

    The body streams to disk (refused past LINESIDE_MAX_MODEL_BYTES) and the model is checked in a
    separate process under CPU, memory and time limits; at most LINESIDE_VALIDATOR_CONCURRENCY run at
    once (more answer 429 with Retry-After). Problems answer 422 with a stable ``reason``.
    """
    with registry.VALIDATIONS.slot(settings.validator_concurrency):
        upload = await uploads.receive(request, settings.data_dir / "uploads", max_file_bytes=settings.max_model_bytes)
        try:
            manifest = registry.parse_manifest(upload.fields.get("manifest", ""))
            validated = await run_in_threadpool(
                registry.validate_file, upload.path, manifest, limits=registry.CheckLimits.of(settings),
                max_batch_size=_max_batch_size(upload.fields), sha256=upload.sha256,
            )  # fmt: skip
            registry.store(upload.path, validated.sha256, settings.model_store, move=True)
        finally:
            upload.path.unlink(missing_ok=True)
    return await run_in_threadpool(fits.record_version, session, caller.tenant_id, validated)


@router.get("", response_model=list[ModelVersionPublic])
def list_models(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[ModelVersion]:
    """Public models and your tenant's by id, a page at a time (X-Next-Cursor)."""
    return page.of(session, select(ModelVersion).where(_visible(caller)), ModelVersion)


FIT_FORM = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["photos", "name", "version"],
        "properties": {
            "photos": {"type": "string", "format": "binary",
                       "description": "A zip of 50-500 JPEG/PNG photos of good parts; optional defect photos under "
                       "defects/ (used only to report recall). At most LINESIDE_MAX_MODEL_BYTES."},
            **{name: {k: v for k, v in field.items() if k in ("type", "description", "default", "pattern")}
               for name, field in FitCreate.model_json_schema()["properties"].items()},
        },
    }}},
}  # fmt: skip


def _fit_fields(fields: dict[str, str]) -> FitCreate:
    try:
        return FitCreate.model_validate({k: v for k, v in fields.items() if v.strip() != ""})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise InvalidUpload(f"the fit's fields are invalid: {problems}", reason="form") from e


@router.post("/fits", response_model=ModelFitPublic, status_code=202, openapi_extra={"requestBody": FIT_FORM},
             responses=UPLOAD_ANSWERS)  # fmt: skip
async def start_fit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.FIT_MODELS, "fitting models")],
) -> ModelFit:
    """Fit an anomaly model from photos of good parts, as a Ray job on your site; poll ``GET /models/fits/{id}``.

    The zip streams to disk (refused past LINESIDE_MAX_MODEL_BYTES) and is checked without extracting it.
    The fit is queued for the site's head agent; on success it registers a private model version."""
    assert caller.tenant_id is not None  # FIT_MODELS is a tenant's role
    with registry.VALIDATIONS.slot(settings.validator_concurrency):
        upload = await uploads.receive(request, settings.data_dir / "uploads", max_file_bytes=settings.max_model_bytes,
                                       file_field="photos")  # fmt: skip
        try:
            form = _fit_fields(upload.fields)
            counts = await run_in_threadpool(fits.check_zip, upload.path)
            fit = await run_in_threadpool(_queue_fit, session, caller, form, counts)
            assert fit.id is not None
            try:
                await run_in_threadpool(fits.store_photos, upload.path, fits.fit_dir(settings.data_dir, fit.id))
            except Exception:
                await run_in_threadpool(
                    fits.fail, session, fit, "the photos could not be stored; try again", settings.data_dir
                )
                raise
        finally:
            upload.path.unlink(missing_ok=True)
    return fit


def _queue_fit(session: Session, caller: Principal, form: FitCreate, counts: fits.PhotoCounts) -> ModelFit:
    assert caller.tenant_id is not None
    site_id = fits.fit_site(session, caller.tenant_id, form.site_id)
    slice_id = fits.fit_slice(session, caller.tenant_id, site_id, form.slice_id)
    taken = select(ModelVersion.id).where(ModelVersion.tenant_id == caller.tenant_id, ModelVersion.name == form.name,
                                          ModelVersion.version == form.version)  # fmt: skip
    if session.exec(taken).first() is not None:
        raise Conflict(f"{form.name} {form.version} is already registered; fit a new version")
    fit = ModelFit(tenant_id=caller.tenant_id, site_id=site_id, slice_id=slice_id, name=form.name, version=form.version,
                   false_reject_rate=form.false_reject_rate, time_limit_s=form.time_limit_s,
                   photos=counts.good, defect_photos=counts.defects, created_by=caller.user_id)  # fmt: skip
    session.add(fit)
    session.commit()
    session.refresh(fit)
    return fit


def _own_fit(session: Session, fit_id: int, caller: Principal) -> ModelFit:
    fit = session.get(ModelFit, fit_id)
    if fit is None or fit.tenant_id != caller.tenant_id:
        raise NotFound(f"fit {fit_id} not found")
    return fit


@router.get("/fits", response_model=list[ModelFitPublic])
def list_fits(
    session: SessionDep, settings: SettingsDep, page: PageDep,
    caller: Annotated[Principal, allowed(Permission.FIT_MODELS, "reading fits")],
) -> list[ModelFit]:  # fmt: skip
    """Your tenant's fits by id, a page at a time (X-Next-Cursor)."""
    assert caller.tenant_id is not None
    fits.expire_overdue(session, settings.data_dir, tenant_id=caller.tenant_id)
    return page.of(session, select(ModelFit).where(ModelFit.tenant_id == caller.tenant_id), ModelFit)


@router.get("/fits/{fit_id}", response_model=ModelFitPublic)
def get_fit(
    fit_id: IdPath, session: SessionDep, settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.FIT_MODELS, "reading fits")],
) -> ModelFit:  # fmt: skip
    """A fit's status, stage, progress, report figures and, once succeeded, its model version."""
    assert caller.tenant_id is not None
    fits.expire_overdue(session, settings.data_dir, tenant_id=caller.tenant_id)
    return _own_fit(session, fit_id, caller)


@router.post("/fits/{fit_id}/cancel", response_model=ModelFitPublic)
def cancel_fit(
    fit_id: IdPath, session: SessionDep, settings: SettingsDep,
    caller: Annotated[Principal, allowed(Permission.FIT_MODELS, "cancelling fits")],
) -> ModelFit:  # fmt: skip
    """Stop a queued or running fit (the site's agent cancels its Ray task); a finished fit answers 409."""
    fit = _own_fit(session, fit_id, caller)
    if fit.status.finished:
        raise Conflict(f"fit {fit_id} is {fit.status.value} already; only a queued or running fit can be cancelled")
    fits.move(session, fit, FitStatus.CANCELLED)
    fit.message = "cancelled by a user"
    session.commit()
    session.refresh(fit)
    fits.forget_photos(settings.data_dir, fit_id)
    return fit


def visible_model(session: SessionDep, model_id: int, caller: Principal) -> ModelVersion:
    version = session.exec(select(ModelVersion).where(ModelVersion.id == model_id, _visible(caller))).first()
    if version is None:
        raise NotFound(f"model version {model_id} not found")
    return version


@router.get("/{model_id}", response_model=ModelVersionPublic)
def get_model(model_id: IdPath, session: SessionDep, caller: CurrentUser) -> ModelVersion:
    return visible_model(session, model_id, caller)


@router.get("/{model_id}/file", response_class=FileResponse)
def download_model(model_id: IdPath, session: SessionDep, settings: SettingsDep, caller: CurrentUser) -> FileResponse:
    version = visible_model(session, model_id, caller)
    return FileResponse(settings.model_store / f"{version.sha256}.onnx", media_type="application/octet-stream",
                        filename=f"{version.name}-{version.version}.onnx")  # fmt: skip


@router.get("/{model_id}/profiles", response_model=list[ModelProfilePublic])
def list_profiles(model_id: IdPath, session: SessionDep, caller: CurrentUser, page: PageDep) -> list[ModelProfile]:
    """Measured frames/s per replica and cold-start time of a model version, per hardware; paged (X-Next-Cursor)."""
    model = visible_model(session, model_id, caller)
    return page.of(session, select(ModelProfile).where(ModelProfile.model_sha256 == model.sha256), ModelProfile)
