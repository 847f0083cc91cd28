"""HTTP inference beside MQTT: the Open Inference Protocol (KServe v2) for systems that cannot speak MQTT.

A MES or a test bench posts images to ``POST /v2/models/{slice}/infer`` on the site's head node and gets the
verdict JSON a robot gets on its results topic (``wire.Result``, or ``wire.ErrorReply``), one per image:

* authentication: the caller's Lineside API token (``Authorization: Bearer``), checked by the control plane
  (``Verifier``: the agent asks ``POST /agent/v1/callers`` and caches the answer ``CALLER_CACHE_S``); a slice
  of another tenant is "not found", as it is in the API;
* the same limits and answers as the MQTT path: the line's frame policy (bytes and frames/s per robot),
  decoding and judging by the slice's model deployment (``judge``), answers built by ``replies.Replier``;
* the same metering: the gateway counts every answer in a ``TelemetryWindow`` and publishes it on the
  line's telemetry topic with its own broker login (``s.<app>.http``), so HTTP frames are billed exactly as
  MQTT frames are.

Request body: KServe v2 JSON with one ``BYTES`` input ``image`` whose elements are the encoded images in
base64, or the binary tensor extension (``Inference-Header-Content-Length``), which tritonclient sends.
``parameters`` may name the ``line`` (default: the slice's first); the images are answered, rate-limited and
metered as the line's robot ``http``. The response's one ``BYTES`` output ``verdict`` holds one JSON document
per image, in order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import paho.mqtt.client as mqtt
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import wire
from contracts.manifest import load_manifest
from contracts.slice_spec import SliceSpec
from edge_node.ingress.batching import InferFn, judge
from edge_node.ingress.frames import Frame
from edge_node.ingress.mqtt_session import mqtt_client
from edge_node.ingress.rate_limit import RobotRateLimiter
from edge_node.ingress.replies import Replier, outcome_error, refusal
from edge_node.telemetry import TelemetryWindow

log = logging.getLogger(__name__)

MAX_IMAGES = 32
"""Images per request (the model's largest batch)."""
INPUT, OUTPUT = "image", "verdict"
HTTP_ROBOT = "http"
"""The robot name HTTP frames are answered, rate-limited and metered under (one per line: a caller's own names
would each get a fresh rate-limit bucket and a row in the line's telemetry)."""
BINARY_HEADER = "inference-header-content-length"
TELEMETRY_PERIOD_S = 5.0


@dataclass(frozen=True)
class Caller:
    """Who a token belongs to: the tenant's slug and the user's role."""

    tenant: str
    role: str


Verifier = Callable[[str], Caller | None]
"""A bearer token -> its caller, or None for an unknown, revoked or expired token."""

ROLES = frozenset({"factory_it", "plant_manager"})
"""Roles that may run inferences (a tenant's own people; operators run no inspections)."""


MIN_TOKEN, MAX_TOKEN = 8, 512
CALLER_CACHE_SIZE = 10_000
"""Tokens whose answer the verifier remembers (the least recently used go first)."""


class ControlPlaneVerifier:
    """Checks a token with the control plane (``POST /agent/v1/callers``, as this node), remembering each
    answer ``ttl_s`` (a revoked token stops working within that; an unknown one is asked again after
    ``UNKNOWN_TTL_S``). While the control plane cannot be reached, a token it vouched for in the last
    ``offline_grace_s`` keeps working (the line must not stop because the office network is down)."""

    UNKNOWN_TTL_S = 5.0

    def __init__(self, client: httpx.Client, headers: Callable[[], dict[str, str]], ttl_s: float = 30.0,
                 offline_grace_s: float = 600.0) -> None:  # fmt: skip
        self.client, self.headers, self.ttl_s, self.offline_grace_s = client, headers, ttl_s, offline_grace_s
        # sha256(token) -> (caller, asked at), least recently used first; bounded, as callers choose the tokens
        self._known: OrderedDict[str, tuple[Caller | None, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, token: str) -> Caller | None:
        if not MIN_TOKEN <= len(token) <= MAX_TOKEN:
            return None  # no API token is that short or long: not worth the control plane's time
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            caller, asked = self._known.get(key, (None, -1e18))
        if now - asked < (self.ttl_s if caller else self.UNKNOWN_TTL_S):
            return caller
        try:
            response = self.client.post("/agent/v1/callers", json={"token": token}, headers=self.headers())
        except httpx.TransportError:
            if caller is not None and now - asked < self.offline_grace_s:
                return caller
            raise GatewayError(503, "the control plane cannot check API tokens now; retry shortly") from None
        if response.status_code == 200:
            body = response.json()
            found: Caller | None = Caller(str(body["tenant"]), str(body["role"]))
        elif response.status_code == 404:  # no such token (or revoked, expired, of no tenant at this site)
            found = None
        elif response.status_code == 401:  # this node's own token: removed from the site
            log.error("the control plane refused this node's token while checking a caller: rejoin the node")
            raise GatewayError(503, "this edge node is not registered with its site now; tell the operator")
        else:
            log.warning("the control plane answered %s to a token check", response.status_code)
            raise GatewayError(503, "the control plane cannot check API tokens now; retry shortly")
        with self._lock:
            self._known[key] = (found, now)
            self._known.move_to_end(key)
            while len(self._known) > CALLER_CACHE_SIZE:
                self._known.popitem(last=False)
        return found


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=64)
    shape: list[int] = Field(max_length=4)
    datatype: str = Field(max_length=16)
    data: list[Any] | None = Field(default=None, max_length=1024)  # the count is checked against MAX_IMAGES
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = Field(default=None, max_length=128)
    inputs: list[TensorIn] = Field(min_length=1, max_length=1)
    outputs: list[dict[str, Any]] | None = Field(default=None, max_length=4)
    parameters: dict[str, Any] = Field(default_factory=dict)


class GatewayError(Exception):
    """A refused request: its HTTP status and what the caller should do (the KServe ``error`` field)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class ServedSlice:
    """One slice as the gateway serves it: its spec, the model call, the answers' envelope and its meter."""

    spec: SliceSpec
    infer: InferFn
    replier: Replier
    telemetry: TelemetryWindow
    rates: RobotRateLimiter = field(default_factory=RobotRateLimiter)

    def answer(self, images: list[bytes], line: str, robot: str, request_id: str) -> list[str]:
        """The verdict JSON of each image, in order; every answer is counted for the line's telemetry."""
        where = wire.RobotTopic(self.spec.tenant, line, robot, wire.TopicKind.FRAMES)
        frames = [Frame(mid=0, qos=1, generation=0, robot=where, payload=image, frame_id=f"{request_id}/{k}",
                        correlation=None, user_properties={"via": "http"})
                  for k, image in enumerate(images)]  # fmt: skip
        answers: dict[int, wire.Result | wire.ErrorReply] = {}
        to_judge = []
        for k, frame in enumerate(frames):
            if problem := refusal(frame, self.spec.policy(line), self.rates.allow):
                answers[k] = self._error(frame, *problem)
            else:
                to_judge.append(k)
        if to_judge:
            started = time.monotonic()
            outcomes = judge(self.infer, [frames[k].payload for k in to_judge])
            now = time.monotonic()
            for k, outcome in zip(to_judge, outcomes, strict=True):
                if error := outcome_error(outcome):
                    answers[k] = self._error(frames[k], *error)
                    continue
                result = self.replier.result(frames[k], outcome, started=started, inference_ms=(now - started) * 1e3,
                                             now=now)  # fmt: skip
                location = wire.defect_location(outcome.get("location"), outcome.get("boxes"), outcome["defect_class"])
                self.telemetry.observe_verdict(where, frame_id=result.frame_id, verdict=result.verdict,
                                               defect_class=result.defect_class, score=outcome["score"],
                                               total_ms=result.timings_ms.total, payload=frames[k].payload,
                                               location=location)  # fmt: skip
                answers[k] = result
        return [answers[k].model_dump_json() for k in range(len(frames))]

    def _error(self, frame: Frame, code: wire.ErrorCode, detail: str) -> wire.ErrorReply:
        self.telemetry.observe_error(frame.robot, code)
        return self.replier.error(frame, code, detail)


class Gateway:
    """The slices this head node serves over HTTP, and their telemetry publisher."""

    def __init__(self, verifier: Verifier, model_call: Callable[[SliceSpec], InferFn], node: str,
                 telemetry_period_s: float = TELEMETRY_PERIOD_S) -> None:  # fmt: skip
        self.verifier, self.model_call, self.node = verifier, model_call, node
        self.telemetry_period_s = telemetry_period_s
        self._slices: dict[str, ServedSlice] = {}
        self._publishers: dict[str, mqtt.Client] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reporter = threading.Thread(target=self._report_loop, name="http-gateway-telemetry", daemon=True)
        self._reporter.start()

    def update(self, specs: list[SliceSpec]) -> None:
        """Serve exactly ``specs`` (the agent calls this after each reconcile). A changed spec gets a new model
        call (and a new broker login if its broker changed); its meter and rate limits carry over, so nothing
        counted is lost. A slice that cannot be served now (its deployment gone) is left out and logged."""
        with self._lock:
            wanted = {s.name: s for s in specs}
            current, publishers = dict(self._slices), dict(self._publishers)
            for name in [n for n in current if n not in wanted]:
                self._flush(current.pop(name), publishers[name])
                self._close(publishers.pop(name))
            for name, spec in wanted.items():
                old = current.get(name)
                if old is not None and old.spec == spec:
                    continue
                try:
                    current[name] = self._served(spec, old)
                except Exception:
                    log.exception("slice %s cannot be served over HTTP now; trying again after the next pass", name)
                    current.pop(name, None)
                    continue
                if old is None or old.spec.broker != spec.broker:
                    if name in publishers:
                        self._flush(old, publishers[name])  # with the login it was counted under
                        self._close(publishers.pop(name))
                    publishers[name] = self._publisher(spec)
            self._slices, self._publishers = current, publishers  # replaced whole: readers take no lock

    def _served(self, spec: SliceSpec, old: ServedSlice | None) -> ServedSlice:
        from edge_node.serving import manifest_of  # Ray: the gateway runs beside the slices, on the head

        manifest = load_manifest(manifest_of(spec))
        replier = Replier(spec.name, self.node, f"{manifest.name}:{manifest.version}")
        infer = self.model_call(spec)
        if old is not None:
            return ServedSlice(spec, infer, replier, old.telemetry, old.rates)
        return ServedSlice(spec, infer, replier, TelemetryWindow(gateway_client_id(spec)))

    def _publisher(self, spec: SliceSpec) -> mqtt.Client:
        client = mqtt_client(spec.broker, gateway_client_id(spec), manual_ack=False)
        client.connect_async(spec.broker.host, spec.broker.port, keepalive=spec.broker.keepalive_s)
        client.loop_start()
        return client

    @staticmethod
    def _close(publisher: mqtt.Client) -> None:
        publisher.disconnect()
        publisher.loop_stop()

    @property
    def serving(self) -> bool:
        """Whether any slice is served (the readiness probe)."""
        return bool(self._slices)

    def slice_for(self, name: str, caller: Caller) -> ServedSlice:
        served = self._slices.get(name)
        if served is None or served.spec.tenant != caller.tenant:  # another tenant's slice is not found either
            raise GatewayError(404, f"no model {name!r}: give the name of one of your slices (GET /slices)")
        return served

    def caller(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(401, "send your Lineside API token: Authorization: Bearer <token>")
        caller = self.verifier(token.strip())
        if caller is None:
            raise GatewayError(401, "unknown, revoked or expired API token; create one (POST /users/me/tokens)")
        if caller.role not in ROLES:
            raise GatewayError(403, f"role {caller.role} runs no inspections; use a factory_it or plant_manager token")
        return caller

    def _report_loop(self) -> None:
        while not self._stop.wait(self.telemetry_period_s):
            slices, publishers = self._slices, self._publishers
            for name, served in slices.items():
                if name in publishers:
                    self._flush(served, publishers[name])

    @staticmethod
    def _flush(served: ServedSlice | None, publisher: mqtt.Client) -> None:
        """Publish a slice's telemetry windows (QoS 1, as the ingress does: the control plane bills them). While
        its login is not connected the windows stay in the meter (drained later, nothing is lost)."""
        if served is None or not publisher.is_connected():
            return
        try:
            for line, window in served.telemetry.drain().items():
                topic = wire.telemetry_topic(served.spec.tenant, line, served.spec.name)
                publisher.publish(topic, window.model_dump_json().encode(), qos=1)
        except Exception:  # a lost window is a gap in a chart and a bill; log it loudly
            log.exception("publishing the HTTP gateway's telemetry of slice %s failed", served.spec.name)

    def close(self) -> None:
        self._stop.set()
        self.update([])


def body_limit(spec: SliceSpec) -> int:
    """The largest request body for ``spec``: ``MAX_IMAGES`` of its lines' largest frames in base64, and JSON."""
    policies = [spec.policy(line) for line in spec.lines]
    largest = max(policy.max_frame_bytes if policy else wire.MAX_FRAME_BYTES for policy in policies)
    return MAX_IMAGES * largest * 4 // 3 + 64 * 1024


def gateway_client_id(spec: SliceSpec) -> str:
    """The gateway's broker login of a slice (pinned client id): ``s.<app>.http`` beside the ingress's."""
    base = spec.broker.username if spec.broker.connection_logins and spec.broker.username else f"lineside-{spec.name}"
    return f"{base}.http"


def images_of(body: bytes, headers: dict[str, str]) -> tuple[InferRequest, list[bytes]]:
    """The request and its images (base64 in the JSON, or the binary extension); raises ``GatewayError``."""
    binary_header = headers.get(BINARY_HEADER)
    split = len(body)
    if binary_header is not None:
        if not binary_header.isdigit() or not 0 < int(binary_header) <= len(body):
            raise GatewayError(400, f"{BINARY_HEADER} must be a byte count within the body's {len(body)} bytes")
        split = int(binary_header)
    try:
        request = InferRequest.model_validate_json(body[:split])
    except ValidationError as e:
        raise GatewayError(400, f"the body is not a KServe v2 inference request ({e.error_count()} error(s)): "
                                f"send one BYTES input {INPUT!r}") from None  # fmt: skip
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
        raise GatewayError(400, f"input {tensor.name!r} must be BYTES of shape [n] (n encoded images)")
    count = tensor.shape[0]
    if not 1 <= count <= MAX_IMAGES:
        raise GatewayError(413 if count > MAX_IMAGES else 400, f"send 1 to {MAX_IMAGES} images per request")
    if binary_header is not None and tensor.data is None:
        size = tensor.parameters.get("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise GatewayError(400, "a binary input needs its binary_data_size parameter (a byte count)")
        images = _binary_elements(memoryview(body)[split:], size, count)
    else:
        images = [_base64(item) for item in tensor.data or []]
    if len(images) != count:
        raise GatewayError(400, f"input {tensor.name!r} declares {count} images and holds {len(images)}")
    return request, images


def _base64(item: Any) -> bytes:
    if not isinstance(item, str) or len(item) > wire.MAX_FRAME_BYTES * 4 // 3 + 4:
        raise GatewayError(400, "each element of the image input is one encoded image in base64")
    try:
        return base64.b64decode(item, validate=True)
    except ValueError:
        raise GatewayError(400, "an element of the image input is not valid base64") from None


def _binary_elements(data: memoryview, size: int, count: int) -> list[bytes]:
    """The ``count`` BYTES elements of the binary tensor extension: each a 4-byte little-endian length, then its
    bytes; more or fewer than ``count`` is refused (read no further than that)."""
    if size != len(data):
        raise GatewayError(400, f"binary_data_size {size} does not match the {len(data)} bytes after the header")
    images: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(images) == count:
            raise GatewayError(400, f"the binary input holds more than the {count} images its shape declares")
        if offset + 4 > len(data):
            raise GatewayError(400, "a binary BYTES element is cut short")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise GatewayError(400, "a binary BYTES element is longer than the body")
        images.append(bytes(data[offset : offset + length]))
        offset += length
    return images


def _binary_requested(request: InferRequest) -> bool:
    """Whether the caller asked for the output as binary data (tritonclient's default) rather than JSON."""
    wanted = [o for o in request.outputs or [] if o.get("name") == OUTPUT]
    if wanted:
        return bool((wanted[0].get("parameters") or {}).get("binary_data", False))
    return bool(request.parameters.get("binary_data_output", False))


def _respond(name: str, request: InferRequest, answers: list[str], binary: bool) -> Response:
    head: dict[str, Any] = {"model_name": name, "id": request.id or "", "outputs": []}
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "BYTES", "shape": [len(answers)]}
    if not binary:
        head["outputs"] = [{**output, "data": answers}]
        return JSONResponse(head)
    raw = b"".join(struct.pack("<I", len(a.encode())) + a.encode() for a in answers)
    head["outputs"] = [{**output, "parameters": {"binary_data_size": len(raw)}}]
    text = json.dumps(head).encode()
    return Response(text + raw, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})  # fmt: skip


def create_app(gateway: Gateway) -> FastAPI:
    """The gateway's HTTP API (served by the agent with uvicorn: ``lineside edge-node run --http-port``)."""
    app = FastAPI(title="Lineside inference (KServe v2)", docs_url="/docs", openapi_url="/openapi.json")

    @app.exception_handler(GatewayError)
    async def refused(_request: Request, error: GatewayError) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status)

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> JSONResponse:
        serving = gateway.serving
        return JSONResponse({"ready": serving}, status_code=200 if serving else 503)

    @app.get("/v2/models/{name}")
    def metadata(name: str, request: Request) -> dict[str, Any]:  # sync: FastAPI runs it off the event loop
        served = gateway.slice_for(name, gateway.caller(request.headers.get("authorization")))
        return {"name": name, "versions": [served.replier.model], "platform": "lineside-onnxruntime",
                "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": OUTPUT, "datatype": "BYTES", "shape": [-1]}],
                "parameters": {"lines": served.spec.lines}}  # fmt: skip

    @app.get("/v2/models/{name}/ready")
    def model_ready(name: str, request: Request) -> dict[str, Any]:
        gateway.slice_for(name, gateway.caller(request.headers.get("authorization")))
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Response:
        # Who asks and for which slice first, off the event loop (the token check may ask the control plane),
        # so that the body's bound is the slice's own and no body is read for a caller who may not send it.
        authorization = request.headers.get("authorization")
        served = await anyio.to_thread.run_sync(lambda: gateway.slice_for(name, gateway.caller(authorization)))
        limit = body_limit(served.spec)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GatewayError(413, f"the body is {declared} bytes; at most {limit} ({MAX_IMAGES} of the lines' "
                                    "largest frames, in base64)")  # fmt: skip
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise GatewayError(413, f"the body is over {limit} bytes; send fewer or smaller images")
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await anyio.to_thread.run_sync(_infer, served, bytes(body), headers)

    def _infer(served: ServedSlice, body: bytes, headers: dict[str, str]) -> Response:
        parsed, images = images_of(body, headers)
        line = str(parsed.parameters.get("line", served.spec.lines[0]))
        if line not in served.spec.lines:
            raise GatewayError(400, f"line {line!r} is not served by {served.spec.name}: one of {served.spec.lines}")
        request_id = parsed.id or f"http-{time.time_ns()}"
        answers = served.answer(images, line, HTTP_ROBOT, request_id)
        return _respond(served.spec.name, parsed, answers, _binary_requested(parsed))

    return app
