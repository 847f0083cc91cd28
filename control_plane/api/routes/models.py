"""Model registry (``/models``): upload an ONNX file with its manifest, list versions, download by hash,
and read the profiles (frames/s per replica, cold start) agents measured for a version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, or_, select
from starlette.concurrency import run_in_threadpool

from control_plane import registry, uploads
from control_plane.api.deps import CurrentUser, IdPath, PageDep, SessionDep, SettingsDep, allowed
from control_plane.errors import Conflict, InvalidUpload, NotFound
from control_plane.models import ModelProfile, ModelProfilePublic, ModelVersion, ModelVersionPublic
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
    return await run_in_threadpool(_record, session, caller, validated)


def _record(session: Session, caller: Principal, validated: registry.ValidatedModel) -> ModelVersion:
    version = ModelVersion(
        tenant_id=caller.tenant_id, name=validated.manifest.name, version=validated.manifest.version,
        sha256=validated.sha256, size_bytes=validated.size_bytes, fixed_batch=validated.fixed_batch,
        manifest=registry.manifest_json(validated),
    )  # fmt: skip
    session.add(version)
    try:
        session.commit()
    except IntegrityError as e:
        raise Conflict(f"{version.name} {version.version} is already registered; bump the version") from e
    session.refresh(version)
    return version


@router.get("", response_model=list[ModelVersionPublic])
def list_models(session: SessionDep, caller: CurrentUser, page: PageDep) -> list[ModelVersion]:
    """Public models and your tenant's by id, a page at a time (X-Next-Cursor)."""
    return page.of(session, select(ModelVersion).where(_visible(caller)), ModelVersion)


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
