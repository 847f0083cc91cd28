"""Lineside's wire contract: what crosses MQTT between robots and slices.

Importable without Ray, ONNX Runtime or paho so that robots, the control
plane (which derives broker ACLs from it) and the edge node share one
definition. Bump ``WIRE_VERSION`` on any incompatible change.

Topics, per robot::

    lineside/{tenant}/{line}/{robot}/frames    robot -> slice   JPEG/PNG bytes, QoS 1
    lineside/{tenant}/{line}/{robot}/results   slice -> robot   ``Result`` JSON
    lineside/{tenant}/{line}/{robot}/errors    slice -> robot   ``ErrorReply`` JSON
    lineside/{tenant}/{line}/{robot}/status    robot (will)     retained "online" / "offline"

MQTT 5 correlation data on a frame is its id (UTF-8); it and the frame's user
properties come back on the result or error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

WIRE_VERSION: Final = 1
"""Version of the topics, payload limits and JSON schemas defined here."""

TOPIC_ROOT: Final = "lineside"
"""First level of every Lineside topic."""

MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
"""Largest encoded frame (JPEG or PNG bytes) a slice accepts by default."""

BROKER_MESSAGE_LIMIT: Final = 2 * MAX_FRAME_BYTES
"""Broker-side message size limit: above the slice's, so an oversized frame reaches the
slice and gets a ``too_large`` error instead of vanishing at the broker."""

MAX_FRAME_PIXELS: Final = 16_000_000
"""Largest decoded frame, width x height, a slice accepts by default (checked before decoding)."""

MAX_FRAME_SIDE: Final = 8192
"""Longest side, in pixels, a slice accepts by default (checked before decoding)."""

MAX_FRAME_ID_BYTES: Final = 128
"""Longest frame id (correlation data) echoed back; longer ids are refused as ``bad_frame_id``."""

NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
"""Tenant, line, robot and slice names: lowercase, no MQTT wildcards or separators."""

_NAME = re.compile(NAME_PATTERN)


class TopicKind(StrEnum):
    """Last level of a robot topic."""

    FRAMES = "frames"
    RESULTS = "results"
    ERRORS = "errors"
    STATUS = "status"


class ErrorCode(StrEnum):
    """Stable codes on the errors topic; robots may switch on them."""

    BAD_IMAGE = "bad_image"
    """The payload claims JPEG/PNG but cannot be decoded: resend a valid image."""
    TOO_LARGE = "too_large"
    """The payload exceeds the byte or pixel limits: send a smaller or cropped frame."""
    UNSUPPORTED_FORMAT = "unsupported_format"
    """The payload is neither JPEG nor PNG: encode frames as JPEG or PNG."""
    BAD_FRAME_ID = "bad_frame_id"
    """The correlation data is longer than ``MAX_FRAME_ID_BYTES``: use a shorter frame id."""
    INTERNAL = "internal"
    """The slice failed on this frame; it was not judged. Retry it; tell the operator if it persists."""
    RATE_LIMITED = "rate_limited"
    """The robot sends more frames per second than its line allows; the frame was not judged.
    Send fewer frames (the detail says the limit), or ask factory IT to raise the line's ``robot_max_fps``."""


@dataclass(frozen=True)
class RobotTopic:
    """A parsed robot topic."""

    tenant: str
    line: str
    robot: str
    kind: TopicKind

    def sibling(self, kind: TopicKind) -> str:
        """The same robot's topic of another kind (e.g. results for a frame)."""
        return topic(self.tenant, self.line, self.robot, kind)


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid topic level name, else raise ``ValueError`` saying why."""
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} must match {NAME_PATTERN} (lowercase letters, digits, '-', '_')")
    return value


def topic(tenant: str, line: str, robot: str, kind: TopicKind) -> str:
    """``lineside/{tenant}/{line}/{robot}/{kind}``, with every level checked."""
    for value, what in ((tenant, "tenant"), (line, "line"), (robot, "robot")):
        check_name(value, what)
    return f"{TOPIC_ROOT}/{tenant}/{line}/{robot}/{kind.value}"


def parse_topic(value: str) -> RobotTopic:
    """Inverse of ``topic``; raises ``ValueError`` for anything else."""
    parts = value.split("/")
    if len(parts) != 5 or parts[0] != TOPIC_ROOT:
        raise ValueError(f"{value!r} is not a Lineside robot topic ({TOPIC_ROOT}/tenant/line/robot/kind)")
    _, tenant, line, robot, kind = parts
    for name, what in ((tenant, "tenant"), (line, "line"), (robot, "robot")):
        check_name(name, what)
    return RobotTopic(tenant, line, robot, TopicKind(kind))


def line_filter(tenant: str, line: str, kind: TopicKind) -> str:
    """Subscription filter for every robot's topics of one kind on one line."""
    return f"{TOPIC_ROOT}/{check_name(tenant, 'tenant')}/{check_name(line, 'line')}/+/{kind.value}"


def line_frames_filter(tenant: str, line: str) -> str:
    """Subscription filter for every robot's frames on one line."""
    return line_filter(tenant, line, TopicKind.FRAMES)


def shared_frames_filter(group: str, tenant: str, line: str) -> str:
    """Shared subscription so that the ingress replicas of slice ``group`` split one line's frames."""
    return f"$share/{check_name(group, 'slice')}/{line_frames_filter(tenant, line)}"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wire_version: Literal[1] = Field(default=WIRE_VERSION, description="Version of this schema.")
    frame_id: str = Field(description="The frame's correlation data, or the id the ingress assigned.")
    tenant: str = Field(description="Tenant (factory) the robot belongs to.")
    line: str = Field(description="Production line.")
    robot: str = Field(description="Robot that sent the frame.")
    slice: str = Field(description="Slice that handled the frame.")
    node: str = Field(description="Host that handled the frame.")
    user_properties: dict[str, str] = Field(default_factory=dict, description="The frame's MQTT 5 user properties.")


class Timings(BaseModel):
    """Where the time went, in milliseconds, measured by the slice."""

    model_config = ConfigDict(extra="forbid")

    queue: float = Field(description="From arrival at the ingress until the model call started.")
    inference: float = Field(description="Model call: decoding, preprocessing, inference, verdict.")
    total: float = Field(description="From arrival at the ingress until the result was handed to the broker.")


Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
"""A coordinate in 0..1 of the frame the robot sent: 0 is the left (top) edge, 1 the right (bottom)."""

FrameBox = tuple[Fraction, Fraction, Fraction, Fraction]
"""``[x1, y1, x2, y2]`` in 0..1 frame coordinates."""


class Location(BaseModel):
    """Where an anomaly model found the anomaly (the peak of its map) or a detector its top defect box."""

    model_config = ConfigDict(extra="forbid")
    x: Fraction = Field(description="Horizontal position of the peak (or box centre), 0..1 of the frame's width.")
    y: Fraction = Field(description="Vertical position of the peak (or box centre), 0..1 of the frame's height.")
    box: FrameBox | None = Field(
        default=None, description="Region around it, [x1, y1, x2, y2] in 0..1 frame coordinates; null if none."
    )


class Box(BaseModel):
    """One box an object detector found."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field(max_length=100, description="The detector's class.")
    confidence: Fraction = Field(description="The box's confidence.")
    box: FrameBox = Field(description="[x1, y1, x2, y2] in 0..1 frame coordinates (letterbox and crops undone).")


def defect_location(
    location: dict[str, Any] | None, boxes: list[dict[str, Any]] | None, defect_class: str | None
) -> Location | None:
    """Where a failed part's defect is, for ``FailedPart.location``: a verdict's ``location`` (anomaly
    models), else the best box of its ``defect_class`` (detectors, whose boxes come best first); None
    when the model says neither. Raises ``ValueError`` (pydantic's) for coordinates outside 0..1."""
    if location is not None:
        return Location.model_validate(location)
    best = next((b for b in boxes or () if b.get("label") == defect_class), None)
    if best is None:
        return None
    x1, y1, x2, y2 = best["box"]
    return Location(x=(x1 + x2) / 2, y=(y1 + y2) / 2, box=(x1, y1, x2, y2))


class Result(_Message):
    """JSON on ``.../results``: the verdict for one frame.

    ``location`` and ``boxes`` are left out of the JSON when null, so robots built before they existed
    read results of classifiers as before.
    """

    verdict: Literal["pass", "fail"] = Field(description="Whether the part passes inspection.")
    defect_class: str | None = Field(description="Most likely defect when the part fails, else null.")
    score: float = Field(
        description="Confidence in the reported outcome, 0..1: a classifier's probability of it; a detector's "
        "top defect box confidence on fail; for anomaly models score / (score + threshold) of the raw score "
        "on fail (0.5 at the threshold), one minus that on pass."
    )
    fail_score: float = Field(
        description="What the model's threshold is compared with: summed probability of all defect classes "
        "(classifiers), top defect box confidence (detectors, 0 if none), raw anomaly score (anomaly models)."
    )
    scores: dict[str, float] = Field(
        description="Probability of every class (classifiers), highest box confidence per class found "
        "(detectors), the raw score under the anomalous label (anomaly models)."
    )
    model: str = Field(description="Model name and version, name:version.")
    timings_ms: Timings = Field(description="Where the time went.")
    location: Location | None = Field(
        default=None, description="Anomaly models with a map: where the anomaly is (the map's peak and region)."
    )
    boxes: list[Box] | None = Field(
        default=None, description="Object detectors: every box at or above the threshold, best first."
    )

    @model_serializer(mode="wrap")
    def _leave_out_nulls(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        for name in ("location", "boxes"):
            if data.get(name, 0) is None:
                del data[name]
        return data


class ErrorReply(_Message):
    """JSON on ``.../errors``: why a frame got no verdict."""

    code: ErrorCode = Field(description="Stable error code.")
    detail: str = Field(description="What went wrong and what to do about it.")


# --- telemetry: slice -> control plane --------------------------------------------------------

TELEMETRY_ROOT: Final = "lineside-telemetry"
"""Topic tree of slice telemetry, apart from robot topics: ``lineside-telemetry/{tenant}/{line}/{slice}``."""

LATENCY_BUCKETS_MS: Final = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)
"""Upper bounds of the latency histogram; one more bucket counts everything slower. Fixed, so that
histograms of replicas and minutes add up exactly."""

THUMBNAIL_SIDE: Final = 160
"""Longest side of the thumbnails of failed parts sent with telemetry."""


def telemetry_topic(tenant: str, line: str, slice_name: str) -> str:
    """Where a slice's ingress replicas publish a line's telemetry."""
    for value, what in ((tenant, "tenant"), (line, "line"), (slice_name, "slice")):
        check_name(value, what)
    return f"{TELEMETRY_ROOT}/{tenant}/{line}/{slice_name}"


INGRESS_ROOT: Final = "lineside-ingress"


def ingress_gone_topic(tenant: str, slice_name: str) -> str:
    """Where the broker publishes, as an ingress connection's will, the client id of a slice's ingress connection
    that died and did not come back: another ingress replica of the slice then adopts its session."""
    for value, what in ((tenant, "tenant"), (slice_name, "slice")):
        check_name(value, what)
    return f"{INGRESS_ROOT}/{tenant}/{slice_name}/gone"


def latency_bucket(ms: float) -> int:
    """Index of the histogram bucket holding ``ms``."""
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        if ms <= bound:
            return index
    return len(LATENCY_BUCKETS_MS)


def histogram_quantile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, as its bucket's upper bound; None when empty."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank and count:
            return float(LATENCY_BUCKETS_MS[index]) if index < len(LATENCY_BUCKETS_MS) else float("inf")
    return float("inf")


# Bounds of every telemetry field: the control plane stores these numbers and strings, so a report
# it cannot store must fail validation (and be counted as rejected), not fail the database write.

TELEMETRY_TIME_MAX: Final = 4_102_444_800.0
"""Latest Unix time a report may carry (2100-01-01); earlier than that, every datetime holds it."""

TELEMETRY_COUNT_MAX: Final = 10_000_000
"""Most frames (or fails, errors, one histogram bucket) one window may count: far beyond a slice's rate."""

TELEMETRY_WINDOW_MAX_S: Final = 3600.0
"""Longest window one report may cover (windows are a few seconds; ``telemetry_period_s`` is at most 300)."""

TELEMETRY_ROBOTS_MAX: Final = 10_000
"""Most robots one report may list (one line's robots)."""

THUMBNAIL_B64_MAX: Final = 65_536
"""Longest base64 thumbnail (a ``THUMBNAIL_SIDE`` JPEG is a few kB)."""

UnixTime = Annotated[float, Field(ge=0, le=TELEMETRY_TIME_MAX, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=TELEMETRY_COUNT_MAX)]


class RobotActivity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frames: Count = Field(description="Frames of this robot answered in the window.")
    last_frame_at: UnixTime = Field(description="Unix time the robot's latest frame arrived.")


class FailedPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    robot: str = Field(pattern=NAME_PATTERN, description="Robot that sent the frame.")
    frame_id: str = Field(max_length=2 * MAX_FRAME_ID_BYTES, description="The frame's id (hex if not UTF-8).")
    at: UnixTime = Field(description="Unix time the verdict was given.")
    defect_class: str | None = Field(max_length=100, description="Most likely defect.")
    score: float = Field(ge=0, le=1, allow_inf_nan=False, description="Probability of that defect.")
    location: Location | None = Field(
        default=None, description="Where the defect is in the frame (anomaly peak or top defect box), if known."
    )
    thumbnail_jpeg_b64: str = Field(
        default="", max_length=THUMBNAIL_B64_MAX, description="Small JPEG of the frame, base64; empty if undecodable."
    )


class Telemetry(BaseModel):
    """JSON on ``lineside-telemetry/{tenant}/{line}/{slice}``: one ingress replica's window of one line."""

    model_config = ConfigDict(extra="forbid")
    wire_version: Literal[1] = Field(default=WIRE_VERSION, description="Version of this schema.")
    replica: str = Field(max_length=128, description="Ingress replica (client id) that saw these frames.")
    start: UnixTime = Field(description="Unix time the window began.")
    end: UnixTime = Field(description="Unix time the window ended.")
    frames: Count = Field(description="Verdicts given (pass + fail).")
    fails: Count = Field(description="Verdicts 'fail'.")
    errors: Count = Field(description="Frames answered with an error instead of a verdict.")
    error_codes: dict[ErrorCode, Count] = Field(
        default_factory=dict,
        max_length=len(ErrorCode),
        description="Error answers per code (at most ``errors`` in all); older ingresses send none. Usage "
        "products bill some codes (the robot's bad input) and not others (``internal``).",
    )
    latency_ms_histogram: list[Count] = Field(
        max_length=len(LATENCY_BUCKETS_MS) + 1,
        description="Verdict latency counts per LATENCY_BUCKETS_MS bucket (+1).",
    )
    robots: dict[Annotated[str, Field(pattern=NAME_PATTERN)], RobotActivity] = Field(
        default_factory=dict, max_length=TELEMETRY_ROBOTS_MAX, description="Activity per robot."
    )
    failed_parts: list[FailedPart] = Field(default_factory=list, max_length=20, description="Latest failed parts.")

    @model_validator(mode="after")
    def _window(self) -> Telemetry:
        if not self.start <= self.end <= self.start + TELEMETRY_WINDOW_MAX_S:
            longest = TELEMETRY_WINDOW_MAX_S
            raise ValueError(
                f"window start ({self.start}) to end ({self.end}) must run forward, {longest:.0f} s at most"
            )
        return self

    @model_validator(mode="after")
    def _error_codes(self) -> Telemetry:
        coded = sum(self.error_codes.values())
        if coded > self.errors:
            raise ValueError(f"error_codes add up to {coded}, more than errors ({self.errors})")
        return self
