"""The ``lineside`` command. Every subcommand has ``--help``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edge_node.broker import QUEUED_BYTES_PER_CLIENT
from models import BUNDLED_MANIFEST

app = typer.Typer(
    name="lineside",
    help="Lineside: elastic edge compute for AI quality inspection over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ManifestOption = Annotated[Path, typer.Option(help="Model manifest (JSON) to load.", exists=True, dir_okay=False)]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def inspect(
    images: Annotated[list[Path], typer.Argument(help="JPEG or PNG files to judge.", exists=True, dir_okay=False)],
    manifest: ManifestOption = BUNDLED_MANIFEST,
) -> None:
    """Judge image files with the model and print one JSON verdict per file."""
    from edge_node.runtime import InspectionModel, Verdict, as_reply

    model = InspectionModel(manifest)
    outcomes = model.inspect([p.read_bytes() for p in images])
    for path, outcome in zip(images, outcomes, strict=True):
        typer.echo(json.dumps({"file": str(path), **as_reply(outcome)}))
    raise typer.Exit(0 if all(isinstance(o, Verdict) for o in outcomes) else 1)


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(help="Seconds to stream; default: until Ctrl-C.", min=1)] = None,
    robots: Annotated[int, typer.Option(min=1, help="Simulated robots.")] = 8,
    fps: Annotated[float, typer.Option(min=0.1, help="Frames per second per robot.")] = 5.0,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Control plane and dashboard port; 0 = any free.")] = 0,
) -> None:
    """Run the main job on embedded defaults: broker, local Ray, one slice, simulated robots, the dashboard.

    Exits non-zero if any frame was sent and never answered.
    """
    from lineside.demo import run_demo

    raise typer.Exit(run_demo(duration_s=duration, robots=robots, fps=fps, echo=typer.echo, port=port))


robots_app = typer.Typer(help="Inspection robots: simulate a fleet.", no_args_is_help=True)
app.add_typer(robots_app, name="robots")


@robots_app.command("simulate")
def robots_simulate(
    robots: Annotated[int, typer.Option(min=1, help="Robots to simulate.")] = 4,
    fps: Annotated[float, typer.Option(min=0.1, help="Frames per second per robot.")] = 5.0,
    duration: Annotated[float, typer.Option(min=1, help="Seconds to stream.")] = 10.0,
    host: Annotated[str, typer.Option(help="MQTT broker host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="MQTT broker port.")] = 1883,
    tenant: Annotated[str, typer.Option(help="Tenant the robots belong to.")] = "acme",
    line: Annotated[str, typer.Option(help="Line the robots stand on.")] = "line-1",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer before resending.")] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Stream generated parts with known ground truth; print throughput, latency, accuracy, lost frames."""
    from lineside.demo import progress_line
    from robots.simulate import Simulation, render_pool

    pool = render_pool(96)
    sim = Simulation(host, port, tenant=tenant, line=line, robots=robots, fps=fps, pool=pool, timeout_s=timeout)
    report = sim.run(duration, progress=lambda r: typer.echo(progress_line(r), err=as_json))
    typer.echo(json.dumps(report.summary()) if as_json else "summary: " + progress_line(report))
    raise typer.Exit(1 if report.lost else 0)


slice_app = typer.Typer(
    help="Slices: one tenant's inference capacity as a Ray Serve application.", no_args_is_help=True
)
app.add_typer(slice_app, name="slice")


@slice_app.command("run")
def slice_run(
    name: Annotated[str, typer.Option(help="Slice name.")] = "slice-1",
    tenant: Annotated[str, typer.Option(help="Tenant whose frames the slice judges.")] = "acme",
    line: Annotated[list[str], typer.Option(help="Line to serve (repeat for several).")] = ["line-1"],  # noqa: B006
    broker_host: Annotated[str, typer.Option(help="MQTT broker host.")] = "127.0.0.1",
    broker_port: Annotated[int, typer.Option(help="MQTT broker port.")] = 1883,
    min_replicas: Annotated[int, typer.Option(min=0, help="Model replica floor.")] = 1,
    max_replicas: Annotated[int, typer.Option(min=1, help="Model replica ceiling.")] = 1,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most frames per ONNX Runtime call.")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="Longest wait to fill a batch.")] = 5.0,
    ingress_replicas: Annotated[int, typer.Option(min=1, help="MQTT ingress replicas.")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join; default: start a local one.")] = None,
    manifest: ManifestOption = BUNDLED_MANIFEST,
) -> None:
    """Deploy a slice from flags and serve until Ctrl-C or SIGTERM.

    Stopping shuts down Serve and the Ray this command started, ends any of its processes that outlive
    that, and exits 0.
    """
    from contracts.slice_spec import BatchSpec, BrokerSpec, ReplicaSpec, SliceSpec
    from edge_node import cluster

    spec = SliceSpec(
        name=name,
        tenant=tenant,
        lines=line,
        manifest=manifest,
        ingress_replicas=ingress_replicas,
        broker=BrokerSpec(host=broker_host, port=broker_port),
        replicas=ReplicaSpec(min_replicas=min_replicas, max_replicas=max_replicas),
        batch=BatchSpec(max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                        ingress_batch=min(16, max_batch_size)),
    )  # fmt: skip
    try:
        cluster.start(ray_address)
        cluster.apply_slice(spec)
        typer.echo(f"slice {name} serving {', '.join(spec.frame_filters)}; Ctrl-C to stop")
        while True:
            time.sleep(10)
            typer.echo(f"{cluster.slice_status(spec)} {cluster.slice_stats(spec)}")
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        cluster.stop()


def _emit(result: dict[str, Any], as_json: bool) -> None:
    """A benchmark's result: one JSON line with --json, indented JSON otherwise."""
    typer.echo(json.dumps(result) if as_json else json.dumps(result, indent=2))


bench_app = typer.Typer(help="Benchmarks that print JSON (see BENCHMARKS.md).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("pipeline")
def bench_pipeline(
    duration: Annotated[float, typer.Option(min=1, help="Seconds per measured phase.")] = 20.0,
    robots: Annotated[int, typer.Option(min=1, help="Simulated robots.")] = 16,
    batch: Annotated[int, typer.Option(min=1, help="Model max batch size.")] = 32,
    ort_threads: Annotated[int, typer.Option(min=1, help="ONNX Runtime threads in the model replica.")] = 2,
    ingress_concurrency: Annotated[int, typer.Option(min=1, help="Model calls in flight per ingress.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Raw ONNX Runtime vs. end to end over MQTT and Ray, an MQTT echo baseline, latency at half load."""
    from bench.pipeline import run

    result = run(duration, robots, batch, ort_threads, ingress_concurrency)
    _emit(result, as_json)


@bench_app.command("runtime")
def bench_runtime(
    seconds: Annotated[float, typer.Option(min=0.1, help="Minimum seconds per measurement.")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Raw ONNX Runtime vs. Lineside's runtime throughput by batch size (1, 8, 32) and threads (1, 2)."""
    from bench.runtime_throughput import measure

    result = measure([1, 8, 32], [1, 2], seconds)
    _emit(result, as_json)


@bench_app.command("scheduler")
def bench_scheduler(
    nodes: Annotated[int, typer.Option(min=1, help="Nodes on the site.")] = 5000,
    replicas: Annotated[int, typer.Option(min=10, help="Replicas to place (slices of 10).")] = 150_000,
    baseline_seconds: Annotated[float, typer.Option(min=0.1, help="Time budget of the first-fit sample.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Placements per second and re-placement after 10% of nodes fail, vs. a first-fit baseline."""
    from bench.scheduler import measure

    result = measure(nodes, replicas, baseline_seconds)
    _emit(result, as_json)


@bench_app.command("autoscale")
def bench_autoscale(
    model_delay_ms: Annotated[
        float, typer.Option(min=1, help="Sleep per model call: sets one replica's capacity.")
    ] = 40.0,
    step_seconds: Annotated[float, typer.Option(min=5, help="Seconds of the step phase.")] = 30.0,
    steady_seconds: Annotated[float, typer.Option(min=10, help="Seconds of steady 150% load afterwards.")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Load step from 20% to 150% of one replica: reaction time, p99 during the step, scale flips when steady."""
    from bench.autoscale import measure

    result = measure(model_delay_ms, step_seconds, steady_seconds)
    _emit(result, as_json)


@bench_app.command("dashboard")
def bench_dashboard(
    robots: Annotated[int, typer.Option(min=4, help="Robots (on 4 lines) with a week of history.")] = 100,
    loads: Annotated[int, typer.Option(min=1, help="Page loads timed per tenant.")] = 10,
    database_url: Annotated[str | None, typer.Option(help="Database; default a fresh SQLite file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Plant manager page load in headless Chromium with a week of history, vs. the same page without any."""
    from bench.dashboard import measure

    _emit(measure(robots, loads, database_url), as_json)


@app.command("model-info")
def model_info(manifest: ManifestOption = BUNDLED_MANIFEST) -> None:
    """Print a model's manifest and the execution providers it would run on."""
    from edge_node.runtime import InspectionModel

    model = InspectionModel(manifest)
    typer.echo(json.dumps({"manifest": model.manifest.model_dump(mode="json"), "providers": model.providers}, indent=2))


@app.command("control-plane")
def control_plane(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
) -> None:
    """Serve the control plane API (OpenAPI docs at /docs, metrics at /metrics).

    Settings come from LINESIDE_* variables: LINESIDE_DATA_DIR (SQLite file and model store),
    LINESIDE_DATABASE_URL (PostgreSQL), LINESIDE_SECRET_KEY, LINESIDE_BOOTSTRAP_TOKEN,
    LINESIDE_TRUSTED_PROXIES (reverse proxies whose X-Forwarded-For/-Proto are believed),
    LINESIDE_COOKIE_SECURE (HTTPS-only session cookie and HSTS; on with LINESIDE_PRODUCTION=1).
    """
    import uvicorn

    from control_plane.app import create_app
    from control_plane.settings import get_settings

    settings = get_settings()
    # Forwarded headers (client address, https) are believed only from LINESIDE_TRUSTED_PROXIES.
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", **settings.proxy_options())


edge_app = typer.Typer(help="Edge servers: join a site and run the agent.", no_args_is_help=True)
app.add_typer(edge_app, name="edge-node")

DataDirOption = Annotated[Path, typer.Option(help="Where the agent keeps its token, cache and models.")]
DEFAULT_AGENT_DIR = Path.home() / ".lineside" / "agent"


@edge_app.command("join")
def edge_join(
    control_plane_url: Annotated[str, typer.Option("--control-plane", help="Control plane URL.")],
    token: Annotated[str, typer.Option(help="One-time join token from an operator.")],
    data_dir: DataDirOption = DEFAULT_AGENT_DIR,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join; default: start a local head.")] = None,
    run: Annotated[bool, typer.Option(help="Run the agent after joining.")] = True,
    period: Annotated[float, typer.Option(min=0.5, help="Seconds between agent passes.")] = 5.0,
) -> None:
    """Register this server with its site, then (by default) run the agent until Ctrl-C."""
    import httpx

    from edge_node.agent import AgentError, join

    client = httpx.Client(base_url=control_plane_url, timeout=30.0)
    try:
        node = join(client, token, data_dir, ray_address)
    except (AgentError, httpx.TransportError) as e:
        typer.echo(f"join failed: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"joined site {node['site_id']} as node {node['id']} ({node['hostname']}); state in {data_dir}")
    if run:
        _run_agent(client, node, data_dir, ray_address, period)


@edge_app.command("run")
def edge_run(
    data_dir: DataDirOption = DEFAULT_AGENT_DIR,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to use; default: start a local head.")] = None,
    period: Annotated[float, typer.Option(min=0.5, help="Seconds between agent passes.")] = 5.0,
) -> None:
    """Run the agent of a node that has joined (after a restart, even with the control plane down).

    SIGTERM ends it after its current pass, Ctrl-C at once; either way it shuts down Serve and Ray, ends
    every process it started (a worker's `ray start` daemons too) and exits 0.
    """
    import httpx

    state_file = data_dir / "agent.json"
    if not state_file.exists():
        typer.echo(f"{state_file} is missing: run `lineside edge-node join` first", err=True)
        raise typer.Exit(2)
    state = json.loads(state_file.read_text())
    client = httpx.Client(base_url=state["control_plane"], timeout=30.0)
    _run_agent(client, state["node"], data_dir, ray_address, period)


def _run_agent(client: object, node: dict[str, Any], data_dir: Path, ray_address: str | None, period: float) -> None:
    import signal
    import threading

    import httpx

    from edge_node import cluster
    from edge_node.agent import Agent

    assert isinstance(client, httpx.Client)
    from contracts.slice_spec import NODE_RESOURCE_PREFIX

    # The node's own resource lets the control plane's scheduler pin replicas here; the site's marks the
    # cluster it belongs to (Ray itself adds accelerator_type:<GPU> on GPU nodes).
    resources: dict[str, float] = {
        f"{NODE_RESOURCE_PREFIX}{node['id']}": 1000.0,
        f"lineside_site_{node['site_id']}": 1000.0,
    }
    stop = threading.Event()  # SIGTERM (systemd) ends the agent after its pass; Ctrl-C at once
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if ray_address:  # a worker node: its raylet joins the site's cluster; the head's agent applies slices
            cluster.start_worker(ray_address, resources)
        else:
            cluster.start(None, resources=resources)
            address = cluster.gcs_address()
            typer.echo(f"Ray head at {address}: other servers join with --ray-address {address}")
        Agent(client, node["node_token"], data_dir, period_s=period, head=not ray_address).run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()  # Serve, Ray and every process this agent started, head or worker


broker_app = typer.Typer(help="The site's MQTT broker (Mosquitto).", no_args_is_help=True)
app.add_typer(broker_app, name="broker")


@broker_app.command("run")
def broker_run(
    admin_password_file: Annotated[
        Path | None,
        typer.Option(help="File holding the admin password; else LINESIDE_BROKER_ADMIN_PASSWORD is read."),
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Plain MQTT port, on 127.0.0.1 only.")] = 1883,
    data_dir: Annotated[Path, typer.Option(help="Config, persistence and dynamic-security state.")] = Path(
        "lineside-broker"
    ),
    max_queued_mib: Annotated[
        int, typer.Option(min=1, max=65536, help="Bytes (MiB) queued per client before Mosquitto drops.")
    ] = QUEUED_BYTES_PER_CLIENT // (1024 * 1024),
    tls_port: Annotated[int | None, typer.Option(min=1, max=65535, help="TLS listener port (e.g. 8883).")] = None,
    tls_host: Annotated[str, typer.Option(help="Address the TLS listener binds.")] = "0.0.0.0",
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM, chain included).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="CA of client certificates: clients must then present one (mutual TLS).")
    ] = None,
    admin_password: Annotated[str | None, typer.Option(hidden=True, help="Refused: it shows in ps.")] = None,
) -> None:
    """Run Mosquitto with the dynamic-security plugin and the control plane's admin, until Ctrl-C.

    The admin password (GET /sites/{id}/broker-admin) comes from LINESIDE_BROKER_ADMIN_PASSWORD or
    --admin-password-file, never from the command line, where every user of the host sees it in ps.
    """
    import signal
    import threading

    from edge_node.broker import MosquittoBroker, TlsListener

    if admin_password is not None:
        raise typer.BadParameter(
            "a password on the command line shows in ps: set LINESIDE_BROKER_ADMIN_PASSWORD or use "
            "--admin-password-file",
            param_hint="--admin-password",
        )
    password = _broker_admin_password(admin_password_file)
    tls = None
    if tls_port is not None:
        if tls_cert is None or tls_key is None:
            raise typer.BadParameter("a TLS listener needs --tls-cert and --tls-key", param_hint="--tls-port")
        tls = TlsListener(port=tls_port, host=tls_host, certfile=tls_cert.resolve(), keyfile=tls_key.resolve(),
                          client_cafile=tls_client_ca.resolve() if tls_client_ca else None)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker = MosquittoBroker(
        data_dir.resolve(), port, admin_password=password, tls=tls, max_queued_bytes=max_queued_mib * 1024 * 1024
    )
    with broker:
        tls_note = f", TLS on {tls.host}:{tls.port}" if tls else ""
        typer.echo(f"broker on {broker.host}:{broker.port}{tls_note}; state in {data_dir} (Ctrl-C stops it)")
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


def _broker_admin_password(path: Path | None) -> str:
    """The dynsec admin's password from ``path`` or the environment (never argv)."""
    if path is not None:
        try:
            password = path.read_text().strip()
        except OSError as e:
            raise typer.BadParameter(f"cannot read {path}: {e.strerror}", param_hint="--admin-password-file") from e
    else:
        password = os.environ.get("LINESIDE_BROKER_ADMIN_PASSWORD", "").strip()
    if not password:
        raise typer.BadParameter(
            "no admin password: set LINESIDE_BROKER_ADMIN_PASSWORD or pass --admin-password-file "
            "(the password is GET /sites/{id}/broker-admin)",
            param_hint="--admin-password-file",
        )
    return password


if __name__ == "__main__":  # after every command is registered
    app()
