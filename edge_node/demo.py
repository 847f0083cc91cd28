"""``lineside demo``: the whole data path on one machine with embedded defaults.

Starts a Mosquitto broker on a free port with a generated config, a local Ray
with one slice (ingress + model), and simulated robots streaming generated
parts; prints live progress and a summary, then shuts everything down.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from edge_node import cluster
from edge_node.broker import MosquittoBroker, free_port
from edge_node.simulate import Simulation, SimulationReport, render_pool
from edge_node.slice_spec import BrokerSpec, ReplicaSpec, SliceSpec

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


def progress_line(report: SimulationReport) -> str:
    """One line of live progress."""
    s = report.summary()
    accuracy = f"{s['accuracy']:.1%}" if s["accuracy"] is not None else "-"
    return (
        f"t={report.elapsed_s:5.1f}s sent={s['sent']:<6} answered={s['results'] + s['errors']:<6} "
        f"fps={s['throughput_fps']:6.1f} p50={s['p50_ms']:6.1f}ms p99={s['p99_ms']:6.1f}ms "
        f"verdicts-correct={accuracy} lost={s['lost']}"
    )


def run_demo(*, duration_s: float | None, robots: int, fps: float, echo: Echo, workdir: Path | None = None) -> int:
    """Run the demo; returns the exit code (1 if any frame was lost)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="lineside-demo-"))
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        echo(f"\n{signal.Signals(signum).name}: stopping robots, draining answers, shutting down")
        stop.set()

    previous = signal.signal(signal.SIGINT, on_signal), signal.signal(signal.SIGTERM, on_signal)
    broker = MosquittoBroker(workdir / "broker")
    try:
        broker.start()
        echo(f"broker: mosquitto on {broker.host}:{broker.port} (config {broker.config_path})")
        spec = SliceSpec(
            name="demo",
            tenant="acme",
            lines=["line-1"],
            broker=BrokerSpec(host=broker.host, port=broker.port),
            replicas=ReplicaSpec(min_replicas=1, max_replicas=1),
        )
        echo("starting local Ray and the slice (ingress + ONNX model)...")
        metrics_port = free_port()
        cluster.start(metrics_port=metrics_port)
        echo(f"Prometheus metrics: http://127.0.0.1:{metrics_port}/metrics (ray_lineside_answers, ...)")
        cluster.apply_slice(spec)
        echo(f"slice {spec.name}: {cluster.slice_status(spec)}")
        echo("rendering part images for the robots...")
        pool = render_pool(96)
        echo(
            f"{robots} robots x {fps:g} fps on acme/line-1 "
            + (f"for {duration_s:g}s" if duration_s else "(Ctrl-C to stop)")
        )
        simulation = Simulation(
            broker.host, broker.port, tenant="acme", line="line-1", robots=robots, fps=fps, pool=pool
        )
        report = simulation.run(duration_s, progress=lambda r: echo(progress_line(r)), stop=stop)
        echo("summary: " + progress_line(report))
        echo(f"ingress counters: {cluster.slice_stats(spec)}")
        if report.lost:
            echo(f"FAILED: {report.lost} frames were sent and never answered")
            return 1
        echo(f"ok: every one of {report.sent} frames was answered")
        return 0
    finally:
        cluster.stop()
        broker.stop()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        echo("stopped Ray and the broker")
