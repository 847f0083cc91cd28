"""A slice as one Ray Serve application: an MQTT ingress deployment and a model deployment.

    Ingress (N replicas, shared MQTT subscription)  --handle, micro-batches-->  Model (@serve.batch, autoscaled)

The model deployment batches calls from every ingress replica (``@serve.batch``
counting frames, not calls), runs ONNX Runtime off the event loop, and
scales between the slice's replica bounds. Each ingress replica holds one
persistent MQTT session named after its replica rank, so a restarted replica
resumes the session, and the frames, of the one it replaces.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from contracts.manifest import load_manifest
from contracts.slice_spec import INGRESS_SLOTS, REVEAL_SECRETS, ReplicaSpec, SliceSpec
from edge_node.autoscaling import POLICY as LINE_POLICY
from edge_node.errors import SliceDeployFailed
from edge_node.ingress import FrameIngress
from edge_node.runtime import InspectionModel, as_reply
from edge_node.settings import EdgeSettings
from models import BUNDLED_MANIFEST

log = logging.getLogger(__name__)

HEAD_RESOURCE = "node:__internal_head__"
"""Ray's own resource of the head node, where the site's agent (and so the ingress's password) lives."""

DISCONNECTED_GRACE_S = 30.0
"""An ingress replica that cannot reach its broker for this long reports unhealthy and is restarted."""


def process_info() -> dict[str, Any]:
    """PID and resident memory of the calling replica's process."""
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return {"pid": os.getpid(), "rss_mb": round(rss_kb / 1024, 1)}


def _frames_in(calls: list[list[bytes]]) -> int:
    return sum(len(call) for call in calls)


def manifest_of(spec: SliceSpec) -> Path:
    """The slice's model manifest on this node; a spec that names none serves the bundled model."""
    return spec.manifest or BUNDLED_MANIFEST


@serve.deployment
class ModelServer:
    """Judges batches of encoded frames with the slice's ONNX model."""

    def __init__(self, spec_json: str) -> None:
        spec = SliceSpec.model_validate_json(spec_json)
        threads = spec.resources.ort_threads or max(int(spec.resources.cpus_per_replica), 1)
        settings = EdgeSettings(
            intra_op_threads=threads, inter_op_threads=1, providers=spec.resources.providers, ort_spinning=False
        )
        self.model = InspectionModel(manifest_of(spec), settings, warmup_batch=spec.batch.max_batch_size)
        self.delay_s = spec.inject_delay_ms / 1000
        self.inspect.set_max_batch_size(spec.batch.max_batch_size)  # type: ignore[attr-defined]
        self.inspect.set_batch_wait_timeout_s(spec.batch.batch_wait_ms / 1000)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_frames_in)
    async def inspect(self, calls: list[list[bytes]]) -> list[list[dict[str, Any]]]:
        frames = [frame for call in calls for frame in call]
        started = time.perf_counter()
        outcomes = await asyncio.get_running_loop().run_in_executor(None, self._judge, frames)
        log.debug(
            "judged %d frames from %d calls in %.1f ms", len(frames), len(calls), (time.perf_counter() - started) * 1e3
        )
        replies, offset = [], 0
        for call in calls:
            replies.append(outcomes[offset : offset + len(call)])
            offset += len(call)
        return replies

    def _judge(self, frames: list[bytes]) -> list[dict[str, Any]]:
        if self.delay_s:
            time.sleep(self.delay_s)
        return [as_reply(o) for o in self.model.inspect(frames)]

    def info(self) -> dict[str, Any]:
        """Model and execution providers of this replica."""
        manifest = self.model.manifest
        return {
            "model": f"{manifest.name}:{manifest.version}",
            "providers": self.model.providers,
            "ray_node_id": ray.get_runtime_context().get_node_id(),
            **process_info(),
        }


@serve.deployment
class Ingress:
    """Consumes the slice's lines from MQTT and publishes verdicts."""

    def __init__(self, spec_json: str, *models: DeploymentHandle) -> None:
        spec = SliceSpec.model_validate_json(spec_json)
        context = serve.get_replica_context()
        rank = context.rank.rank
        # With the control plane's per-connection logins the client id is the broker username, pinned there.
        logins = spec.broker.connection_logins
        index = rank * INGRESS_SLOTS + spec.ingress_slot  # see SliceSpec.ingress_slot
        client_id = f"{spec.broker.username}.{index}" if logins else f"lineside-{spec.name}-ingress-{index}"
        # One model deployment per node the scheduler chose (or one unpinned); calls rotate over
        # them in proportion to the replicas each holds.
        weights = [count for _, count in _pins(spec)] or [1]
        self._models = itertools.cycle(_interleave(list(zip(models, weights, strict=True))))
        self._models_lock = threading.Lock()
        self._tags = {"slice": spec.name, "tenant": spec.tenant}
        self._answers = metrics.Counter(
            "lineside_answers", description="Answers the ingress published, by outcome.",
            tag_keys=("slice", "tenant", "outcome"),  # type: ignore[arg-type]  # Ray annotates Tuple[str]
        )  # fmt: skip
        self._latency = metrics.Histogram(
            "lineside_slice_latency_ms", description="Frame arrival at the ingress to its answer, in ms.",
            boundaries=[5, 10, 20, 50, 100, 200, 500, 1000, 5000],
            tag_keys=("slice", "tenant"),  # type: ignore[arg-type]
        )  # fmt: skip
        manifest = load_manifest(manifest_of(spec))
        self.ingress = FrameIngress(
            spec,
            self._infer,
            client_id=client_id,
            node=socket.gethostname(),
            model=f"{manifest.name}:{manifest.version}",
            observe=self._observe,
        )
        self.ingress.start()
        self._last_connected = time.monotonic()
        log.info("ingress replica %s started for slice %s", client_id, spec.name)

    def _observe(self, outcome: str, total_ms: float) -> None:
        self._answers.inc(tags={**self._tags, "outcome": outcome})
        self._latency.observe(total_ms, tags=self._tags)

    def _infer(self, frames: list[bytes]) -> list[dict[str, Any]]:
        with self._models_lock:
            model = next(self._models)
        return list(model.inspect.remote(frames).result())

    def stats(self) -> dict[str, int]:
        """Counters of this replica: frames received, acknowledged, verdicts and errors by code."""
        return self.ingress.counts.snapshot()

    def process(self) -> dict[str, Any]:
        """PID and resident memory of this replica."""
        return process_info()

    def check_health(self) -> None:
        if self.ingress.connected.is_set():
            self._last_connected = time.monotonic()
        elif time.monotonic() - self._last_connected > DISCONNECTED_GRACE_S:
            raise RuntimeError(f"no broker connection for {DISCONNECTED_GRACE_S:.0f}s")

    def __del__(self) -> None:
        if hasattr(self, "ingress"):  # the constructor may have failed before it existed
            self.ingress.stop()


def _pins(spec: SliceSpec) -> list[tuple[str, int]]:
    """(node resource, replicas) in the one order both the model deployments and the ingress use."""
    return sorted((spec.placement or {}).items())


def _interleave(weighted: list[tuple[Any, int]]) -> list[Any]:
    """Spread items by weight: [(a, 2), (b, 1)] -> a, b, a (smooth weighted round robin)."""
    total = sum(w for _, w in weighted)
    current = [0] * len(weighted)
    order = []
    for _ in range(total):
        for i, (_, w) in enumerate(weighted):
            current[i] += w
        best = max(range(len(weighted)), key=lambda i: current[i])
        current[best] -= total
        order.append(weighted[best][0])
    return order


def _split_floor(floor: int, counts: list[int]) -> list[int]:
    """The slice's replica floor shared over nodes, never above what a node holds."""
    shares = []
    for count in counts:
        share = min(count, floor)
        shares.append(share)
        floor -= share
    return shares


def _model_deployment(spec: SliceSpec, spec_json: str, name: str, low: int, high: int, pin: str | None) -> Any:
    resources = spec.resources
    actor_options: dict[str, Any] = {"num_cpus": resources.cpus_per_replica, "num_gpus": resources.gpus_per_replica}
    if pin:
        actor_options["resources"] = {pin: 0.001}
    return ModelServer.options(  # type: ignore[attr-defined]
        name=name,
        autoscaling_config={
            "min_replicas": low,
            "initial_replicas": max(low, 1),
            "max_replicas": high,
            "target_ongoing_requests": spec.replicas.target_ongoing_requests,
            "upscale_delay_s": spec.replicas.upscale_delay_s,
            "downscale_delay_s": spec.replicas.downscale_delay_s,
            "metrics_interval_s": 1.0,
            "policy": {
                "policy_function": LINE_POLICY,
                "policy_kwargs": {"downscale_utilization": spec.replicas.downscale_utilization},
            },
            "look_back_period_s": 5.0,
        },
        max_ongoing_requests=max(spec.batch.max_batch_size, 16),
        ray_actor_options=actor_options,
    ).bind(spec_json)


def build_app(spec: SliceSpec) -> Any:
    """The Serve application (bound deployment graph) for ``spec``.

    Without a placement there is one ``model`` deployment that Ray places; with one there is
    a ``model-lineside_node_<id>`` deployment per chosen node, pinned by its custom resource.
    """
    # Model replicas (on any node) never see the broker password, nor what only the ingress and Serve's
    # autoscaling use: a placement change or a new ingress slot must not restart the replicas that stay.
    model_only = {"placement": None, "ingress_slot": 0, "replicas": ReplicaSpec()}
    spec_json = spec.model_copy(update=model_only).model_dump_json()
    if pins := _pins(spec):
        floors = _split_floor(spec.replicas.min_replicas, [count for _, count in pins])
        models = [_model_deployment(spec, spec_json, f"model-{pin}", low, count, pin)
                  for (pin, count), low in zip(pins, floors, strict=True)]  # fmt: skip
    else:
        models = [_model_deployment(spec, spec_json, "model", spec.replicas.min_replicas, spec.replicas.max_replicas,
                                    None)]  # fmt: skip
    # The ingress holds the broker password, which the control plane gives only to the head's agent:
    # it runs on the Ray head, never on a worker node.
    ingress_options = {"num_cpus": spec.resources.ingress_cpus, "resources": {HEAD_RESOURCE: 0.001}}
    return Ingress.options(  # type: ignore[attr-defined]
        name="ingress",
        num_replicas=spec.ingress_replicas,
        ray_actor_options=ingress_options,
        health_check_period_s=5,
        graceful_shutdown_timeout_s=30,  # the ingress drains its frames on the way out (FrameIngress.stop)
    ).bind(spec.model_dump_json(context={REVEAL_SECRETS: True}), *models)


def deploy(spec: SliceSpec, wait_s: float | None) -> bool:
    """Create or update the slice's Serve application (idempotent for an unchanged spec).

    Waits up to ``wait_s`` (None: no limit) for it to run and says whether it does. ``serve.run``
    would wait without a bound, and a replica that cannot be scheduled (no CPU left for a raised
    floor) would hold the caller, the edge agent, for good; Serve keeps trying either way.
    """
    target = serve.RunTarget(build_app(spec), name=spec.name, route_prefix=None)
    serve.run_many([target], wait_for_applications_running=False)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while deadline is None or time.monotonic() < deadline:
        status = serve.status().applications.get(spec.name)
        if status is not None and status.status == ApplicationStatus.RUNNING:
            return True
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise SliceDeployFailed(f"slice {spec.name} failed to deploy: {status.message}")
        time.sleep(0.25)
    return False
