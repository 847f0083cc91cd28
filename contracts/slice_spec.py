"""Slice specification: one tenant's rented inference capacity on a site.

A slice is one Ray Serve application: an MQTT ingress deployment and a model
deployment. The control plane produces these specs; the CLI can build one
from flags. Unknown fields are errors that name the field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from contracts import wire

NODE_RESOURCE_PREFIX = "lineside_node_"
"""Each node's raylet carries the custom resource ``lineside_node_<id>``; placed replicas ask for a sliver of it."""

REVEAL_SECRETS = "reveal_secrets"
"""Serialization context key: ``spec.model_dump_json(context={REVEAL_SECRETS: True})`` keeps the password."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerSpec(_Strict):
    """Where the slice's ingress connects."""

    host: str = Field(default="127.0.0.1", description="MQTT broker host.")
    port: int = Field(default=1883, gt=0, lt=65536, description="MQTT broker port.")
    username: str | None = Field(default=None, description="Ingress username, if the broker requires one.")
    password: SecretStr | None = Field(default=None, description="Ingress password.")
    connection_logins: bool = Field(
        default=False,
        description=(
            "The control plane's brokers: ``username`` is a prefix and ``password`` a base secret; each MQTT "
            "connection logs in as its own client id (<username>.<rank>, <username>.<rank>-out) with a password "
            "derived for that name, and the broker pins that client id to it."
        ),
    )
    keepalive_s: int = Field(default=30, ge=5, le=600, description="MQTT keepalive in seconds.")

    @field_serializer("password")
    def _password(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        """Masked, except where the slice hands its own spec to its replicas (``REVEAL_SECRETS``)."""
        if value is None:
            return None
        context = info.context or {}
        return value.get_secret_value() if context.get(REVEAL_SECRETS) else "**********"


def check_replica_bounds(min_replicas: int, max_replicas: int) -> None:
    """Refuse a ceiling below the floor, quoting both: the one check of it, here and in the control plane."""
    if max_replicas < min_replicas:
        raise ValueError(f"max_replicas ({max_replicas}) must be >= min_replicas ({min_replicas})")


class ReplicaSpec(_Strict):
    """Model replicas: Ray Serve autoscales between the bounds.

    Reactive autoscaling inside the bounds: Ray's defaults (30 s up, 600 s down) are for web traffic;
    a production line wants new capacity within seconds and few flips while output is steady.
    """

    min_replicas: int = Field(default=1, ge=0, le=256, description="Replica floor: replicas kept however idle.")
    max_replicas: int = Field(default=1, ge=1, le=256, description="Replica ceiling (the lease limit).")
    target_ongoing_requests: float = Field(
        default=2.0, gt=0, le=1000, description="Model calls in flight per replica that autoscaling aims for."
    )
    upscale_delay_s: float = Field(
        default=3.0, ge=0, le=600, description="Sustained load needed before adding replicas."
    )
    downscale_delay_s: float = Field(
        default=60.0, ge=0, le=3600, description="Sustained idleness before removing replicas."
    )
    downscale_utilization: float = Field(
        default=0.7, gt=0, le=1, description="Remove a replica only if the rest would run at or below this share."
    )

    @model_validator(mode="after")
    def _bounds(self) -> ReplicaSpec:
        check_replica_bounds(self.min_replicas, self.max_replicas)
        return self


class BatchSpec(_Strict):
    """How frames are grouped on their way to the model."""

    max_batch_size: int = Field(default=32, ge=1, le=512, description="Most frames in one ONNX Runtime call.")
    batch_wait_ms: float = Field(default=5.0, ge=0, le=1000, description="Longest wait to fill a model batch.")
    ingress_batch: int = Field(default=16, ge=1, le=512, description="Most frames the ingress sends per model call.")
    ingress_wait_ms: float = Field(default=4.0, ge=0, le=1000, description="Longest wait to fill an ingress batch.")
    ingress_concurrency: int = Field(default=3, ge=1, le=64, description="Model calls in flight per ingress replica.")

    @model_validator(mode="after")
    def _ingress_fits(self) -> BatchSpec:
        if self.ingress_batch > self.max_batch_size:
            raise ValueError(f"ingress_batch ({self.ingress_batch}) must be <= max_batch_size ({self.max_batch_size})")
        return self


class DecodeAt(StrEnum):
    """Where a slice's frames are decoded and resized to the model's input (``ResourceSpec.decode_at``)."""

    AUTO = "auto"
    MODEL = "model"
    INGRESS = "ingress"


class ResourceSpec(_Strict):
    """What each replica reserves on its node."""

    cpus_per_replica: float = Field(default=1.0, gt=0, le=64, description="CPUs reserved per model replica.")
    gpus_per_replica: float = Field(default=0.0, ge=0, le=1, description="GPU fraction per model replica (0 on CPU).")
    ingress_cpus: float = Field(default=0.25, gt=0, le=8, description="CPUs reserved per ingress replica.")
    ort_threads: int = Field(
        default=0, ge=0, le=64, description="ONNX Runtime threads per model replica; 0 = chosen by the node."
    )
    providers: list[str] | None = Field(default=None, description="ONNX Runtime providers; default best available.")
    decode_at: DecodeAt = Field(
        default=DecodeAt.AUTO,
        description="Where frames are decoded and resized: in the model replica, in the ingress (which sends the "
        "model the resized pixels), or auto = chosen by the node from its measurement (model where it cannot say).",
    )


KNOB_SECTIONS: dict[str, type[BaseModel]] = {"replicas": ReplicaSpec, "batch": BatchSpec, "resources": ResourceSpec}
"""The spec's sections that hold a slice's knobs (the control plane and the CLI keep them flat)."""


def knob_sections(knobs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat knob values (a stored slice, CLI flags) sorted into the sections whose fields they name.

    ``{"min_replicas": 2, "max_batch_size": 8}`` -> ``{"replicas": {"min_replicas": 2}, "batch":
    {"max_batch_size": 8}, "resources": {}}``; names no section has are left out.
    """
    return {
        section: {name: knobs[name] for name in model.model_fields if name in knobs}
        for section, model in KNOB_SECTIONS.items()
    }


class FramePolicy(_Strict):
    """What each robot of a line may send (the line's ``robot_max_fps`` and ``robot_max_frame_bytes``)."""

    max_fps: float = Field(default=30.0, gt=0, le=1000, description="Frames per second per robot (token bucket).")
    max_frame_bytes: int = Field(
        default=wire.MAX_FRAME_BYTES, ge=1, le=wire.MAX_FRAME_BYTES, description="Largest frame per robot, bytes."
    )


class RolloutStage(StrEnum):
    """What a rollout's step does with the candidate model."""

    SHADOW = "shadow"  # the candidate judges every frame too; only the current model's verdicts are published
    CANARY = "canary"  # the candidate judges and answers the frames of a share of robots
    FULL = "full"  # the candidate is the slice's model; at the edge, the candidate answers every robot meanwhile


ROUTING_BUCKETS = 10_000
"""Robots are routed by a hash of their line and name into this many buckets; a canary takes the lowest ones."""


def robot_bucket(line: str, robot: str) -> int:
    """The robot's routing bucket: the same on every ingress replica, in every process, after every restart."""
    digest = hashlib.sha256(f"{line}/{robot}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % ROUTING_BUCKETS


def routes_to_candidate(line: str, robot: str, share: float) -> bool:
    """Whether a canary of ``share`` (0-1) sends this robot's frames to the candidate. A rising share only adds
    robots: one routed to the candidate at 10 % stays there at 50 %."""
    return robot_bucket(line, robot) < round(share * ROUTING_BUCKETS)


class RolloutSpec(_Strict):
    """A model rollout in progress on the slice: the candidate runs as a second model deployment beside the
    current one, whose replicas keep running unchanged."""

    rollout_id: int = Field(ge=1, description="The control plane's rollout id; reports carry it back.")
    step: int = Field(ge=0, le=100, description="The rollout's step; reports of another step are not counted.")
    stage: RolloutStage = Field(
        description="shadow (judge every frame, publish nothing), canary (answer a share of robots) or full (answer "
        "every robot: the edge's handover while the slice is redeployed with the candidate as its model)."
    )
    share: float = Field(default=0.0, ge=0, le=1, description="Canary: the share of robots the candidate answers.")
    manifest: Path | None = Field(
        default=None, description="The candidate's manifest on this node (the agent fills it in, like ``manifest``)."
    )
    replicas: int = Field(default=1, ge=1, le=256, description="Most replicas of the candidate's deployment.")

    @model_validator(mode="after")
    def _share_fits_stage(self) -> RolloutSpec:
        if self.stage == RolloutStage.CANARY and not 0 < self.share < 1:
            raise ValueError(f"a canary's share ({self.share}) must be between 0 and 1")
        return self

    def candidate_answers(self, line: str, robot: str) -> bool:
        """Whether the candidate's verdict is the one this robot sees."""
        if self.stage == RolloutStage.FULL:
            return True
        return self.stage == RolloutStage.CANARY and routes_to_candidate(line, robot, self.share)


RolloutCount = Annotated[int, Field(ge=0, le=10_000_000)]


class ModelCounts(_Strict):
    """One model's answers in a rollout report."""

    frames: RolloutCount = Field(default=0, description="Verdicts (pass + fail).")
    fails: RolloutCount = Field(default=0, description="Verdicts 'fail'.")
    errors: RolloutCount = Field(default=0, description="Frames the model failed on (internal errors).")
    latency_ms_histogram: list[RolloutCount] = Field(
        default_factory=lambda: [0] * (len(wire.LATENCY_BUCKETS_MS) + 1),
        max_length=len(wire.LATENCY_BUCKETS_MS) + 1,
        description="Latency (arrival to verdict) per wire.LATENCY_BUCKETS_MS bucket (+1).",
    )


class RolloutReport(_Strict):
    """JSON an ingress replica publishes beside its telemetry (same topic) while a rollout runs: both models'
    answers in the window, and in shadow how often their verdicts agreed."""

    kind: Literal["rollout"] = Field(default="rollout", description="Tells the report from a telemetry window.")
    rollout_id: int = Field(ge=1, le=2**31 - 1, description="The rollout (RolloutSpec.rollout_id).")
    step: int = Field(ge=0, le=100, description="The step the replica ran (RolloutSpec.step).")
    replica: str = Field(max_length=128, description="Ingress replica (client id).")
    start: float = Field(ge=0, le=wire.TELEMETRY_TIME_MAX, description="Unix time the window began.")
    end: float = Field(ge=0, le=wire.TELEMETRY_TIME_MAX, description="Unix time the window ended.")
    current: ModelCounts = Field(default_factory=ModelCounts, description="The current model's answers.")
    candidate: ModelCounts = Field(default_factory=ModelCounts, description="The candidate's answers.")
    agreement: dict[Literal["pass/pass", "pass/fail", "fail/pass", "fail/fail"], RolloutCount] = Field(
        default_factory=dict, description="Shadow: frames by current/candidate verdict."
    )
    shadow_skipped: RolloutCount = Field(
        default=0, description="Shadow: frames the candidate did not judge because it lagged behind."
    )


INGRESS_SLOTS = 2
"""Broker logins (client ids) per ingress rank: an old and a new version of the ingress run side by side."""


class SliceSpec(_Strict):
    """One slice: which tenant's lines it serves, with which model and how much capacity."""

    name: str = Field(description="Slice name: Serve application name and shared-subscription group.")
    tenant: str = Field(description="Tenant (factory) whose frames this slice judges.")
    lines: list[str] = Field(min_length=1, description="Production lines whose robots this slice serves.")
    manifest: Path | None = Field(
        default=None, description="Model manifest (JSON) on this node; default: the bundled model."
    )
    latency_budget_ms: float = Field(default=100.0, gt=0, description="Line's latency budget for one verdict.")
    ingress_replicas: int = Field(default=1, ge=1, le=64, description="MQTT ingress replicas sharing the lines.")
    max_inflight_frames: int = Field(
        default=64, ge=1, le=65535, description="Unacknowledged frames per ingress replica (MQTT receive maximum)."
    )
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec, description="Model replica bounds and autoscaling.")
    batch: BatchSpec = Field(default_factory=BatchSpec, description="Batching on the way to the model.")
    resources: ResourceSpec = Field(default_factory=ResourceSpec, description="Per-replica reservations.")
    broker: BrokerSpec = Field(default_factory=BrokerSpec, description="MQTT broker of the site.")
    placement: dict[str, int] | None = Field(
        default=None,
        description=(
            "Replicas per node, keyed by the node's Ray resource (lineside_node_<id>), as the control plane's "
            "scheduler placed them; None lets Ray place the model replicas anywhere."
        ),
    )
    ingress_slot: int = Field(
        default=0,
        ge=0,
        lt=INGRESS_SLOTS,
        description=(
            "Which of the two broker logins (client ids) per ingress rank this version of the ingress uses. The "
            "agent alternates it whenever it applies a changed slice, so the new ingress replica of a rolling "
            "update never takes over the MQTT session of the old one while that one drains its frames."
        ),
    )
    telemetry_period_s: float | None = Field(
        default=None,
        gt=0,
        le=300,
        description=(
            "Seconds between the per-line telemetry each ingress replica publishes on "
            "lineside-telemetry/{tenant}/{line}/{slice} for the control plane's dashboard; None: none. "
            "The broker must allow the ingress to publish there (the control plane's broker ACLs do)."
        ),
    )
    frame_policy: dict[str, FramePolicy] = Field(
        default_factory=dict,
        description="Per line: what each robot may send; frames beyond it are answered rate_limited or too_large.",
    )
    rollout: RolloutSpec | None = Field(
        default=None, description="A model rollout in progress: the candidate beside the current model."
    )
    inject_delay_ms: float = Field(
        default=0.0, ge=0, le=60_000, description="Fault injection: extra sleep per model call (tests only)."
    )

    @field_validator("name", "tenant")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        return wire.check_name(value, "name")

    @field_validator("lines")
    @classmethod
    def _lines_topic_safe(cls, value: list[str]) -> list[str]:
        return [wire.check_name(line, "line") for line in value]

    @field_validator("placement")
    @classmethod
    def _placement_counts(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None:
            bad = {k: v for k, v in value.items() if v < 1 or not k.startswith(NODE_RESOURCE_PREFIX)}
            if bad or not value:
                raise ValueError(f"placement {value} needs >= 1 replica per {NODE_RESOURCE_PREFIX}<id> resource")
        return value

    def policy(self, line: str) -> FramePolicy | None:
        """The frame policy of ``line``; None (no rate limit, the wire's size limit) where the spec names none,
        as in slices run from CLI flags: the control plane always sends its lines' policies."""
        return self.frame_policy.get(line)

    @property
    def frame_filters(self) -> list[str]:
        """Shared subscriptions of this slice's ingress replicas."""
        return [wire.shared_frames_filter(self.name, self.tenant, line) for line in self.lines]
