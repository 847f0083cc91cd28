"""A slice sized to its node: ONNX Runtime threads per model replica, from the node's cores and a measurement.

A model replica reserves ``cpus_per_replica`` of Ray's logical CPUs, and until now ran that many
ONNX Runtime threads (at least one). A slice of one replica at one CPU on a two-core node left a core
idle while the model replica sat at 100 % of the other (issue 16). Threads are not a reservation: a
replica may use cores its slice has not reserved when nothing else needs them. So, unless the slice
says how many threads (``ResourceSpec.ort_threads`` above 0, which always wins), each replica gets
the thread count that measured fastest within its share of the node's cores:

* its share: the node's cores divided by the most replicas of this slice one node may hold (the
  placement's largest count, or ``max_replicas`` without a placement), at least one core;
* measured: one replica's frames/s (decode, preprocess, infer; ``profiling.profile``) at each
  candidate count up to that share, the best of ``ROUNDS`` interleaved runs; the fewest threads
  within 10 % of the best win, since a thread that adds little still takes a core from the ingress
  and the broker.

A slice that leaves its model replicas to the sizing (``lineside slice run`` and ``lineside bench
pipeline`` without a replica count: a slice run on its own machine, not leased) also gets its replica count:
the layout of the node's cores, ``replicas x threads``, whose estimated frames/s (replicas times one
replica's measured frames/s at those threads) is the best, the fewest replicas within 10 % of it. One
replica's batches run one after another, so a second thread mostly waits on the first; two replicas on
one thread each overlap theirs (the heavy reference model: 0.83 of the machine's limit against 0.61 for
one replica on two threads, BENCHMARKS.md).

What the sizing leaves as it was, and why:

* a leased slice's model replicas: the plant leases them (and pays per replica); the autoscaler moves
  within the lease;
Where frames are decoded (``ResourceSpec.decode_at`` "auto"; "model" or "ingress" always win), from the
same measurement: one replica's frames/s ``F`` includes decoding and resizing, ``d`` seconds a frame
(``ProfileResult.decode_ms``). Without the decoding a replica would judge ``1 / (1/F - d)``. Decoding
moves to the ingress only when the node has cores the model replicas' threads leave idle and those can
decode what the replicas then judge: estimated ``min(R / (1/F - d), idle_cores / d)`` frames/s against
``R x F``, and only if that is better by more than ``NEAR_BEST`` leaves (the pixels cross Ray, and the
ingress's cores are the broker's too). So a slice whose replicas fill the node decodes in the model
replica (every layout ``layout`` picks on a CPU node); a GPU replica, or a lease of fewer replicas than
the node has cores, decodes in the ingress. A frame decoded in the ingress crosses Ray as uint8 pixels
at the model's input size (48 KB at 128 px, 150 KB at 224 px), not as a float tensor.

Ingress replicas: with decoding in the ingress, a slice run on its own gets as many as the decoding
needs cores (``ceil(frames/s x d)``, at most the idle cores and ``MAX_SIZED_INGRESS``). Otherwise the
slice's own count stands: a leased slice's ingress logins on the broker are the control plane's (one
replica; its decoding runs on the ingress's concurrent model calls), and one ingress answered 553
frames/s with the bundled model on this project's 2-core machine, 2.8 times the seed plant's 100
robots at 2 fps (BENCHMARKS.md).

The node's cores are those of the node the agent runs on (the head); a worker node of another size gets
the same choice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from contracts.slice_spec import DecodeAt, SliceSpec
from edge_node.profiling import ProfileResult, profile

log = logging.getLogger(__name__)

NEAR_BEST = 0.9
"""A thread count within this share of the best measured frames/s is as good (fewer threads win)."""

ROUNDS = 2
"""Each count is measured this many times, interleaved with the others (one short run each was noise: a heavy
model measured 78 and 83 frames/s at 1 and 2 threads where ONNX Runtime alone did 69 and 105)."""

Profiler = Callable[..., ProfileResult]


@dataclass(frozen=True)
class Sizing:
    """The configuration chosen for a slice's model replicas on a node, and what it was chosen from."""

    ort_threads: int
    cores: int
    replicas_per_node: int
    measured: dict[int, ProfileResult] = field(default_factory=dict)
    explicit: bool = False
    replicas: int | None = None
    """Model replicas chosen with the threads (a slice that left them to the sizing); None: the slice's own."""
    decode_at: str = "model"
    """Where frames are decoded: "model" or "ingress" (``place_decoding``)."""
    ingress_replicas: int | None = None
    """Ingress replicas chosen for the decoding (a slice run on its own); None: the slice's own."""

    @property
    def measured_fps(self) -> dict[int, float]:
        return {t: r.frames_per_s_per_replica for t, r in self.measured.items()}

    def describe(self) -> str:
        return f"{self._models()}; {self._decoding()}"

    def _models(self) -> str:
        measured = ", ".join(f"{t} thread(s) {fps:.0f} frames/s" for t, fps in sorted(self.measured_fps.items()))
        if self.replicas is not None:
            threads = "as the slice says" if self.explicit else f"measured one replica at {measured}"
            return (f"{self.replicas} model replica(s) of {self.ort_threads} ONNX Runtime thread(s) on "
                    f"{self.cores} cores ({threads})")  # fmt: skip
        if self.explicit:
            return f"{self.ort_threads} ONNX Runtime thread(s) per replica, as the slice says"
        return (f"{self.ort_threads} ONNX Runtime thread(s) per replica: {self.cores} cores, up to "
                f"{self.replicas_per_node} replica(s) on a node; measured {measured}")  # fmt: skip

    def _decoding(self) -> str:
        where = f"frames decoded in the {self.decode_at}"
        if self.ingress_replicas is not None:
            where += f" ({self.ingress_replicas} ingress replica(s))"
        run = self.measured.get(self.ort_threads)
        return f"{where}, decoding measured {run.decode_ms:.2f} ms a frame" if run and run.decode_ms else where


def replicas_per_node(spec: SliceSpec) -> int:
    """The most model replicas of ``spec`` that one node may hold."""
    if spec.placement:
        return max(spec.placement.values())
    return max(spec.replicas.max_replicas, 1)


def candidates(share: int) -> list[int]:
    """Thread counts worth measuring up to ``share`` cores: 1, 2, 4, ... and ``share`` itself."""
    counts, t = [], 1
    while t < share:
        counts.append(t)
        t *= 2
    return [*counts, max(share, 1)]


def choose(measured: dict[int, float]) -> int:
    """The fewest threads whose frames/s are within ``NEAR_BEST`` of the best measured."""
    best = max(measured.values())
    return min(t for t, fps in measured.items() if fps >= NEAR_BEST * best)


MAX_SIZED_REPLICAS = 8
"""The most model replicas the sizing gives a slice run on its own: each holds its own model (250-550 MB with the
reference models), so a 64-core server would otherwise get 64 of them; ask for more with ``--max-replicas``."""


def layout(measured: dict[int, float], cores: int) -> tuple[int, int]:
    """``(replicas, threads)`` filling ``cores``: the best estimated frames/s (replicas x one replica's at its
    threads), the fewest replicas within ``NEAR_BEST`` of it (each replica holds its own model in memory), at
    most ``MAX_SIZED_REPLICAS``."""
    fits = {t: min(max(cores // t, 1), MAX_SIZED_REPLICAS) for t in measured}
    estimated = {(fits[t], t): fits[t] * fps for t, fps in measured.items()}
    best = max(estimated.values())
    return min((r, t) for (r, t), fps in estimated.items() if fps >= NEAR_BEST * best)


MAX_SIZED_INGRESS = 4
"""The most ingress replicas the sizing gives a slice run on its own (each holds a broker session)."""


def idle_cores(replicas: int, threads: int, cores: int, on_gpu: bool = False) -> int:
    """The node's cores that ``replicas`` model replicas of ``threads`` threads leave free (a GPU replica's threads
    take none)."""
    return cores - (0 if on_gpu else replicas * threads)


def place_decoding(
    run: ProfileResult, replicas: int, threads: int, cores: int, on_gpu: bool = False
) -> tuple[str, float]:
    """("model" or "ingress", the estimated frames/s of the slice's model replicas so) for ``replicas`` replicas
    of ``threads`` threads, one of which measured ``run``; a GPU replica's threads take no core."""
    with_decode = replicas * run.frames_per_s_per_replica
    frame_s = 1 / run.frames_per_s_per_replica
    decode_s = run.decode_ms / 1000
    idle = idle_cores(replicas, threads, cores, on_gpu)
    if decode_s <= 0 or idle < 1 or decode_s >= frame_s:
        return "model", with_decode
    in_ingress = min(replicas / (frame_s - decode_s), idle / decode_s)
    return ("ingress", in_ingress) if in_ingress * NEAR_BEST > with_decode else ("model", with_decode)


def size(
    spec: SliceSpec, manifest: Path, cores: int, *, profiler: Profiler = profile, choose_replicas: bool = False
) -> Sizing:
    """Choose ``spec``'s ONNX Runtime threads per replica on a node of ``cores`` cores (measures unless explicit)
    and where its frames are decoded; with ``choose_replicas`` (a slice run on its own machine, that left its
    replica count open), the number of model replicas too, and of ingress replicas if they decode."""
    per_node = cores if choose_replicas else replicas_per_node(spec)
    if spec.resources.ort_threads:
        replicas = max(cores // spec.resources.ort_threads, 1) if choose_replicas else None
        where = "model" if spec.resources.decode_at == "auto" else spec.resources.decode_at
        return Sizing(spec.resources.ort_threads, cores, per_node, explicit=True, replicas=replicas,
                      decode_at=where)  # fmt: skip
    share = max(1, cores // per_node) if not choose_replicas else max(cores, 1)
    batch = spec.batch.max_batch_size
    measured: dict[int, ProfileResult] = {}
    for _ in range(ROUNDS):  # interleaved, the best of each: a machine's noise hits every count alike
        for t in candidates(share):
            run = profiler(manifest, threads=t, batch=batch)
            if t not in measured or run.frames_per_s_per_replica > measured[t].frames_per_s_per_replica:
                measured[t] = run
    fps = {t: r.frames_per_s_per_replica for t, r in measured.items()}
    on_gpu = spec.resources.gpus_per_replica > 0
    if choose_replicas and not on_gpu:
        replicas, threads = layout(fps, cores)
    else:  # a GPU replica's threads feed the GPU: the slice's own replicas (one per GPU share), not the cores'
        replicas, threads = (spec.replicas.max_replicas if on_gpu else per_node), choose(fps)
    decode_at, estimated = place_decoding(measured[threads], replicas, threads, cores, on_gpu)
    if spec.resources.decode_at != "auto":
        decode_at = spec.resources.decode_at
    ingress = None
    if choose_replicas and decode_at == "ingress" and spec.resources.decode_at == "auto":
        needed = math.ceil(estimated * measured[threads].decode_ms / 1000)
        idle = idle_cores(replicas, threads, cores, on_gpu)
        ingress = max(spec.ingress_replicas, min(needed, max(idle, 1), MAX_SIZED_INGRESS))
    return Sizing(threads, cores, per_node if not choose_replicas else replicas, measured,
                  replicas=replicas if choose_replicas else None, decode_at=decode_at,
                  ingress_replicas=ingress)  # fmt: skip


def sized(
    spec: SliceSpec,
    ort_threads: int,
    replicas: int | None = None,
    cores: int | None = None,
    *,
    decode_at: str | None = None,
    ingress_replicas: int | None = None,
) -> SliceSpec:
    """``spec`` with the chosen threads (and ``decode_at``) written in (what its replicas are started with);
    with ``replicas`` (and the node's ``cores``), that many model replicas, and ``ingress_replicas`` if given,
    each model replica reserving its share of the cores the ingress replicas leave (Ray places by
    reservations, so all of them must fit)."""
    resources = spec.resources.model_copy(update={"ort_threads": ort_threads})
    if decode_at is not None:
        resources.decode_at = DecodeAt(decode_at)
    update: dict[str, object] = {}
    ingress = spec.ingress_replicas
    if ingress_replicas is not None:
        ingress = update["ingress_replicas"] = ingress_replicas
        resources.ingress_cpus = _down(min(resources.ingress_cpus, 1.0 / ingress_replicas))
    if replicas is not None:
        assert cores is not None, "replicas are sized for a node's cores"
        left = max(cores - resources.ingress_cpus * ingress, 0.1)
        resources.cpus_per_replica = _down(min(resources.cpus_per_replica, left / replicas))
        update["replicas"] = spec.replicas.model_copy(update={"min_replicas": replicas, "max_replicas": replicas})
    return spec.model_copy(update={**update, "resources": resources})


def _down(cpus: float) -> float:
    """``cpus`` to three decimals, rounded down: rounded up, four replicas of 0.938 and an ingress of 0.25 asked
    Ray for 4.002 of 4 CPUs, and the last replica never started."""
    return math.floor(cpus * 1000 + 1e-9) / 1000


def apply(spec: SliceSpec, chosen: Sizing, cores: int, min_replicas: int = 0) -> SliceSpec:
    """``spec`` as ``chosen`` sizes it (``sized`` with every choice the sizing made)."""
    replicas = None if chosen.replicas is None else max(chosen.replicas, min_replicas)
    return sized(spec, chosen.ort_threads, replicas, cores, decode_at=chosen.decode_at,
                 ingress_replicas=chosen.ingress_replicas)  # fmt: skip
