"""Model fits on the control plane: check and store a fit's photos, move its status, register its result.

A fit's photos arrive as one zip (``POST /models/fits``): good photos anywhere in it, and optionally
defect photos under a top-level ``defects/`` folder (used only to report recall). The zip is checked
here without extracting anything (member count, uncompressed size, photo count) and split into
``<data_dir>/fits/<id>/good.zip`` and ``defects.zip``, which the site's head agent downloads. Decoding
the photos is the edge's job (``edge_node.fitting``), on the rented compute.

A fit runs in the rented capacity of one of its tenant's slices on the site (``fit_slice``) and is billed
with it: when it ends, the CPU seconds it held become capacity usage of that slice (``metering.record_fit``),
rated under the slice's lease like its replicas' seconds.

Statuses move only along ``MOVES``; a fit's result is registered through the same out-of-process check
as ``POST /models`` and becomes a private model version of the fit's tenant.
"""

from __future__ import annotations

import math
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from control_plane import catalogue, metering, registry
from control_plane.db import private_dir
from control_plane.errors import Conflict, IllegalTransition, InvalidInput, InvalidUpload
from control_plane.models import FitStatus, Line, ModelFit, ModelVersion, Slice, as_utc, utcnow
from control_plane.states import SliceStatus
from models.anomaly.fit import MAX_GOOD, MIN_GOOD

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFECTS_FOLDER = "defects/"
MAX_ZIP_MEMBERS = 2000
MAX_ZIP_BYTES = 1 << 30
MAX_DEFECT_PHOTOS = 500
MAX_CARD_CHARS = 64 * 1024

MOVES: dict[FitStatus, frozenset[FitStatus]] = {
    FitStatus.QUEUED: frozenset({FitStatus.RUNNING, FitStatus.CANCELLED, FitStatus.FAILED}),
    FitStatus.RUNNING: frozenset({FitStatus.SUCCEEDED, FitStatus.FAILED, FitStatus.CANCELLED, FitStatus.TIMED_OUT}),
}
"""Legal moves; a finished fit (succeeded, failed, cancelled, timed_out) moves no more."""


def move(session: Session, fit: ModelFit, target: FitStatus) -> None:
    """Set ``fit.status`` to ``target`` if the move is legal (staying put is), stamping its times; else 409.
    A fit that ends after it ran is metered (``meter``), in the caller's transaction."""
    if fit.status == target:
        return
    allowed = MOVES.get(fit.status, frozenset())
    if target not in allowed:
        options = ", ".join(sorted(s.value for s in allowed)) or "none (it has finished)"
        raise IllegalTransition(f"fit {fit.id} is {fit.status.value}; it cannot become {target.value} "
                                f"(allowed: {options})")  # fmt: skip
    fit.status = target
    if target == FitStatus.RUNNING:
        fit.started_at = utcnow()
    if target.finished:
        fit.finished_at = utcnow()
        meter(session, fit)


def meter(session: Session, fit: ModelFit) -> int:
    """The capacity a fit that ran held, as usage of its slice; returns the records stored (none twice)."""
    if fit.slice_id is None or fit.started_at is None or fit.id is None:
        return 0
    item = session.get(Slice, fit.slice_id)
    if item is None:
        return 0
    started = as_utc(fit.started_at)
    wall_s = (as_utc(fit.finished_at or utcnow()) - started).total_seconds()
    # The agent's figure, bounded by the time the fit ran (its task holds one CPU): a report is hostile input.
    held_s = min(fit.cpu_s, wall_s + HELD_SLACK_S) if math.isfinite(fit.cpu_s) and fit.cpu_s > 0 else 0.0
    return metering.record_fit(session, item, fit.id, fit.node_id, started, held_s)


HELD_SLACK_S = 5.0
"""CPU seconds a fit may report beyond the time between its claim and its end (the agent's clock and ours)."""


GONE = (SliceStatus.DELETING, SliceStatus.DELETED)
"""A slice on its way out rents nothing a fit could run in."""


def fit_slice(session: Session, tenant_id: int, site_id: int, slice_id: int | None) -> int:
    """The slice a fit runs in and is billed with: the one asked for (the tenant's, on the fit's site), or
    the tenant's slice there with a lease in force, else its latest there; 409 if it has none there."""
    if slice_id is not None:
        item = session.get(Slice, slice_id)
        if item is None or item.tenant_id != tenant_id or item.status in GONE:
            raise InvalidInput(f"slice {slice_id} is not one of your slices; give one of yours or leave it out")
        if item.site_id != site_id:
            raise InvalidInput(f"slice {slice_id} runs on site {item.site_id}, not on the fit's site {site_id}; "
                               "give a slice of that site or leave it out")  # fmt: skip
        return slice_id
    ours = select(Slice.id).where(Slice.tenant_id == tenant_id, Slice.site_id == site_id,
                                  col(Slice.status).not_in(GONE)).order_by(col(Slice.id).desc())  # fmt: skip
    live = [item for item in session.exec(ours).all() if item is not None]  # latest first
    if not live:
        raise Conflict(f"a fit runs in your rented capacity on site {site_id} and is billed with it: create a "
                       "slice there first (POST /slices)")  # fmt: skip
    return next((item for item in live if catalogue.current_lease(session, item) is not None), live[0])


@dataclass(frozen=True)
class PhotoCounts:
    good: int
    defects: int


def _is_photo(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.lower().endswith(PHOTO_SUFFIXES) and not base.startswith(".") and "__MACOSX/" not in name


def check_zip(path: Path) -> PhotoCounts:
    """Count the good and defect photos of an uploaded zip, refusing what a fit cannot use (422)."""
    if not zipfile.is_zipfile(path):
        raise InvalidUpload("'photos' is not a zip file; send a zip of JPEG/PNG photos of good parts", reason="zip")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InvalidUpload("'photos' is not a readable zip file; zip the photos again", reason="zip") from e
    if len(members) > MAX_ZIP_MEMBERS:
        raise InvalidUpload(f"the zip holds {len(members)} files; send at most {MAX_ZIP_MEMBERS}", reason="too_many")
    if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
        raise InvalidUpload(f"the zip unpacks to more than {MAX_ZIP_BYTES >> 20} MiB; send fewer or smaller photos",
                            reason="too_large")  # fmt: skip
    photos = [m.filename for m in members if _is_photo(m.filename)]
    defects = sum(1 for name in photos if name.startswith(DEFECTS_FOLDER))
    good = len(photos) - defects
    if not MIN_GOOD <= good <= MAX_GOOD:
        raise InvalidUpload(f"the zip holds {good} photos of good parts; a fit takes {MIN_GOOD} to {MAX_GOOD} "
                            "(JPEG or PNG; defect photos go under defects/)", reason="photo_count")  # fmt: skip
    if defects > MAX_DEFECT_PHOTOS:
        raise InvalidUpload(f"the zip holds {defects} defect photos; send at most {MAX_DEFECT_PHOTOS}",
                            reason="too_many")  # fmt: skip
    return PhotoCounts(good, defects)


def fit_dir(data_dir: Path, fit_id: int) -> Path:
    return data_dir / "fits" / str(fit_id)


def store_photos(source: Path, folder: Path) -> None:
    """Split the checked zip into ``good.zip`` and ``defects.zip`` (if any) in ``folder`` (0700), member by member."""
    private_dir(folder.parent)
    private_dir(folder)
    with zipfile.ZipFile(source) as archive:
        names = [m.filename for m in archive.infolist() if not m.is_dir() and _is_photo(m.filename)]
        for kind, chosen in (("good", [n for n in names if not n.startswith(DEFECTS_FOLDER)]),
                             ("defects", [n for n in names if n.startswith(DEFECTS_FOLDER)])):  # fmt: skip
            if not chosen:
                continue
            with zipfile.ZipFile(folder / f"{kind}.zip", "w", zipfile.ZIP_STORED) as out:
                for i, name in enumerate(chosen):  # member names are ours: nothing in the upload names a path
                    with archive.open(name) as f, out.open(f"{i:04d}{Path(name).suffix.lower()}", "w") as g:
                        shutil.copyfileobj(f, g, 1 << 20)
    for path in folder.iterdir():
        path.chmod(0o600)


def photos_path(data_dir: Path, fit_id: int, kind: str) -> Path:
    if kind not in ("good", "defects"):
        raise InvalidInput(f"photo set {kind[:20]!r} does not exist; ask for 'good' or 'defects'")
    return fit_dir(data_dir, fit_id) / f"{kind}.zip"


def fit_site(session: Session, tenant_id: int, site_id: int | None) -> int:
    """The site a fit runs on: the one asked for, which must serve one of the tenant's lines, or the first line's."""
    sites = list(dict.fromkeys(session.exec(select(Line.site_id).where(Line.tenant_id == tenant_id)
                                            .order_by(col(Line.id))).all()))  # fmt: skip
    if not sites:
        raise InvalidInput("your tenant has no line yet: a fit runs on the site of one of your lines; create a line")
    if site_id is None:
        return sites[0]
    if site_id not in sites:
        raise InvalidInput(f"site {site_id} serves none of your lines; give one of {sites} or leave it out")
    return site_id


def record_version(session: Session, tenant_id: int | None, validated: registry.ValidatedModel) -> ModelVersion:
    """Add a checked and stored model as a version of ``tenant_id`` (None: public); 409 if it exists."""
    version = ModelVersion(
        tenant_id=tenant_id, name=validated.manifest.name, version=validated.manifest.version,
        sha256=validated.sha256, size_bytes=validated.size_bytes, fixed_batch=validated.fixed_batch,
        manifest=registry.manifest_json(validated),
    )  # fmt: skip
    session.add(version)
    try:
        session.commit()
    except IntegrityError as e:
        session.rollback()
        raise Conflict(f"{version.name} {version.version} is already registered; bump the version") from e
    session.refresh(version)
    return version


def check_result(fit: ModelFit, validated: registry.ValidatedModel) -> None:
    """The result must be the model the fit asked for: an anomaly model with the fit's name and version."""
    manifest = validated.manifest
    if manifest.output.kind != "anomaly" or manifest.name != fit.name or manifest.version != fit.version:
        raise InvalidUpload(f"fit {fit.id} is for anomaly model {fit.name} {fit.version}, not {manifest.output.kind} "
                            f"{manifest.name} {manifest.version}", reason="manifest")  # fmt: skip


def forget_photos(data_dir: Path, fit_id: int) -> None:
    """A finished fit's photos are deleted: the tenant's images are kept no longer than needed."""
    shutil.rmtree(fit_dir(data_dir, fit_id), ignore_errors=True)


def fail(session: Session, fit: ModelFit, message: str, data_dir: Path) -> None:
    """End ``fit`` as failed with ``message`` (what the user should do) and delete its photos."""
    move(session, fit, FitStatus.FAILED)
    fit.message = message[:2000]
    session.commit()
    assert fit.id is not None
    forget_photos(data_dir, fit.id)


OVERDUE_GRACE_S = 120
"""How long past its time limit a running fit may go unreported before the control plane ends it itself."""


def expire_overdue(session: Session, data_dir: Path, **where: int) -> None:
    """End running fits (of ``where``: ``tenant_id=`` or ``site_id=``) past their time limit plus a grace as
    timed_out: the agent stops a fit at its limit, so one still running then had its agent die mid-fit."""
    query = select(ModelFit).where(ModelFit.status == FitStatus.RUNNING, col(ModelFit.started_at).is_not(None))
    for column, value in where.items():
        query = query.where(getattr(ModelFit, column) == value)
    now = utcnow()
    for fit in session.exec(query).all():
        started = as_utc(fit.started_at or now)
        if fit.id is not None and (now - started).total_seconds() > fit.time_limit_s + OVERDUE_GRACE_S:
            move(session, fit, FitStatus.TIMED_OUT)
            fit.message = (f"the site stopped reporting this fit past its time limit of {fit.time_limit_s} s; "
                           "start it again")  # fmt: skip
            session.commit()
            forget_photos(data_dir, fit.id)
