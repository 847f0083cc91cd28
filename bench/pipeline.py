"""End-to-end benchmark of the data path, with its baselines measured in the same run.

One run, one model, one machine (broker, Ray and the load generator all on it):

Robots send JPEG frames, as cameras streaming at line speed do (the generator's
PNG frames decode ~15x slower and are measured in ``bench.runtime_throughput``).

(a) raw ONNX Runtime throughput at its best batch size and thread count;
(b) end-to-end throughput robots -> broker -> ingress -> model -> broker -> robots at saturation;
(c) latency p50/p99 at 50 % of the end-to-end throughput measured in (b);
(d) an MQTT echo baseline: the same frames through the same broker to a trivial
    consumer that publishes a tiny reply, i.e. what the broker and clients cost alone;
(e) decoding and preprocessing those frames to the model's input, in one process per core.

The machine's limit for the data path: when every stage shares the same cores, a frame costs the sum of
its stages' CPU time, so ``limit_fps = 1 / (1/raw_ort_fps + 1/echo_fps + 1/decode_fps)``, each measured
here on all cores; ``efficiency_vs_limit = e2e_fps / limit_fps`` is what the slice wastes. With the model
on a GPU the limit is ``min(raw_ort_fps, 1 / (1/echo_fps + 1/decode_fps))``.

    lineside bench pipeline --duration 20 --json
    lineside bench pipeline --model reference --json     # MobileNetV2-class, 224 px (models/reference.py)
    lineside bench pipeline --model path/to/NAME.manifest.json
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.runtime_throughput import measure as measure_runtime
from bench.runtime_throughput import rate
from contracts import wire
from contracts.manifest import load_manifest
from contracts.slice_spec import BatchSpec, BrokerSpec, DecodeAt, ReplicaSpec, ResourceSpec, SliceSpec
from edge_node import cluster, sizing
from edge_node.broker import MosquittoBroker
from edge_node.imaging import FrameLimits, Preprocessor
from edge_node.settings import EdgeSettings
from models import BUNDLED_MANIFEST, reference
from robots.simulate import Simulation, render_pool

TENANT, LINE = "bench", "line-1"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class EchoConsumer:
    """Trivial consumer: answers every frame with a tiny JSON result, nothing else."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(wire.shared_frames_filter("echo", TENANT, LINE), qos=1)
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        robot = wire.parse_topic(msg.topic)
        correlation: bytes = getattr(msg.properties, "CorrelationData", b"?")
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        reply = wire.Result(
            frame_id=correlation.decode(), tenant=robot.tenant, line=robot.line, robot=robot.robot, slice="echo",
            node="bench", verdict="pass", defect_class=None, score=1.0, fail_score=0.0, scores={}, model="echo",
            timings_ms=wire.Timings(queue=0, inference=0, total=0),
        )  # fmt: skip
        client.publish(robot.sibling(wire.TopicKind.RESULTS), reply.model_dump_json(), qos=1, properties=props)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _stream(broker: MosquittoBroker, pool: list[tuple[str, bytes]], robots: int, fps: float, seconds: float,
            window: int) -> dict[str, Any]:  # fmt: skip
    sim = Simulation(broker.host, broker.port, tenant=TENANT, line=LINE, robots=robots, fps=fps, pool=pool,
                     timeout_s=30, retries=0, window=window)  # fmt: skip
    return sim.run(seconds).summary()


def _decode_rate(manifest: Path, frames: list[bytes], seconds: float) -> float:
    """Frames per second one process decodes and preprocesses to ``manifest``'s input (run in a worker)."""
    prepare = Preprocessor(load_manifest(manifest), FrameLimits.from_settings(EdgeSettings()))
    return rate(lambda: [prepare(frame) for frame in frames], len(frames), seconds)


def decode_fps(manifest: Path, frames: list[bytes], seconds: float) -> float:
    """Decoding and preprocessing on all cores: one process per core, their rates added."""
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_rate, [manifest] * workers, [frames] * workers, [0.2] * workers))  # imports, warm
        return sum(pool.map(_decode_rate, [manifest] * workers, [frames] * workers, [seconds] * workers))


def limit_fps(raw_fps: float, echo: float, decode: float, model_on_gpu: bool = False) -> float:
    """The data path's limit on this machine (module docstring)."""
    if model_on_gpu:
        return min(raw_fps, 1 / (1 / echo + 1 / decode))
    return 1 / (1 / raw_fps + 1 / echo + 1 / decode)


def resolve_model(model: str | None) -> Path:
    """``None``: the bundled model; ``reference``: the heavy reference model (built on first use); else a
    manifest path."""
    if model is None:
        return BUNDLED_MANIFEST
    if model == "reference":
        return reference.cached()
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {model}: give a NAME.manifest.json, 'reference', or nothing")
    return path


def run(duration_s: float, robots: int, batch: int, ort_threads: int, ingress_concurrency: int = 3,
        manifest: Path = BUNDLED_MANIFEST, model_replicas: int = 0, ingress_replicas: int = 0,
        decode_at: DecodeAt = DecodeAt.AUTO) -> dict[str, Any]:  # fmt: skip
    _log("(a) raw ONNX Runtime throughput by batch size and thread count...")
    raw = measure_runtime([8, 32, 64], [1, 2], min_seconds=max(duration_s / 6, 1.0), manifest=manifest)
    best = max(raw["results"], key=lambda r: r["raw_ort_frames_per_s"])
    _log(f"    best: batch {best['batch']}, {best['threads']} threads: {best['raw_ort_frames_per_s']} frames/s")
    pool = render_pool(96, jpeg_only=True)
    _log("(e) decoding and preprocessing on all cores...")
    decode = decode_fps(manifest, [data for _, data in pool], seconds=max(duration_s / 4, 1.0))
    _log(f"    decode: {decode:.0f} frames/s")
    with tempfile.TemporaryDirectory(prefix="lineside-bench-") as workdir, MosquittoBroker(Path(workdir)) as broker:
        _log("(d) MQTT echo baseline...")
        echo = EchoConsumer(broker.host, broker.port)
        echo_report = _stream(broker, pool, robots, fps=10_000, seconds=duration_s, window=16)
        echo.stop()
        _log(f"    echo: {echo_report['throughput_fps']} frames/s")

        spec = SliceSpec(
            name="bench", tenant=TENANT, lines=[LINE], broker=BrokerSpec(port=broker.port), manifest=manifest,
            replicas=ReplicaSpec(min_replicas=max(model_replicas, 1), max_replicas=max(model_replicas, 1)),
            ingress_replicas=max(ingress_replicas, 1),
            batch=BatchSpec(max_batch_size=batch, batch_wait_ms=1.0, ingress_batch=min(batch, 32), ingress_wait_ms=1.0,
                            ingress_concurrency=ingress_concurrency),
            # Every replica must fit on the machine's cores: the model replicas share one core's worth of
            # reservation, the ingress replicas a quarter each (or less), as Ray only counts reservations.
            resources=ResourceSpec(cpus_per_replica=round(1.0 / max(model_replicas, 1), 3), ort_threads=ort_threads,
                                   ingress_cpus=round(min(0.25, 1.0 / max(ingress_replicas, 1)), 3),
                                   decode_at=decode_at),
            max_inflight_frames=256,
        )  # fmt: skip
        cores = os.cpu_count() or 1  # 0 threads, 0 replicas: as a slice run on its own sizes itself
        chosen = sizing.size(spec, manifest, cores, choose_replicas=not model_replicas)
        _log(f"    sizing: {chosen.describe()}")
        if ingress_replicas:  # the bench's own count wins over the decoding's
            chosen = dataclasses.replace(chosen, ingress_replicas=None)
        spec = sizing.apply(spec, chosen, cores)
        cluster.start()
        try:
            cluster.apply_slice(spec)
            _log("    warming up the slice...")
            _stream(broker, pool, robots, fps=10_000, seconds=3, window=16)
            _log("(b) end-to-end throughput at saturation...")
            saturated = _stream(broker, pool, robots, fps=10_000, seconds=duration_s, window=16)
            e2e_fps = saturated["throughput_fps"]
            _log(f"    end to end: {e2e_fps} frames/s")
            _log("(c) latency at 50% of that...")
            half = _stream(broker, pool, robots, fps=e2e_fps * 0.5 / robots, seconds=duration_s, window=1000)
            _log(f"    p50 {half['p50_ms']} ms, p99 {half['p99_ms']} ms")
            processes = cluster.slice_processes(spec)
            ingress_rss, model_rss = processes["ingress"]["rss_mb"], processes["model"]["rss_mb"]
        finally:
            cluster.stop(process_exiting=True)  # the command ends with cluster.exit_now
    raw_fps, echo_fps = best["raw_ort_frames_per_s"], echo_report["throughput_fps"]
    limit = limit_fps(raw_fps, echo_fps, decode, model_on_gpu=raw["providers"][0] != "CPUExecutionProvider")
    return {
        "benchmark": "pipeline",
        "model": raw["model"],
        "limit_fps": round(limit, 1),
        "efficiency_vs_limit": round(e2e_fps / limit, 3),
        "decode_fps": round(decode, 1),
        "e2e_vs_echo": round(e2e_fps / echo_fps, 3),
        "providers": raw["providers"],
        "batch_size": batch,
        "model_replicas": spec.replicas.max_replicas,
        "model_replicas_chosen_by": "sizing (measured)" if chosen.replicas else "the slice",
        "ingress_replicas": spec.ingress_replicas,
        "decode_at": spec.resources.decode_at.value,
        "decode_at_chosen_by": "the bench" if decode_at != DecodeAt.AUTO else "sizing (measured)",
        "decode_ms": chosen.measured[chosen.ort_threads].decode_ms if chosen.measured else None,
        "ort_threads": chosen.ort_threads,
        "ort_threads_chosen_by": "the slice" if chosen.explicit else "sizing (measured)",
        "ingress_concurrency": ingress_concurrency,
        "raw_ort_fps": best["raw_ort_frames_per_s"],
        "raw_ort_best": {"batch": best["batch"], "threads": best["threads"]},
        "e2e_fps": e2e_fps,
        "efficiency": round(e2e_fps / best["raw_ort_frames_per_s"], 3),
        "echo_fps": echo_fps,
        "p50_ms": half["p50_ms"],
        "p95_ms": half["p95_ms"],
        "p99_ms": half["p99_ms"],
        "load_at_latency_fps": half["throughput_fps"],
        "sent": saturated["sent"] + half["sent"],
        "lost_frames": saturated["lost"] + half["lost"],
        "verdict_accuracy": saturated["accuracy"],
        "slice_rss_mb": round(ingress_rss * spec.ingress_replicas + model_rss * spec.replicas.max_replicas, 1),
        "ingress_rss_mb": round(ingress_rss, 1),  # per replica (one of each measured)
        "model_rss_mb": round(model_rss, 1),
        "robots": robots,
        "duration_s": duration_s,
        "cpu_count": raw["cpu_count"],
        "raw_ort_table": raw["results"],
    }
