"""A slice as one Ray Serve application: an MQTT ingress deployment and a model deployment.

    Ingress (N replicas, shared MQTT subscription)  --handle, micro-batches-->  Model (@serve.batch, autoscaled)
           |  during a rollout (Serve user_config)  --by name------------->  <slice>.candidate: the new version

The model deployment batches calls from every ingress replica (``@serve.batch``
counting frames, not calls), runs ONNX Runtime off the event loop, and
scales between the slice's replica bounds. Each ingress replica holds one
persistent MQTT session named after its replica rank, so a restarted replica
resumes the session, and the frames, of the one it replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from PIL import Image
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from contracts.manifest import load_manifest
from contracts.slice_spec import INGRESS_SLOTS, REVEAL_SECRETS, ReplicaSpec, RolloutSpec, RolloutStage, SliceSpec
from edge_node.autoscaling import POLICY as LINE_POLICY
from edge_node.errors import FrameError, SliceDeployFailed
from edge_node.imaging import FrameLimits, Preprocessor
from edge_node.ingress import FrameIngress
from edge_node.settings import EdgeSettings
from edge_node.verdicts import as_reply
from models import BUNDLED_MANIFEST

log = logging.getLogger(__name__)

HEAD_RESOURCE = "node:__internal_head__"
"""Ray's own resource of the head node, where the site's agent (and so the ingress's password) lives."""

CANDIDATE = "candidate"
"""The deployment of a rollout's candidate model, alone in its application (``candidate_app``)."""

WARM_TIMEOUT_S = 20.0
"""How long an ingress replica waits, per model deployment, for its warm-up call (``Ingress._warm``)."""
SUBSCRIBE_WAIT_S = 15.0
"""How long an ingress replica's constructor waits for the broker to confirm its frame subscriptions."""
MODEL_HEALTH_CHECK_PERIOD_S = 2.0
MODEL_HEALTH_CHECK_TIMEOUT_S = 5.0
"""Serve asks each model replica whether it is alive every period; three unanswered (or failed) checks in a
row and it is stopped and replaced. A replica that stalls (a wedged call, a stopped process) is so evicted
within period + 3 x timeout (17 s) where Serve's defaults (10 s, 30 s) would let it hold its calls 100 s."""
MODEL_SHUTDOWN_S = 5.0
"""How long Serve lets a model replica it stops finish its calls (its batches take milliseconds) before it
kills the process: a stalled replica it evicted would otherwise live on Serve's default 20 s."""
INFER_TIMEOUT_S = 10.0
"""Longest wait for one model call: a call to a deployment Serve removed, or to a replica that stalled,
would otherwise wait for good, holding one of the ingress's model-call slots (and its shutdown) with it.
A batch that times out is retried (Serve routes it to a replica that answers), then answered ``internal``
(``batching.judge``). 10 s: a robot's first resend (5 s) joins the call and its second wait covers it."""


def _warm_frame() -> bytes:
    """A small grey JPEG: what the ingress's warm-up call sends each model deployment."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(out, format="JPEG")
    return out.getvalue()


WARM_FRAME = _warm_frame()

DISCONNECTED_GRACE_S = 30.0
"""An ingress replica that cannot reach its broker for this long reports unhealthy and is restarted."""


def process_info() -> dict[str, Any]:
    """PID and resident memory of the calling replica's process."""
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0)
    return {"pid": os.getpid(), "rss_mb": round(rss_kb / 1024, 1)}


def _frames_in(calls: list[list[Any]]) -> int:
    return sum(len(call) for call in calls)


def decodes_in_ingress(spec: SliceSpec) -> bool:
    """Whether ``spec``'s ingress decodes frames (``ResourceSpec.decode_at``; "auto" left unsized: the model)."""
    return spec.resources.decode_at == "ingress"


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
        # imported here, not at the top: the ingress replicas import this module too, and need no ONNX Runtime
        # (about 20 MB of each ingress replica's memory)
        from edge_node.runtime import InspectionModel

        self.model = InspectionModel(manifest_of(spec), settings, warmup_batch=spec.batch.max_batch_size)
        self.delay_s = spec.inject_delay_ms / 1000
        self.judged = {"encoded": 0, "decoded": 0}  # frames this replica judged, as they came (decode_at)
        self.inspect.set_max_batch_size(spec.batch.max_batch_size)  # type: ignore[attr-defined]
        self.inspect.set_batch_wait_timeout_s(spec.batch.batch_wait_ms / 1000)  # type: ignore[attr-defined]

        self.inspect_decoded.set_max_batch_size(spec.batch.max_batch_size)  # type: ignore[attr-defined]
        self.inspect_decoded.set_batch_wait_timeout_s(spec.batch.batch_wait_ms / 1000)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_frames_in)
    async def inspect(self, calls: list[list[bytes]]) -> list[list[dict[str, Any]]]:
        """Encoded frames (JPEG, PNG) -> one reply each: a verdict, or the frame's error."""
        self.judged["encoded"] += _frames_in(calls)
        return await self._batch(calls, self.model.inspect)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_frames_in)
    async def inspect_decoded(self, calls: list[list[tuple[Any, Any]]]) -> list[list[dict[str, Any]]]:
        """Frames an ingress decoded (``decode_at`` "ingress"): (RGB pixels, placement) -> one verdict each."""
        self.judged["decoded"] += _frames_in(calls)
        return await self._batch(calls, self.model.inspect_decoded)

    async def _batch(self, calls: list[list[Any]], inspect: Callable[[list[Any]], list[Any]]) -> list[list[Any]]:
        """Judge every call's frames as one batch, off the event loop; the replies split back by call."""
        frames = [frame for call in calls for frame in call]
        started = time.perf_counter()
        outcomes = await asyncio.get_running_loop().run_in_executor(None, self._judge, frames, inspect)
        log.debug(
            "judged %d frames from %d calls in %.1f ms", len(frames), len(calls), (time.perf_counter() - started) * 1e3
        )
        replies, offset = [], 0
        for call in calls:
            replies.append(outcomes[offset : offset + len(call)])
            offset += len(call)
        return replies

    def _judge(self, frames: list[Any], inspect: Callable[[list[Any]], list[Any]]) -> list[dict[str, Any]]:
        if self.delay_s:
            time.sleep(self.delay_s)
        return [as_reply(o) for o in inspect(frames)]

    def info(self) -> dict[str, Any]:
        """Model and execution providers of this replica."""
        manifest = self.model.manifest
        return {
            "model": f"{manifest.name}:{manifest.version}",
            "providers": self.model.providers,
            "frames_judged": dict(self.judged),
            "ray_node_id": ray.get_runtime_context().get_node_id(),
            **process_info(),
        }


@serve.deployment
class Ingress:
    """Consumes the slice's lines from MQTT and publishes verdicts."""

    def __init__(self, spec_json: str, *models: DeploymentHandle) -> None:
        spec = SliceSpec.model_validate_json(spec_json)
        self._app = spec.name
        context = serve.get_replica_context()
        rank = context.rank.rank
        # With the control plane's per-connection logins the client id is the broker username, pinned there.
        logins = spec.broker.connection_logins
        index = rank * INGRESS_SLOTS + spec.ingress_slot  # see SliceSpec.ingress_slot
        client_id = f"{spec.broker.username}.{index}" if logins else f"lineside-{spec.name}-ingress-{index}"
        # One model deployment per node the scheduler chose (or one unpinned); calls rotate over
        # them in proportion to the replicas each holds.
        weights = [count for _, count in _pins(spec)] or [1]
        self._weighted = list(zip(models, weights, strict=True))
        self._models_lock = threading.Lock()
        self._route(None)
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
        # With decode_at "ingress" this replica decodes and resizes each frame, and the model replica gets pixels.
        limits = FrameLimits.from_settings(EdgeSettings())
        self._decoder = Preprocessor(manifest, limits) if decodes_in_ingress(spec) else None
        self.ingress = FrameIngress(
            spec,
            self._infer,
            client_id=client_id,
            node=socket.gethostname(),
            model=f"{manifest.name}:{manifest.version}",
            observe=self._observe,
        )
        self._last_connected = time.monotonic()
        self._following = -1  # the rollout board's version this replica follows
        self._follow_rollout()  # before the first frame: a restarted replica routes as the one it replaces
        self._warm(models)
        self.ingress.start()
        # Serve stops the replica this one replaces once the constructor returns: frames published between
        # the old replica's unsubscribe and this one's subscribe would match no subscriber, and the broker
        # drops them (the robots resend after their timeout). So the replica is ready only once subscribed.
        if not self.ingress.subscribed.wait(SUBSCRIBE_WAIT_S):
            log.warning("ingress %s not subscribed after %.0fs (broker unreachable?); starting anyway, it "
                        "keeps trying", client_id, SUBSCRIBE_WAIT_S)  # fmt: skip
        self._stop_following = threading.Event()
        threading.Thread(target=self._follow_loop, name=f"{client_id}-rollout", daemon=True).start()
        log.info("ingress replica %s started for slice %s", client_id, spec.name)

    def _warm(self, models: tuple[DeploymentHandle, ...]) -> None:
        """Before taking frames, ask each model deployment once through its handle (bounded): a handle's first
        call finds its replicas and opens its channels, which the line's first frames would otherwise wait
        for. A deployment that cannot answer yet (a replica still being scheduled) is logged and left: the
        ingress starts anyway, and its frames wait in the broker session as they would have."""

        def ask() -> None:
            for model in models:
                try:
                    model.inspect.remote([WARM_FRAME]).result(timeout_s=WARM_TIMEOUT_S)
                except Exception:
                    log.warning("ingress %s: a model deployment did not answer its warm-up call", self._app,
                                exc_info=True)  # fmt: skip

        # In a thread of its own: a handle's blocking result() must not run on the replica's event loop.
        warming = threading.Thread(target=ask, name="warm-up", daemon=True)
        warming.start()
        warming.join(WARM_TIMEOUT_S * len(models) + 1)

    def _route(self, names: list[str] | None) -> None:
        """Call only the model deployments named (None, or none of this replica's: all of them).

        An apply that drops a node's deployment posts the new names first (``deploy``): this replica, which
        the apply replaces, must not send frames to a deployment Serve is about to remove, as a call to a
        deployment without replicas waits for good."""
        kept = [(m, w) for m, w in self._weighted if names is None or m.deployment_name in names]
        if names is not None and not kept:  # the apply keeps none of ours (unpinned to pinned): call the new ones,
            # whose calls wait the few seconds until their replicas run, rather than a removed one, which waits
            # for good
            kept = [(serve.get_deployment_handle(name, app_name=self._app), 1) for name in names]
        with self._models_lock:
            self._models = itertools.cycle(_interleave(kept or self._weighted))

    def _follow_loop(self) -> None:
        while not self._stop_following.wait(FOLLOW_S):
            self._follow_rollout()

    def _follow_rollout(self) -> None:
        """Take up the rollout the slice's board holds (``RolloutBoard``), if it changed; tell the board."""
        try:
            board = ray.get_actor(board_name(self._app), namespace=BOARD_NAMESPACE)
            posted: dict[str, Any] = ray.get(board.get.remote(), timeout=10)  # type: ignore[assignment]
        except ValueError:  # no board: the slice never had a rollout
            return
        except Exception:  # a board that does not answer now: keep routing as before, ask again
            log.warning("rollout board of slice %s unreachable; routing as before", self._app, exc_info=True)
            return
        if posted["version"] == self._following:
            return
        self._route(posted["models"])
        if posted["rollout"] is None:
            self.ingress.set_candidate(None)
        else:
            handle = serve.get_deployment_handle(CANDIDATE, app_name=candidate_app(self._app))

            def infer(frames: list[bytes]) -> list[dict[str, Any]]:
                return call_model(handle, frames)

            rollout = RolloutSpec.model_validate(posted["rollout"])
            self.ingress.set_candidate(rollout, infer, posted["candidate_model"])
        self._following = posted["version"]
        board.ack.remote(self.ingress.client_id, self._following)

    def _observe(self, outcome: str, total_ms: float) -> None:
        self._answers.inc(tags={**self._tags, "outcome": outcome})
        self._latency.observe(total_ms, tags=self._tags)

    def _infer(self, frames: list[bytes]) -> list[dict[str, Any]]:
        with self._models_lock:
            model = next(self._models)
        if self._decoder is None:
            return call_model(model, frames)
        return call_model_decoding(model, frames, self._decoder)

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
        if hasattr(self, "_stop_following"):  # the constructor may have failed before the ingress started
            self._stop_following.set()
            self.ingress.stop()


def call_model(
    model: DeploymentHandle, frames: list[bytes], timeout_s: float = INFER_TIMEOUT_S
) -> list[dict[str, Any]]:
    """The model's outcomes for ``frames``, waiting at most ``timeout_s``; on timeout the request is cancelled
    (Serve drops it if it is still queued) and ``TimeoutError`` raised."""
    return _answer(model.inspect.remote(frames), timeout_s)


def _answer(response: Any, timeout_s: float) -> list[dict[str, Any]]:
    """A model call's replies, waiting at most ``timeout_s``; on timeout it is cancelled, ``TimeoutError`` raised."""
    try:
        return list(response.result(timeout_s=timeout_s))
    except TimeoutError:
        response.cancel()
        raise


def call_model_decoding(
    model: DeploymentHandle, frames: list[bytes], decoder: Preprocessor, timeout_s: float = INFER_TIMEOUT_S
) -> list[dict[str, Any]]:
    """``call_model`` with the frames decoded here: a frame that does not decode is answered with its error at
    once, the rest go to the model replica as pixels at its input size (``ModelServer.inspect_decoded``)."""
    replies: list[dict[str, Any] | None] = [None] * len(frames)
    decoded: list[tuple[int, Any]] = []
    for i, data in enumerate(frames):
        try:
            decoded.append((i, decoder.decode(data)))
        except FrameError as e:
            replies[i] = as_reply(e)
    if decoded:
        outcomes = _answer(model.inspect_decoded.remote([pixels for _, pixels in decoded]), timeout_s)
        for (i, _), outcome in zip(decoded, outcomes, strict=True):
            replies[i] = outcome
    return [r for r in replies if r is not None]


def model_caller(spec: SliceSpec) -> Callable[[list[bytes]], list[dict[str, Any]]]:
    """Judge encoded frames with ``spec``'s model deployments from outside its ingress (the HTTP gateway):
    calls rotate over the deployments in proportion to their replicas, and decode where the slice decodes."""
    weights = [count for _, count in _pins(spec)] or [1]
    handles = [serve.get_deployment_handle(name, app_name=spec.name) for name in _model_names(spec)]
    models = itertools.cycle(_interleave(list(zip(handles, weights, strict=True))))
    lock = threading.Lock()
    decoder = None
    if decodes_in_ingress(spec):
        decoder = Preprocessor(load_manifest(manifest_of(spec)), FrameLimits.from_settings(EdgeSettings()))

    def infer(frames: list[bytes]) -> list[dict[str, Any]]:
        with lock:
            model = next(models)
        return call_model(model, frames) if decoder is None else call_model_decoding(model, frames, decoder)

    return infer


def model_spec_json(spec: SliceSpec, manifest: Path | None = None) -> str:
    """The init args of a model replica: the spec without what only the ingress and Serve's autoscaling use.

    Model replicas (on any node) never see the broker password; a placement change, a new ingress slot or
    a rollout's start, step or end must not restart the replicas that stay. ``manifest``: the candidate's.
    """
    update: dict[str, Any] = {"placement": None, "ingress_slot": 0, "replicas": ReplicaSpec(), "rollout": None}
    if manifest is not None:
        update["manifest"] = manifest
    return spec.model_copy(update=update).model_dump_json()


def _ingress_json(spec: SliceSpec) -> str:
    return spec.model_copy(update={"rollout": None}).model_dump_json(context={REVEAL_SECRETS: True})


BOARD_NAMESPACE = "lineside"
FOLLOW_S = 0.25
"""How often an ingress replica looks at its slice's rollout board."""


def board_name(name: str) -> str:
    return f"rollout-board-{name}"


@ray.remote(num_cpus=0)
class RolloutBoard:
    """A slice's rollout in force, which its running ingress replicas follow (``Ingress._follow_rollout``).

    Why not redeploy the application with the rollout: the rollout would then be in the ingress's init
    args, so every step would restart the ingress replicas (a new ``deployment_version``). The board also
    remembers what the application was deployed from, so an apply that changes only the rollout leaves
    the application alone.
    """

    def __init__(self) -> None:
        self.posted: dict[str, Any] = {"version": 0, "rollout": None, "candidate_model": "", "models": None}
        self.following: dict[str, int] = {}  # ingress replica -> version it follows
        self.deployed = ""  # digest of what the application was last deployed from
        self.slot: int | None = None  # the ingress slot it was last deployed with

    def get(self) -> dict[str, Any]:
        return self.posted

    def post(self, rollout: dict[str, Any] | None, candidate_model: str) -> int:
        """Post a rollout (None: none); returns the version the ingress replicas will acknowledge."""
        return self._update(rollout=rollout, candidate_model=candidate_model)

    def route(self, models: list[str]) -> int:
        """Post the model deployments the ingress replicas may call; returns the version to acknowledge."""
        return self._update(models=sorted(models))

    def _update(self, **changes: Any) -> int:
        if any(self.posted[key] != value for key, value in changes.items()):
            self.posted = {**self.posted, **changes, "version": self.posted["version"] + 1}
        return int(self.posted["version"])

    def ack(self, replica: str, version: int) -> None:
        self.following[replica] = version

    def followers(self, version: int) -> int:
        """Ingress replicas that follow ``version`` (or a later one)."""
        return sum(1 for seen in self.following.values() if seen >= version)

    def deployed_slot(self, slot: int | None = None) -> int | None:
        """The ingress slot (broker login) the application was last deployed with; sets it when given."""
        if slot is not None:
            self.slot = slot
        return self.slot

    def deployed_from(self, digest: str | None = None) -> str:
        if digest is not None:
            self.deployed = digest
        return self.deployed


def _board(name: str) -> Any:
    return RolloutBoard.options(  # type: ignore[attr-defined]
        name=board_name(name), namespace=BOARD_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


def forget(name: str) -> None:
    """A slice's rollout state, when the slice is deleted: its candidate application and its board."""
    if not ray.is_initialized():
        return
    if candidate_app(name) in serve.status().applications:
        serve.delete(candidate_app(name), _blocking=False)
    with contextlib.suppress(ValueError):  # no board: it never had one
        ray.kill(ray.get_actor(board_name(name), namespace=BOARD_NAMESPACE))


def candidate_app(name: str) -> str:
    """The Serve application of a slice's rollout candidate (a slice name holds no '.')."""
    return f"{name}.candidate"


def candidate_manifest(spec: SliceSpec) -> Path:
    if spec.rollout is None or spec.rollout.manifest is None:
        raise SliceDeployFailed(f"slice {spec.name}: its rollout names no candidate manifest")
    return spec.rollout.manifest


def build_candidate(spec: SliceSpec) -> Any:
    """The rollout candidate's application: one model deployment (unpinned, up to ``rollout.replicas``).

    Its own application, so that starting and ending a rollout changes nothing the slice's ingress or
    model replicas were started with; its init args hold neither the stage nor the share, so stepping
    a rollout forward keeps its replicas too.
    """
    assert spec.rollout is not None
    manifest = candidate_manifest(spec)
    candidate_json = model_spec_json(spec, manifest)
    version = deployment_version(candidate_json, manifest)
    return _model_deployment(spec, candidate_json, version, CANDIDATE, 1, spec.rollout.replicas, None)


def _model_names(spec: SliceSpec) -> list[str]:
    """The slice's model deployments, in ``_pins`` order: one per chosen node, or one unpinned."""
    return [f"model-{pin}" for pin, _ in _pins(spec)] or ["model"]


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


@functools.cache
def _code_digest() -> str:
    """A digest of the code replicas run (this package and ``contracts``), read once per process that
    deploys (replicas, which import this module too, never need it)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for source in sorted([*root.joinpath("edge_node").rglob("*.py"), *root.joinpath("contracts").rglob("*.py")]):
        digest.update(source.relative_to(root).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def deployment_version(init_json: str, manifest: Path | None = None) -> str:
    """The version Serve gives a deployment: equal only for the same code, init args and model file.

    Serve 2.60 versions each deployment of an imperatively deployed application at random on every
    ``serve.run``, so every replica restarts on every apply. With this version (Serve's internal
    ``version`` option) a replica restarts only when what it was started from changed: a placement
    change keeps the model replicas that stay, and a rollout's step keeps both models'.
    """
    digest = hashlib.sha256(_code_digest().encode() + b"\0" + init_json.encode())
    if manifest is not None and manifest.is_file():  # the manifest names the model file's digest
        digest.update(manifest.read_bytes())
    return digest.hexdigest()[:20]


def _model_deployment(spec: SliceSpec, spec_json: str, version: str, name: str, low: int, high: int,
                      pin: str | None) -> Any:  # fmt: skip
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
        health_check_period_s=MODEL_HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=MODEL_HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=MODEL_SHUTDOWN_S,
        ray_actor_options=actor_options,
        version=version,  # deployment_version of spec_json and its model
        _internal=True,  # Serve's own option: without it every apply restarts every replica
    ).bind(spec_json)


def build_app(spec: SliceSpec, surge: bool = False) -> Any:
    """The Serve application (bound deployment graph) for ``spec``.

    ``surge``: a replaced ingress replica stops only once its replacement runs (``_surge_room``).

    Without a placement there is one ``model`` deployment that Ray places; with one there is
    a ``model-lineside_node_<id>`` deployment per chosen node, pinned by its custom resource.
    """
    spec_json = model_spec_json(spec)
    version = deployment_version(spec_json, manifest_of(spec))  # one for every pin: they run the same
    if pins := _pins(spec):
        floors = _split_floor(spec.replicas.min_replicas, [count for _, count in pins])
        models = [_model_deployment(spec, spec_json, version, name, low, count, pin)
                  for name, (pin, count), low in zip(_model_names(spec), pins, floors, strict=True)]  # fmt: skip
    else:
        models = [_model_deployment(spec, spec_json, version, "model", spec.replicas.min_replicas,
                                    spec.replicas.max_replicas, None)]  # fmt: skip
    # The ingress holds the broker password, which the control plane gives only to the head's agent:
    # it runs on the Ray head, never on a worker node.
    ingress_options = {"num_cpus": spec.resources.ingress_cpus, "resources": {HEAD_RESOURCE: 0.001}}
    # The rollout reaches the running ingress replicas through the slice's RolloutBoard, and the ingress
    # finds the candidate's application by name: the application is the same with or without one.
    ingress_json = _ingress_json(spec)
    return Ingress.options(  # type: ignore[attr-defined]
        name="ingress",
        num_replicas=spec.ingress_replicas,
        ray_actor_options=ingress_options,
        health_check_period_s=5,
        graceful_shutdown_timeout_s=30,  # the ingress drains its frames on the way out (FrameIngress.stop)
        # A replaced ingress replica leaves the line only once its replacement is subscribed (its constructor
        # waits for that): with no subscriber the broker drops a frame. Serve's default stops it first.
        max_surge_percent=100 if surge else 0,
        version=deployment_version(ingress_json, manifest_of(spec)),
        _internal=True,
    ).bind(ingress_json, *models)


def deploy(spec: SliceSpec, wait_s: float | None) -> bool:
    """Create or update the slice's Serve application (idempotent for an unchanged spec).

    Waits up to ``wait_s`` (None: no limit) for it to run and says whether it does. ``serve.run``
    would wait without a bound, and a replica that cannot be scheduled (no CPU left for a raised
    floor) would hold the caller, the edge agent, for good; Serve keeps trying either way.

    A rollout's candidate is deployed first (so the canary's first frames find it warm), and removed
    only after the ingress has stopped routing to it. A rollout that completed hands over: every robot
    goes to the candidate first, the application is redeployed with it as the slice's model, and the
    rollout ends once the old ingress replicas are gone, so no robot sees the old model after the new.
    """
    deadline = None if wait_s is None else time.monotonic() + wait_s
    board = _board(spec.name)
    posted: dict[str, Any] = ray.get(board.get.remote())
    rollout, label, handover = None, "", False
    if spec.rollout is not None:
        candidate = serve.RunTarget(build_candidate(spec), name=candidate_app(spec.name), route_prefix=None)
        serve.run_many([candidate], wait_for_applications_running=False)
        _wait_running(candidate_app(spec.name), deadline)
        rollout, label = spec.rollout.model_dump(mode="json"), _label(candidate_manifest(spec))
    elif posted["rollout"] is not None and posted["candidate_model"] == _label(manifest_of(spec)):
        handover = True
        rollout, label = (
            {**posted["rollout"], "stage": RolloutStage.FULL.value, "share": 1.0},
            posted["candidate_model"],
        )
        _await_followers(board, ray.get(board.post.remote(rollout, label)), spec.ingress_replicas, deadline)
    digest = hashlib.sha256(_ingress_json(spec).encode()).hexdigest()
    present = serve.status().applications.get(spec.name)
    if present is None or present.status == ApplicationStatus.DEPLOY_FAILED or \
            ray.get(board.deployed_from.remote()) != digest:  # fmt: skip
        routed = _route_first(board, spec, present, deadline)
        # Only a replacement under the other broker login may run beside the old replica: under the same one
        # the two would take the MQTT session from each other (``SliceSpec.ingress_slot``).
        other_login = ray.get(board.deployed_slot.remote()) not in (None, spec.ingress_slot)
        surge = routed and other_login and _surge_room(spec)
        target = serve.RunTarget(build_app(spec, surge=surge), name=spec.name, route_prefix=None)
        serve.run_many([target], wait_for_applications_running=False)
        ray.get(board.deployed_from.remote(digest))
        ray.get(board.deployed_slot.remote(spec.ingress_slot))
    version = ray.get(board.post.remote(rollout, label))
    running = _wait_running(spec.name, deadline)
    if handover:  # the new ingress replicas follow the full step too; the old ones must be gone
        _await_followers(board, version, 2 * spec.ingress_replicas, deadline)
        _await_no_stopping_ingress(spec.name, deadline)
        version = ray.get(board.post.remote(None, ""))
    if spec.rollout is None and candidate_app(spec.name) in serve.status().applications:
        # Only once the ingress replicas route nobody to it; its frames in flight finish (graceful shutdown).
        _await_followers(board, version, spec.ingress_replicas, deadline)
        serve.delete(candidate_app(spec.name), _blocking=False)
    return running


def _surge_room(spec: SliceSpec) -> bool:
    """Whether the cluster has the CPU for the ingress's replacements beside the running replicas now.

    With ``max_surge_percent`` Serve waits for room before it starts a replacement, and keeps the old replica
    meanwhile, for good if the room never comes (the README's walkthrough stalled when the model replicas had
    taken every CPU). Without room, the ingress is replaced the default way: frames published in the moment
    no replica is subscribed are dropped by the broker and resent by the robots after their timeout.
    """
    free = float(ray.available_resources().get("CPU", 0.0))
    return free >= spec.resources.ingress_cpus * spec.ingress_replicas


def _route_first(board: Any, spec: SliceSpec, present: Any, deadline: float | None) -> bool:
    """Before an apply: the running ingress replicas stop calling the model deployments it removes.

    Serve replaces the ingress and removes a dropped node's deployment in the same apply; an old ingress
    replica still sending frames to that deployment would wait for its answers for good (Serve queues a
    call to a deployment without replicas), and its robots would resend them after their timeout. Once
    the running replicas follow the new routes, the dropped deployment's calls in flight finish in its
    graceful shutdown.

    Returns whether the running ingress replicas can keep serving through the apply, i.e. they hold a
    deployment the apply keeps. When it keeps none (unpinned to pinned, or every node changed), they have
    nothing to call once Serve removed theirs, so they must not outlive the apply (no surge): Serve stops
    them first and their calls in flight finish in the old deployments' graceful shutdown, as before.
    """
    names = _model_names(spec)
    version = ray.get(board.route.remote(names))
    running = present.deployments if present is not None else {}
    if any(name.startswith("model") and name not in names for name in running):
        ingress = running.get("ingress")
        replicas = ingress.replica_states.get("RUNNING", 0) if ingress is not None else 0
        _await_followers(board, version, replicas, deadline)
    return not running or any(name in running for name in names)


def _label(manifest: Path) -> str:
    loaded = load_manifest(manifest)
    return f"{loaded.name}:{loaded.version}"


def _until(deadline: float | None, at_most_s: float) -> float:
    return time.monotonic() + (at_most_s if deadline is None else max(deadline - time.monotonic(), 1.0))


def _await_followers(board: Any, version: int, replicas: int, deadline: float | None) -> None:
    """Until ``replicas`` ingress replicas follow the board's ``version`` (bounded: Serve keeps going)."""
    until = _until(deadline, 30.0)
    while ray.get(board.followers.remote(version)) < replicas and time.monotonic() < until:
        time.sleep(FOLLOW_S)


def _await_no_stopping_ingress(name: str, deadline: float | None) -> None:
    """Until the application's replaced ingress replicas have drained and gone (bounded)."""
    until = _until(deadline, 45.0)
    while time.monotonic() < until:
        status = serve.status().applications.get(name)
        ingress = status.deployments.get("ingress") if status is not None else None
        if ingress is None or not any(state != "RUNNING" and count for state, count in ingress.replica_states.items()):
            return
        time.sleep(FOLLOW_S)


def _wait_running(name: str, deadline: float | None) -> bool:
    while deadline is None or time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status == ApplicationStatus.RUNNING:
            return True
        if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
            raise SliceDeployFailed(f"slice {name} failed to deploy: {status.message}")
        time.sleep(0.25)
    return False
