"""Model registry: validate an ONNX file against its manifest out of process, store it by sha256.

The parent's checks are the cheap ones on what it already knows: the manifest's schema and that its
sha256 matches the file's (hashed while the upload streamed in). Everything that parses or runs the
model happens in ``control_plane.model_check``, a child process with an empty working directory, no
secrets in its environment, CPU and memory limits and a wall-clock timeout (its docstring says why).
Any failure is an ``InvalidUpload`` (HTTP 422) with our own message and a stable ``reason``; the
libraries' text is logged here, never returned.

``VALIDATIONS`` bounds how many children run at once in this process; one more upload answers 429
with Retry-After (``ValidatorBusy``) rather than queueing hundreds of megabytes on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import control_plane
from contracts.manifest import ModelManifest
from control_plane.db import private_dir
from control_plane.errors import InvalidUpload, ValidatorBusy
from control_plane.settings import ControlPlaneSettings

log = logging.getLogger(__name__)

RETRY_AFTER_S = 10
"""What a refused upload is told to wait: validations usually take seconds."""


@dataclass(frozen=True)
class ValidatedModel:
    manifest: ModelManifest
    sha256: str
    size_bytes: int
    fixed_batch: int | None  # None: dynamic batch axis


@dataclass(frozen=True)
class CheckLimits:
    """What one validation child may use (see ``ControlPlaneSettings.validator_*``)."""

    timeout_s: float
    cpu_s: int
    memory_bytes: int

    @classmethod
    def of(cls, settings: ControlPlaneSettings) -> CheckLimits:
        return cls(settings.validator_timeout_s, settings.validator_cpu_s, settings.validator_memory_bytes)


class ValidationSlots:
    """A non-blocking counting semaphore, safe across threads and event loops (the limit is read per call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0

    @contextmanager
    def slot(self, limit: int) -> Iterator[None]:
        with self._lock:
            if self.running >= limit:
                raise ValidatorBusy(f"{limit} model uploads are being validated (LINESIDE_VALIDATOR_CONCURRENCY); "
                                    f"retry in {RETRY_AFTER_S} s", RETRY_AFTER_S)  # fmt: skip
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1


VALIDATIONS = ValidationSlots()


def parse_manifest(raw: bytes | str) -> ModelManifest:
    try:
        return ModelManifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidUpload(f"manifest is not JSON: {e}", reason="manifest") from e
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise InvalidUpload(f"manifest is invalid: {problems}", reason="manifest") from e


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def validate_file(path: Path, manifest: ModelManifest, *, limits: CheckLimits, max_batch_size: int = 1,
                  sha256: str | None = None) -> ValidatedModel:  # fmt: skip
    """Check the file at ``path`` against ``manifest`` (blocking: run it in a thread from async code).

    ``sha256`` is the file's, when the caller hashed it while receiving it; else it is computed here.
    """
    digest = sha256 or sha256_of(path)
    if digest != manifest.sha256:
        raise InvalidUpload(f"manifest sha256 {manifest.sha256} does not match the file's {digest}",
                            reason="sha256_mismatch")  # fmt: skip
    fixed_batch = check_in_subprocess(path, manifest, limits=limits, max_batch_size=max_batch_size)
    return ValidatedModel(manifest, digest, path.stat().st_size, fixed_batch)


def _child_env(cwd: str) -> dict[str, str]:
    """A fresh environment: the server's (LINESIDE_SECRET_KEY, database URL) is not inherited."""
    root = str(Path(control_plane.__file__).resolve().parent.parent)
    single = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": root, "HOME": cwd, "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", **single}  # fmt: skip


def check_in_subprocess(path: Path, manifest: ModelManifest, *, limits: CheckLimits, max_batch_size: int) -> int | None:
    """Run ``control_plane.model_check`` on ``path``; its fixed batch size, or ``InvalidUpload``."""
    request = {"model": str(path.resolve()), "manifest": manifest.model_dump(mode="json"),
               "max_batch_size": max_batch_size, "cpu_s": limits.cpu_s,
               "memory_bytes": limits.memory_bytes}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lineside-model-check-") as cwd:
        try:
            done = subprocess.run([sys.executable, "-P", "-m", "control_plane.model_check"],
                                  input=json.dumps(request).encode(), capture_output=True, cwd=cwd,
                                  env=_child_env(cwd), timeout=limits.timeout_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as e:
            log.warning("model check of %s killed after %.0f s", path.name, limits.timeout_s)
            raise _timeout(limits) from e
    if done.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        log.warning("model check of %s ended by signal %d (CPU limit)", path.name, -done.returncode)
        raise _timeout(limits)
    answer = _answer_of(done)
    if answer.get("ok") is True:
        return answer.get("fixed_batch")
    reason, message = str(answer.get("reason", "runtime_failed")), str(answer.get("message", ""))
    log.warning("model upload refused (%s): %s; library said: %s", reason, message, answer.get("detail", ""))
    raise InvalidUpload(message or "the model could not be validated", reason=reason)


def _timeout(limits: CheckLimits) -> InvalidUpload:
    return InvalidUpload(f"validating the model took more than {limits.cpu_s} CPU seconds or "
                         f"{limits.timeout_s:.0f} s (LINESIDE_VALIDATOR_CPU_S, LINESIDE_VALIDATOR_TIMEOUT_S); a "
                         "model must answer one batch quickly (look for Loop or Scan nodes with huge trip counts)",
                         reason="timeout")  # fmt: skip


def _answer_of(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The child's JSON answer; a child that crashed without one is mapped to one, its stderr logged."""
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        answer: dict[str, Any] = json.loads(lines[-1])
        return answer
    except (IndexError, json.JSONDecodeError):
        stderr = done.stderr.decode(errors="replace")[-2000:]
        log.warning("model check exited with %d and no answer; stderr: %s", done.returncode, stderr)
        return {"ok": False, "reason": "runtime_failed",
                "message": "the model crashed the validator while loading or running; check that it runs with "
                "onnxruntime (CPU) locally"}  # fmt: skip


def store(source: Path, sha256: str, folder: Path, *, move: bool) -> Path:
    """Put the file at ``folder/<sha256>.onnx``, 0600 in a 0700 folder (atomic; the same bytes are stored once).

    ``move``: rename ``source`` (an upload's temporary file in the data dir); else copy it (the bundled model).
    """
    private_dir(folder)
    target = folder / f"{sha256}.onnx"
    if target.exists():
        target.chmod(0o600)  # files stored before permissions were enforced
        return target
    if move:
        source.chmod(0o600)
        source.replace(target)
        return target
    fd, partial = tempfile.mkstemp(dir=folder, prefix=f".{sha256[:12]}-", suffix=".part")  # 0600
    with os.fdopen(fd, "wb") as out, source.open("rb") as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)
    Path(partial).replace(target)
    return target


def manifest_json(validated: ValidatedModel) -> dict[str, Any]:
    """The manifest as stored and sent to agents; fields left at their defaults are left out, so that a
    classifier's manifest reads as it did before the other model kinds existed (and older agents accept it)."""
    return validated.manifest.model_dump(mode="json", exclude_defaults=True)
