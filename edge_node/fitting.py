"""Fitting a tenant's anomaly model from its photos of good parts, on an edge server or a laptop.

The photos are hostile input like frames: a folder or a zip of JPEG/PNG files, each decoded by the same
``Preprocessor`` the slice's replicas use (so the model is fitted on exactly what it will see), with the
same byte and pixel limits. A zip is read in memory, member by member, with a bounded member count and
uncompressed size: nothing is extracted, so a member's path cannot point anywhere. Files that are not
photos, or that fail to decode, are skipped and counted, never fatal unless too few photos remain.

The maths lives in ``models.anomaly`` (pure numpy and ONNX); this module is the I/O around it.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_node.errors import FrameError
from edge_node.imaging import FrameLimits, Preprocessor
from edge_node.settings import get_settings
from models.anomaly.features import FeatureConfig
from models.anomaly.fit import MAX_GOOD, FitError, FittedModel, Progress, fit, manifest_for, write

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_ZIP_MEMBERS = 2000
MAX_ZIP_BYTES = 1 << 30
"""A zip of photos may hold at most this many members and uncompressed bytes (a zip bomb stops here)."""


@dataclass
class Photos:
    """Decoded photos and what was skipped, with why (shown to the user)."""

    tensors: np.ndarray
    skipped: dict[str, str]


def _encoded(source: Path, limits: FrameLimits) -> Iterator[tuple[str, bytes]]:
    if source.is_dir():
        for path in sorted(p for p in source.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()):
            if path.stat().st_size > limits.max_bytes:
                yield path.name, b""  # refused below with the limit in the message
            else:
                yield path.name, path.read_bytes()
        return
    if not zipfile.is_zipfile(source):
        raise FitError(f"{source} is neither a folder nor a zip file of photos")
    with zipfile.ZipFile(source) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise FitError(f"{source} holds {len(members)} files; a fit takes at most {MAX_ZIP_MEMBERS}")
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise FitError(f"{source} unpacks to more than {MAX_ZIP_BYTES >> 20} MiB; send fewer or smaller photos")
        for member in members:
            if not member.filename.lower().endswith(PHOTO_SUFFIXES):
                continue
            if member.file_size > limits.max_bytes:
                yield member.filename, b""
                continue
            with archive.open(member) as f:
                yield member.filename, f.read(limits.max_bytes + 1)


def load_photos(source: Path, size: int, *, limit: int = MAX_GOOD) -> Photos:
    """Photos from a folder or zip as (N, 3, size, size) float32 0..1 RGB, decoded as a slice would."""
    if not source.exists():
        raise FitError(f"{source} does not exist; give a folder or a zip of JPEG/PNG photos")
    settings = get_settings()
    limits = FrameLimits.from_settings(settings)
    template = manifest_for("fit", "0.0.0", "fit.onnx", "0" * 64, 1.0, size)
    preprocess = Preprocessor(template, limits)
    tensors: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    for name, data in _encoded(source, limits):
        if len(tensors) >= limit:
            skipped[name] = f"more than {limit} photos; the rest are not used"
            continue
        try:
            if not data:
                raise FrameError(f"larger than {limits.max_bytes} bytes")
            tensors.append(preprocess(data))
        except FrameError as e:
            skipped[name] = str(e)
    if skipped:
        log.warning("%d files skipped in %s (first: %s)", len(skipped), source, next(iter(skipped.items())))
    empty = np.zeros((0, 3, size, size), np.float32)
    return Photos(np.stack(tensors) if tensors else empty, skipped)


def fit_folder(
    good: Path,
    out_dir: Path,
    *,
    name: str,
    version: str,
    false_reject_rate: float = 0.01,
    defects: Path | None = None,
    progress: Progress | None = None,
) -> tuple[Path, FittedModel, Photos]:
    """Fit from the photos at ``good`` (and report recall on ``defects``); write the model to ``out_dir``."""
    manifest_for(name, version, f"{name}.onnx", "0" * 64, 1.0, 1)  # a bad name or version fails before the work
    size = FeatureConfig().size
    photos = load_photos(good, size)
    bad = load_photos(defects, size).tensors if defects else None
    fitted = fit(photos.tensors, false_reject_rate=false_reject_rate, defects=bad, progress=progress)
    fitted.report.extra["skipped_files"] = len(photos.skipped)
    return write(fitted, out_dir, name, version), fitted, photos
