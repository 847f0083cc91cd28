"""Model registry: upload an ONNX file with its manifest, list versions, download by hash."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, or_, select

from control_plane import registry
from control_plane.api.deps import CurrentUser, SessionDep, SettingsDep
from control_plane.errors import Conflict, InvalidUpload, NotFound
from control_plane.models import ModelVersion, ModelVersionPublic
from control_plane.security import CAN, Principal

router = APIRouter(prefix="/models", tags=["model registry"])


def _visible(caller: Principal):  # type: ignore[no-untyped-def]
    """Public models and the caller's tenant's own (operators: all)."""
    if caller.is_operator:
        return True
    return or_(col(ModelVersion.tenant_id).is_(None), ModelVersion.tenant_id == caller.tenant_id)


@router.post("", response_model=ModelVersionPublic, status_code=201)
async def upload_model(
    session: SessionDep,
    settings: SettingsDep,
    caller: CurrentUser,
    file: Annotated[UploadFile, File(description="The ONNX file.")],
    manifest: Annotated[str, Form(description="The model manifest (JSON), as in models/bundled.")],
    max_batch_size: Annotated[int, Form(ge=1, le=512, description="Largest batch slices will send.")] = 32,
) -> ModelVersion:
    """Validate and store a model version for your tenant (operators: a public model). Problems answer 422."""
    caller.require(*CAN["upload_models"], action="uploading models")
    data = await file.read(settings.max_model_bytes + 1)
    if len(data) > settings.max_model_bytes:
        raise InvalidUpload(f"model file is over the {settings.max_model_bytes}-byte limit (LINESIDE_MAX_MODEL_BYTES)")
    validated = registry.validate(
        data, registry.parse_manifest(manifest), max_bytes=settings.max_model_bytes, max_batch_size=max_batch_size
    )
    registry.store(data, validated.sha256, settings.model_store)
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
def list_models(session: SessionDep, caller: CurrentUser) -> list[ModelVersion]:
    return list(session.exec(select(ModelVersion).where(_visible(caller)).order_by(col(ModelVersion.id))))


def visible_model(session: SessionDep, model_id: int, caller: Principal) -> ModelVersion:
    version = session.exec(select(ModelVersion).where(ModelVersion.id == model_id, _visible(caller))).first()
    if version is None:
        raise NotFound(f"model version {model_id} not found")
    return version


@router.get("/{model_id}", response_model=ModelVersionPublic)
def get_model(model_id: int, session: SessionDep, caller: CurrentUser) -> ModelVersion:
    return visible_model(session, model_id, caller)


@router.get("/{model_id}/file", response_class=FileResponse)
def download_model(model_id: int, session: SessionDep, settings: SettingsDep, caller: CurrentUser) -> FileResponse:
    version = visible_model(session, model_id, caller)
    return FileResponse(settings.model_store / f"{version.sha256}.onnx", media_type="application/octet-stream",
                        filename=f"{version.name}-{version.version}.onnx")  # fmt: skip
