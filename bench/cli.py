"""``lineside bench``: the benchmarks, one command each, each printing JSON (see BENCHMARKS.md).

This is every benchmark's only entry point (``lineside bench X`` or ``python -m bench.cli bench X``);
the modules beside it hold the measurements and no command line of their own, so a default is written
once, here.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from contracts.slice_spec import DecodeAt

app = typer.Typer(no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print JSON (see BENCHMARKS.md).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on one line.")]


ModelOption = Annotated[
    str | None,
    typer.Option(help="A model manifest, or 'reference' (MobileNetV2-class at 224 px); default the bundled."),
]


def _manifest(model: str | None) -> Path:
    from bench.pipeline import resolve_model

    try:
        return resolve_model(model)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="--model") from e


def _emit(result: dict[str, Any], as_json: bool) -> None:
    """A benchmark's result: one JSON line with --json, indented JSON otherwise."""
    typer.echo(json.dumps(result) if as_json else json.dumps(result, indent=2))


def _ray_bench(measure: Callable[[], dict[str, Any]], as_json: bool) -> NoReturn:
    """Emit ``measure()`` of a benchmark that starts Ray and stops it as a process about to end
    (``cluster.stop(process_exiting=True)``), then end: Ray's own shutdown could end the process with
    status 1 after the figures were measured (see ``cluster.stop``). What Ray prints to stdout as it stops
    ("(raylet) Task ServeController... failed") goes to stderr: stdout is the JSON alone."""
    from edge_node import cluster

    with contextlib.redirect_stdout(sys.stderr):
        result = measure()
    _emit(result, as_json)
    cluster.exit_now(0)


@bench_app.command("pipeline")
def bench_pipeline(
    duration: Annotated[float, typer.Option(min=1, help="Seconds per measured phase.")] = 20.0,
    robots: Annotated[int, typer.Option(min=1, help="Simulated robots.")] = 16,
    batch: Annotated[int, typer.Option(min=1, help="Model max batch size.")] = 32,
    ort_threads: Annotated[
        int, typer.Option(min=0, help="ONNX Runtime threads per model replica; 0: measured, as a slice sizes itself.")
    ] = 0,
    ingress_concurrency: Annotated[int, typer.Option(min=1, help="Model calls in flight per ingress.")] = 3,
    model_replicas: Annotated[
        int,
        typer.Option(min=0, max=16, help="Model replicas; 0: measured, as `lineside slice run` sizes them."),
    ] = 0,
    ingress_replicas: Annotated[
        int, typer.Option(min=0, max=16, help="Ingress replicas of the slice; 0: one, or as decoding needs.")
    ] = 0,
    decode_at: Annotated[
        DecodeAt, typer.Option(help="Where frames are decoded: model, ingress, or auto (measured, as a slice does).")
    ] = DecodeAt.AUTO,
    model: ModelOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each stage of the data path and the machine's limit from them, end to end against it, latency at half load.

    Stages, each on all cores in the same run: raw ONNX Runtime, an MQTT echo of the same frames, decoding.
    """
    from bench.pipeline import run

    manifest = _manifest(model)
    _ray_bench(lambda: run(duration, robots, batch, ort_threads, ingress_concurrency, manifest, model_replicas,
                           ingress_replicas, decode_at), as_json)  # fmt: skip


@bench_app.command("runtime")
def bench_runtime(
    seconds: Annotated[float, typer.Option(min=0.1, help="Minimum seconds per measurement.")] = 3.0,
    batches: Annotated[
        list[int], typer.Option("--batches", min=1, help="Batch size to measure (repeat the option).")
    ] = [1, 8, 32],  # noqa: B006
    threads: Annotated[
        list[int], typer.Option("--threads", min=1, help="Intra-op threads to measure (repeat the option).")
    ] = [1, 2],  # noqa: B006
    model: ModelOption = None,
    as_json: JsonOption = False,
) -> None:
    """Raw ONNX Runtime vs. Lineside's runtime throughput by batch size and intra-op threads."""
    from bench.runtime_throughput import measure

    manifest = _manifest(model)
    _emit(measure(batches, threads, seconds, manifest=manifest), as_json)


@bench_app.command("scheduler")
def bench_scheduler(
    nodes: Annotated[int, typer.Option(min=1, help="Nodes on the site.")] = 5000,
    replicas: Annotated[int, typer.Option(min=10, help="Replicas to place (slices of 10).")] = 150_000,
    baseline_seconds: Annotated[float, typer.Option(min=0.1, help="Time budget of the first-fit sample.")] = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Placements per second and re-placement after 10% of nodes fail, vs. a first-fit baseline."""
    from bench.scheduler import measure

    _emit(measure(nodes, replicas, baseline_seconds), as_json)


@bench_app.command("fuzz-decoder")
def bench_fuzz_decoder(
    cases: Annotated[int, typer.Option(min=1, help="Mutated frames to decode.")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed of the first batch (each batch of 100,000 adds one).")] = 1,
    as_json: JsonOption = False,
) -> None:
    """Chaos scenario 10: decode mutated JPEG and PNG frames; only typed frame errors, no crash, no slow case."""
    from bench.fuzz_decoder import measure

    _emit(measure(cases, seed), as_json)


@bench_app.command("soak")
def bench_soak(
    duration: Annotated[float, typer.Option(min=10, help="Seconds to stream (the issue's figure: 7200).")] = 7200.0,
    robots: Annotated[int, typer.Option(min=1, max=1000, help="Simulated robots.")] = 50,
    fps: Annotated[float, typer.Option(min=0.1, max=100, help="Frames per second per robot.")] = 2.0,
    fault_every: Annotated[float, typer.Option(min=5, help="Seconds between faults, injected in rotation.")] = 300.0,
    sample_every: Annotated[float, typer.Option(min=1, help="Seconds between memory and descriptor samples.")] = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Chaos soak: a fleet through broker, ingress and model replicas with a fault every few minutes; prints
    frames lost, duplicates, replica churn, the longest gap and per-component memory and descriptor drift."""
    from bench.soak import measure

    _ray_bench(lambda: measure(duration, robots, fps, fault_every, sample_every), as_json)


@bench_app.command("http")
def bench_http(
    clients: Annotated[int, typer.Option(min=1, max=200, help="Robots over MQTT, then as many HTTP clients.")] = 8,
    fps: Annotated[float, typer.Option(min=0.1, max=100, help="Frames (requests) per second per client.")] = 5.0,
    seconds: Annotated[float, typer.Option(min=2, help="Seconds per measured phase.")] = 20.0,
    as_json: JsonOption = False,
) -> None:
    """HTTP (KServe v2) against MQTT at the same load through the same slice: latency as clients see it."""
    from bench.http_vs_mqtt import measure

    _ray_bench(lambda: measure(clients, fps, seconds), as_json)


@bench_app.command("autoscale")
def bench_autoscale(
    model_delay_ms: Annotated[
        float, typer.Option(min=1, help="Sleep per model call: sets one replica's capacity.")
    ] = 40.0,
    step_seconds: Annotated[float, typer.Option(min=5, help="Seconds of the step phase.")] = 30.0,
    steady_seconds: Annotated[
        float,
        typer.Option(min=10, help="Seconds of steady 150% load afterwards (10 minutes: the figure is per 10 min)."),
    ] = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Load step from 20% to 150% of one replica: reaction time, p99 during the step, scale flips when steady."""
    from bench.autoscale import measure

    _ray_bench(lambda: measure(model_delay_ms, step_seconds, steady_seconds), as_json)


@bench_app.command("dashboard")
def bench_dashboard(
    robots: Annotated[int, typer.Option(min=4, help="Robots (on 4 lines) with a week of history.")] = 100,
    loads: Annotated[int, typer.Option(min=1, help="Page loads timed per tenant.")] = 10,
    database_url: Annotated[
        str | None,
        typer.Option(help="Database, e.g. postgresql+psycopg://postgres@127.0.0.1/test; default a fresh SQLite file."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Plant manager page load in headless Chromium with a week of history, vs. the same page without any."""
    from bench.dashboard import measure

    _emit(measure(robots, loads, database_url), as_json)


@bench_app.command("billing")
def bench_billing(
    preset: Annotated[
        str, typer.Option(help="full (issue 13's 1,000 tenants x 10 slices x 2 nodes x 100 minutes) or small.")
    ] = "full",
    tenants: Annotated[int | None, typer.Option(min=1, help="Tenants (default: the preset's).")] = None,
    slices: Annotated[int | None, typer.Option(min=1, help="Slices per tenant (default: the preset's).")] = None,
    nodes: Annotated[int | None, typer.Option(min=1, help="Nodes each slice runs on (default: the preset's).")] = None,
    minutes: Annotated[
        int | None, typer.Option(min=1, max=1440, help="Per-minute records per slice and node (default: the preset's).")
    ] = None,
    database_url: Annotated[
        str, typer.Option(help="PostgreSQL server to create the throwaway database on (trust auth).")
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    as_json: JsonOption = False,
) -> None:
    """Idempotent ingest and rating of per-minute usage (5% repeated, 2% late), then a month's invoices."""
    from bench.billing import PRESETS, measure, shape_of

    if preset not in PRESETS:
        raise typer.BadParameter(f"choose one of {sorted(PRESETS)}", param_hint="--preset")
    shape = shape_of(preset, tenants=tenants, slices=slices, nodes=nodes, minutes=minutes)
    _emit(measure(shape, database_url), as_json)


@bench_app.command("economics")
def bench_economics(
    days: Annotated[
        int | None, typer.Option(min=1, max=31, help="Days of the month to simulate (default: all).")
    ] = None,
    factories: Annotated[
        int | None, typer.Option(min=1, help="The first N factories of the assumptions file (default: all).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The seed plant's month, priced: Lineside's bill vs. a dedicated server vs. GPU-hours, SLO, bank, margin."""
    from bench.economics import measure

    _emit(measure(days, factories), as_json)


if __name__ == "__main__":  # python -m bench.cli bench ...; after every command is registered
    app()
