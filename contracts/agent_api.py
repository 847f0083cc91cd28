"""The edge agent's HTTP API (``/agent/v1``), typed once for both ends.

The control plane validates what nodes send (``NodeJoin``, ``Heartbeat``, ``ProfileReport``) and
answers ``DesiredState``; the agent builds its requests from the same classes and validates the
desired state it pulls. A node is not trusted: a stolen node token must not be able to write values
the database cannot hold or the planner would trip over, so every field a node sends is bounded and
unknown fields are refused. What the control plane sends is checked too, so that a desired state
the agent cannot apply is refused whole and the agent keeps serving from its cache.

Imports only pydantic and ``contracts.slice_spec`` (no numpy, no FastAPI), so the agent needs nothing
of the control plane to speak it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from contracts.slice_spec import REVEAL_SECRETS, SliceSpec

MAX_ID = 2**31 - 1
"""Ids and counts are 32-bit columns on every database the control plane runs on."""

RowId = Annotated[int, Field(ge=1, le=MAX_ID)]
"""A slice id a node reports: bounded like path ids, so a huge one is a 422, not the database's overflow."""

Share = Annotated[float, Field(ge=0, le=1)]
ReplicaCount = Annotated[int, Field(ge=0, le=100_000)]
ShortText = Annotated[str, Field(max_length=200)]


class _FromNode(BaseModel):
    """What a node sends: unknown fields are errors (a typo or a probe names the field)."""

    model_config = ConfigDict(extra="forbid")


class GpuInfo(_FromNode):
    """One NVIDIA GPU of a node, as ``nvidia-smi`` names it."""

    model: str = Field(min_length=1, max_length=200, description="GPU model, e.g. 'NVIDIA L4'.")
    memory_mb: int = Field(ge=0, le=MAX_ID, description="GPU memory in MiB.")


class NodeJoin(_FromNode):
    """``POST /agent/v1/join``: a one-time token and the node's inventory."""

    token: str = Field(max_length=256, description="The site's one-time join token.")
    hostname: str = Field(min_length=1, max_length=255, description="The node's host name.")
    cpus: int = Field(ge=1, le=4096, description="Logical CPUs.")
    memory_mb: int = Field(ge=1, le=MAX_ID, description="Memory in MiB.")
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64, description="[{'model': ..., 'memory_mb': ...}]")
    ray_address: str | None = Field(default=None, max_length=255, description="Ray head address this node uses.")


class SliceReport(_FromNode):
    """The actual state of one desired slice, as the head's agent found it in Serve."""

    slice_id: RowId = Field(description="Slice the report is about.")
    generation: int = Field(ge=0, le=MAX_ID, description="Generation the agent last applied.")
    healthy: bool = Field(description="Serve reports the application running with its replicas.")
    failed: bool = Field(default=False, description="The agent could not apply this generation.")
    message: str = Field(default="", max_length=2000, description="Serve's status, or why applying failed.")
    replicas: dict[ShortText, dict[ShortText, ReplicaCount]] = Field(
        default_factory=dict,
        max_length=256,
        description="Replicas per deployment and Serve replica state, e.g. {'model': {'RUNNING': 2}}.",
    )


class Utilization(_FromNode):
    """How busy the node was since its last heartbeat."""

    cpu: float = Field(ge=0, le=1, description="Share of the node's CPU time in use.")
    gpus: list[Share] = Field(default_factory=list, max_length=64, description="Share of each GPU's time in use.")


class LinkReport(_FromNode):
    """The measured round trip to another site's broker: MQTT CONNECT to CONNACK, median of a few probes."""

    site_id: RowId = Field(description="The other site.")
    rtt_ms: float = Field(ge=0, le=60_000, description="Round trip in milliseconds.")


class Heartbeat(_FromNode):
    """``POST /agent/v1/heartbeat``: liveness, inventory and (from the head's agent) the slices' actual state."""

    cpus: int | None = Field(default=None, ge=1, le=4096, description="Logical CPUs; None keeps the last known.")
    memory_mb: int | None = Field(default=None, ge=1, le=MAX_ID, description="Memory in MiB; None keeps it.")
    gpus: list[GpuInfo] | None = Field(default=None, max_length=64, description="GPUs; None keeps the last known.")
    applications: list[ShortText] | None = Field(
        default=None,
        max_length=4096,
        description="Lineside Serve applications present (the head's agent); None from worker nodes.",
    )
    ray_resources: list[ShortText] | None = Field(
        default=None, max_length=4096, description="lineside_node_<id> resources in the cluster."
    )
    utilization: Utilization | None = Field(default=None, description="CPU and GPU use since the last heartbeat.")
    slices: list[SliceReport] = Field(default_factory=list, max_length=4096, description="One per desired slice.")
    links: list[LinkReport] = Field(
        default_factory=list, max_length=1000, description="Round trips to other sites' brokers (the head)."
    )
    observed_at: AwareDatetime | None = Field(
        default=None,
        description="Set on a heartbeat the head's agent could not deliver when it made it (the control plane "
        "was unreachable), sent later, oldest first, before any live one: when it observed its slices. Only "
        "their capacity is metered, over [the node's previous heartbeat, observed_at), clamped to the control "
        "plane's clock; nothing else about the node or its slices is updated.",
    )


class ProfileReport(_FromNode):
    """``POST /agent/v1/profiles``: a profiling run's result for one model on one hardware class.

    Bounds: the planner divides by frames/s and shifts floors by the cold start, so an absurd figure
    would set a tenant's floor to its whole lease, or overflow the plan's dates."""

    model_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the ONNX file profiled.")
    hardware: str = Field(min_length=1, max_length=200, description="'cpu xN' or one of the node's GPU models.")
    frames_per_s_per_replica: float = Field(ge=0.01, le=100_000, description="Measured frames/s of one replica.")
    cold_start_s: float = Field(ge=0, le=3600, description="Seconds from starting a replica to its first answer.")


class CallerCheck(_FromNode):
    """``POST /agent/v1/callers``: whose is this API token? (the head's HTTP inference endpoint asks)."""

    token: str = Field(min_length=8, max_length=512, description="The bearer token an HTTP caller sent.")


class Caller(BaseModel):
    """The answer: the token's tenant (slug) and role; 401 for an unknown, revoked or expired token."""

    tenant: str = Field(description="Slug of the token's tenant.")
    role: str = Field(description="The token's user's role.")


class ModelRef(BaseModel):
    """The model a desired slice serves: fetched by hash from ``/agent/v1/models/{sha256}``."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the ONNX file; verified on arrival.")
    manifest: dict[str, Any] = Field(
        description="The model's manifest (contracts.manifest.Manifest) without its file name, which the agent adds."
    )


class DesiredSlice(BaseModel):
    """One slice as the agent applies it."""

    slice_id: RowId = Field(description="The slice's id, for the agent's report.")
    generation: int = Field(ge=0, le=MAX_ID, description="Bumped on every change; the agent reports what it applied.")
    model: ModelRef = Field(description="The model to serve.")
    candidate: ModelRef | None = Field(
        default=None, description="A rollout's candidate model (``spec.rollout``), served beside ``model``."
    )
    spec: SliceSpec = Field(
        description="The Serve application (manifest left out); the broker password only for the ingress's node."
    )
    home_site: str | None = Field(
        default=None,
        max_length=200,
        description="Set when this site runs another site's overflow: the home site, whose broker the ingress "
        "joins over the WAN (HTTP inference and rollouts stay at home).",
    )

    @model_validator(mode="after")
    def _candidate_with_rollout(self) -> DesiredSlice:
        if (self.candidate is None) != (self.spec.rollout is None):
            raise ValueError("a slice's candidate model and its spec's rollout come together or not at all")
        return self

    def content(self) -> dict[str, Any]:
        """The slice as JSON, secrets included: what the wire carries and what the agent's digest covers."""
        return self.model_dump(mode="json", exclude_unset=True, context={REVEAL_SECRETS: True})


class PeerBroker(BaseModel):
    """Another site's broker as this site reaches it (its WAN address)."""

    site_id: RowId = Field(description="The other site's id.")
    host: str = Field(max_length=255, description="Its broker's host as other sites reach it.")
    port: int = Field(gt=0, lt=65536, description="Its broker's port.")


class DesiredState(BaseModel):
    """``GET /agent/v1/desired``: every live slice of the node's site; level-triggered, so applying it twice
    changes nothing."""

    site: str = Field(default="", max_length=200, description="The site's name.")
    slices: list[DesiredSlice] = Field(
        default_factory=list, description="The site's live slices, and other sites' overflow placed here."
    )
    peers: list[PeerBroker] = Field(
        default_factory=list, max_length=1000, description="Other sites' brokers: the head measures the round trip."
    )

    def content(self) -> dict[str, Any]:
        """The state as JSON with the broker passwords (``SliceSpec`` masks them by default)."""
        return self.model_dump(mode="json", exclude_unset=True, context={REVEAL_SECRETS: True})


FitStage = Annotated[str, Field(max_length=100)]


class FitJob(BaseModel):
    """A model fit the site's head agent runs as a Ray task (``GET /agent/v1/fits``; also the answer to its reports).

    The photos are fetched from ``/agent/v1/fits/{fit_id}/photos/good`` (and ``.../defects`` when
    ``defect_photos`` > 0). ``status`` cancelled (or any finished status) tells the agent to stop the task."""

    fit_id: RowId = Field(description="The fit's id.")
    status: str = Field(max_length=20, description="queued, running, succeeded, failed, cancelled or timed_out.")
    name: str = Field(max_length=100, description="Name of the model to fit.")
    version: str = Field(max_length=50, description="Version of the model to fit.")
    false_reject_rate: float = Field(ge=0, le=1, description="Share of good parts the threshold may reject.")
    time_limit_s: int = Field(ge=1, le=24 * 3600, description="Seconds the fit may run; then the agent stops it.")
    defect_photos: int = Field(default=0, ge=0, le=MAX_ID, description="Defect photos to download (0: none).")


class FitJobs(BaseModel):
    """``GET /agent/v1/fits``: the site's queued and running fits."""

    fits: list[FitJob] = Field(default_factory=list, description="Oldest first.")


class FitProgress(_FromNode):
    """``POST /agent/v1/fits/{fit_id}/progress``: what the fit is doing; the answer is its ``FitJob``.

    ``running`` claims a queued fit (or reports progress on it); ``failed`` and ``timed_out`` end it.
    A fit succeeds only by ``POST /agent/v1/fits/{fit_id}/result``."""

    status: Literal["running", "failed", "timed_out"] = Field(description="The fit's status as the agent sees it.")
    stage: FitStage = Field(default="", description="What the fit is doing: decoding, features, calibrating, ...")
    progress: Share = Field(default=0.0, description="0 to 1.")
    message: str = Field(default="", max_length=2000, description="Why it failed, in words a user can act on.")
    cpu_s: float = Field(default=0.0, ge=0, le=10_000_000, description="CPU seconds the fit used so far.")
