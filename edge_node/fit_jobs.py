"""Model fits on the rented compute: the site's head agent runs each queued fit as a Ray task.

Per fit, one background thread (so the agent's loop keeps reconciling slices meanwhile):

    claim     POST /agent/v1/fits/{id}/progress status=running (the answer says if it is still ours)
    photos    GET  /agent/v1/fits/{id}/photos/good (and defects), node-authenticated like model files
    fit       ``edge_node.fitting.fit_folder`` as a ``ray.remote(num_cpus=1)`` task on the cluster; it
              reports (stage, fraction) to a small progress actor the thread reads once a second
    report    progress every poll; the answer carries the fit's status, so a user's cancel reaches the
              task (``ray.cancel(force=True)``); past the fit's ``time_limit_s`` the task is cancelled the
              same way and the fit ends timed_out
    result    POST /agent/v1/fits/{id}/result: the ONNX file, manifest, model card and report figures; the
              control plane checks and registers it as a private model version of the tenant

CPU seconds reported are the seconds the task held its one CPU (what the site rented out for it), from
the claim to the end; the task's own process CPU time is in the report as ``task_cpu_s``.

A fit whose thread is gone (an agent restart) is still ``running`` on the control plane: the agent
starts it again from its photos, which the control plane keeps until the fit ends.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from pydantic import ValidationError

from contracts.agent_api import FitJob, FitJobs, FitProgress
from models.anomaly.fit import FitError

log = logging.getLogger(__name__)

POLL_S = 1.0
"""How often a fit's thread reads the task's progress and reports it (and learns of a cancel)."""
GENERIC_FAILURE = "the fit failed on the site (the agent's log says why); try again or contact your operator"


@ray.remote(num_cpus=0)
class _ProgressBoard:
    """Where the fit task writes its stage and fraction, for the agent's thread to read."""

    def __init__(self) -> None:
        self.stage, self.fraction = "starting", 0.0

    def set(self, stage: str, fraction: float) -> None:
        self.stage, self.fraction = stage, fraction

    def get(self) -> tuple[str, float]:
        return self.stage, self.fraction


def _fit_task(job: dict[str, Any], good: bytes, defects: bytes | None, board: Any) -> dict[str, Any]:
    """Runs on a Ray worker: fit from the zipped photos (given as bytes: the worker may be another node)."""
    from edge_node.fitting import fit_folder  # the worker imports the fitting stack, the agent need not

    started = time.process_time()
    with tempfile.TemporaryDirectory(prefix="lineside-fit-") as tmp:
        folder = Path(tmp)
        (folder / "good.zip").write_bytes(good)
        if defects is not None:
            (folder / "defects.zip").write_bytes(defects)
        manifest_path, fitted, photos = fit_folder(
            folder / "good.zip", folder / "out", name=job["name"], version=job["version"],
            false_reject_rate=job["false_reject_rate"], defects=folder / "defects.zip" if defects else None,
            progress=lambda stage, fraction: board.set.remote(stage, fraction),
        )  # fmt: skip
        out, name = manifest_path.parent, job["name"]
        report = asdict(fitted.report) | {"skipped_files": len(photos.skipped),
                                          "task_cpu_s": round(time.process_time() - started, 3)}  # fmt: skip
        return {"onnx": (out / f"{name}.onnx").read_bytes(), "manifest": manifest_path.read_text(),
                "card": (out / f"{name}.card.md").read_text(), "report": report}  # fmt: skip


_remote_fit = ray.remote(num_cpus=1, max_retries=0)(_fit_task)


class _Stopped(Exception):
    """The fit ended on the control plane (cancelled) or here (timed out): nothing more to send."""


@dataclass
class FitRunner:
    """Starts one thread per fit of the site that no thread of this agent runs yet (``poll``, each agent pass)."""

    client: httpx.Client
    headers: Callable[[], dict[str, str]]
    poll_s: float = POLL_S
    running: dict[int, threading.Thread] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def poll(self) -> None:
        try:
            response = self.client.get("/agent/v1/fits", headers=self.headers())
        except httpx.TransportError as e:
            log.warning("fits not polled (%s)", e)
            return
        if response.status_code != 200:
            log.warning("fits refused (%s): %s", response.status_code, response.text[:200])
            return
        try:
            jobs = FitJobs.model_validate_json(response.content).fits
        except ValidationError as e:
            log.warning("fits unreadable (%s)", str(e)[:300])
            return
        with self._lock:
            for job in jobs:
                if job.fit_id not in self.running:
                    thread = threading.Thread(target=self._run, args=(job,), name=f"fit-{job.fit_id}", daemon=True)
                    self.running[job.fit_id] = thread
                    thread.start()

    def _report(self, job: FitJob, status: str, **fields: Any) -> FitJob:
        body = FitProgress(status=status, **fields)
        response = self.client.post(f"/agent/v1/fits/{job.fit_id}/progress", json=body.model_dump(mode="json"),
                                    headers=self.headers())  # fmt: skip
        response.raise_for_status()
        answer = FitJob.model_validate_json(response.content)
        if answer.status != "running":
            raise _Stopped(answer.status)
        return answer

    def _photos(self, job: FitJob, kind: str) -> bytes:
        response = self.client.get(f"/agent/v1/fits/{job.fit_id}/photos/{kind}", headers=self.headers())
        response.raise_for_status()
        return response.content

    def _run(self, job: FitJob) -> None:
        started = time.monotonic()
        held = lambda: round(time.monotonic() - started, 3)  # noqa: E731
        try:
            self._report(job, "running", stage="downloading photos", progress=0.0)
            good = self._photos(job, "good")
            defects = self._photos(job, "defects") if job.defect_photos else None
            result = self._fit(job, started, good, defects)
            self._upload(job, result, held())
            log.info("fit %s done in %.1f s", job.fit_id, held())
        except _Stopped as e:
            log.info("fit %s stopped: %s", job.fit_id, e)
        except FitError as e:  # our own message: what to change in the photos
            self._end(job, "failed", str(e), held())
        except Exception:
            log.exception("fit %s failed", job.fit_id)
            self._end(job, "failed", GENERIC_FAILURE, held())
        finally:
            with self._lock:
                self.running.pop(job.fit_id, None)

    def _fit(self, job: FitJob, started: float, good: bytes, defects: bytes | None) -> dict[str, Any]:
        if not ray.is_initialized():  # never start a Ray of our own: the fit belongs on the site's cluster
            raise RuntimeError("the agent is not connected to the site's Ray cluster")
        board = _ProgressBoard.remote()  # type: ignore[attr-defined]
        ref = _remote_fit.remote(job.model_dump(), good, defects, board)
        try:
            deadline = started + job.time_limit_s
            # never wait past the time limit: a result that comes after it, before the next poll, is over it too
            while not ray.wait([ref], timeout=max(0.0, min(self.poll_s, deadline - time.monotonic())))[0]:
                held = time.monotonic() - started
                if held >= job.time_limit_s:
                    ray.cancel(ref, force=True)
                    self._end(job, "timed_out", f"stopped after its time limit of {job.time_limit_s} s; fit fewer "
                              "photos or give a larger time_limit_s", held)  # fmt: skip
                    raise _Stopped("timed_out")
                stage, fraction = ray.get(board.get.remote(), timeout=10)
                try:
                    self._report(job, "running", stage=stage[:100], progress=min(1.0, max(0.0, fraction)),
                                 cpu_s=round(held, 3))  # fmt: skip
                except _Stopped:
                    ray.cancel(ref, force=True)
                    raise
            try:
                result: dict[str, Any] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, FitError):
                    raise e.cause from e
                raise
            return result
        finally:
            ray.kill(board)

    def _upload(self, job: FitJob, result: dict[str, Any], held: float) -> None:
        self._report(job, "running", stage="registering", progress=1.0, cpu_s=held)
        report = json.dumps(result["report"] | {"cpu_s": held}, default=str)
        response = self.client.post(
            f"/agent/v1/fits/{job.fit_id}/result", headers=self.headers(),
            files={"file": (f"{job.name}.onnx", result["onnx"], "application/octet-stream")},
            data={"manifest": result["manifest"], "card": result["card"], "report": report},
        )  # fmt: skip
        if response.status_code != 201:  # the control plane has ended the fit as failed, with its reason
            log.warning("fit %s result refused (%s): %s", job.fit_id, response.status_code, response.text[:300])

    def _end(self, job: FitJob, status: str, message: str, held: float) -> None:
        try:
            self._report(job, status, message=message, cpu_s=round(held, 3))
        except _Stopped:
            pass
        except Exception:
            log.exception("fit %s: could not report %s", job.fit_id, status)
