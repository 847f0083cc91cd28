"""HTTP (KServe v2) against MQTT at the same load, through the same slice (issue 17, section 3).

One slice on local Ray and one broker; the baseline, in the same run, is the MQTT path: ``clients`` robots
at ``fps`` each (``robots.simulate``). Then as many HTTP clients post one image per request at the same
rate to the head's gateway (``edge_node.http_gateway``), each on its own keep-alive connection, as a MES
or test bench would. Both report end-to-end latency as the client sees it.

    lineside bench http --json
"""

from __future__ import annotations

import base64
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from contracts.slice_spec import BrokerSpec, ReplicaSpec, ResourceSpec, SliceSpec
from edge_node import cluster, serving
from edge_node.broker import MosquittoBroker, free_port
from edge_node.http_gateway import Caller, Gateway, create_app
from robots.simulate import Simulation, render_pool

TOKEN = "bench-token"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))], 1) if ordered else 0.0


def _http_clients(url: str, images: list[bytes], clients: int, fps: float, seconds: float) -> dict[str, Any]:
    """``clients`` threads, each posting one image every 1/``fps`` s for ``seconds``; latencies as they see them."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    bodies = [{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(image).decode()]}]} for image in images]  # fmt: skip

    def client(k: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as session:
            start = time.perf_counter() + k / (clients * fps)  # spread the clients over one period
            n = 0
            while (due := start + n / fps) < start + seconds:
                time.sleep(max(0.0, due - time.perf_counter()))
                sent = time.perf_counter()
                response = session.post(url, json=bodies[(k + n) % len(bodies)])
                took = (time.perf_counter() - sent) * 1000
                with lock:
                    if response.status_code == 200:
                        latencies.append(took)
                    else:
                        failures[0] += 1
                n += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return {"answered": len(latencies), "failed": failures[0], "throughput_fps": round(len(latencies) / elapsed, 1),
            "p50_ms": _percentile(latencies, 0.5), "p99_ms": _percentile(latencies, 0.99),
            "mean_ms": round(statistics.fmean(latencies), 1) if latencies else 0.0}  # fmt: skip


def measure(clients: int = 8, fps: float = 5.0, seconds: float = 20.0) -> dict[str, Any]:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    pool = render_pool(48, jpeg_only=True)
    with (
        tempfile.TemporaryDirectory(prefix="lineside-bench-http-") as workdir,
        MosquittoBroker(Path(workdir)) as broker,
    ):
        spec = SliceSpec(name="bench-http", tenant="bench", lines=["line-1"], broker=BrokerSpec(port=broker.port),
                         replicas=ReplicaSpec(min_replicas=1, max_replicas=1),
                         resources=ResourceSpec(cpus_per_replica=1.0, ort_threads=1))  # fmt: skip
        cluster.start()
        gateway = Gateway({TOKEN: Caller("bench", "factory_it")}.get, serving.model_caller, "bench")
        server: uvicorn.Server | None = None
        try:
            cluster.apply_slice(spec)
            gateway.update([spec])
            port = free_port()
            server = uvicorn.Server(uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port,
                                                   log_level="warning"))  # fmt: skip
            threading.Thread(target=server.run, daemon=True).start()
            while not server.started:
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port}/v2/models/{spec.name}/infer"
            images = [data for _, data in pool]
            _log("warming up both paths...")
            Simulation(broker.host, broker.port, tenant="bench", line="line-1", robots=clients, fps=fps,
                       pool=pool).run(3)  # fmt: skip
            _http_clients(url, images, clients, fps, 3)
            _log(f"(a) MQTT: {clients} robots at {fps:g} frames/s for {seconds:g} s...")
            report = Simulation(broker.host, broker.port, tenant="bench", line="line-1", robots=clients, fps=fps,
                                pool=pool).run(seconds)  # fmt: skip
            mqtt_figures = {"answered": report.results + report.errors, "lost": report.lost,
                            "throughput_fps": round(report.throughput_fps, 1),
                            "p50_ms": _percentile(report.latencies_ms, 0.5),
                            "p99_ms": _percentile(report.latencies_ms, 0.99),
                            "mean_ms": round(statistics.fmean(report.latencies_ms), 1)}  # fmt: skip
            _log(f"    {mqtt_figures}")
            _log(f"(b) HTTP: {clients} clients at {fps:g} requests/s (one image each) for {seconds:g} s...")
            http_figures = _http_clients(url, images, clients, fps, seconds)
            _log(f"    {http_figures}")
        finally:
            if server is not None:
                server.should_exit = True
            gateway.close()
            cluster.stop(process_exiting=True)  # the command ends with cluster.exit_now
    return {
        "benchmark": "http_vs_mqtt",
        "clients": clients,
        "fps_per_client": fps,
        "seconds": seconds,
        "mqtt": mqtt_figures,
        "http": http_figures,
        "http_p50_vs_mqtt": round(http_figures["p50_ms"] / mqtt_figures["p50_ms"], 2)
        if mqtt_figures["p50_ms"]
        else None,
    }
