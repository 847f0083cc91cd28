"""The edge server's commands: ``lineside edge-node`` (join a site, run the agent), ``lineside broker run``
(the site's Mosquitto), ``lineside slice run`` (one slice from flags, without a control plane) and
``lineside model fit`` (an anomaly model from photos of good parts, fitted on this machine).

``lineside.cli`` mounts this app as it is; ``python -m edge_node.cli ...`` runs the same commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from contracts.slice_spec import BatchSpec, BrokerSpec, DecodeAt, ReplicaSpec, ResourceSpec, SliceSpec
from edge_node.broker import QUEUED_BYTES_PER_CLIENT
from models import BUNDLED_MANIFEST

app = typer.Typer(no_args_is_help=True)
edge_app = typer.Typer(help="Edge servers: join a site and run the agent.", no_args_is_help=True)
broker_app = typer.Typer(help="The site's MQTT broker (Mosquitto).", no_args_is_help=True)
slice_app = typer.Typer(
    help="Slices: one tenant's inference capacity as a Ray Serve application.", no_args_is_help=True
)
app.add_typer(edge_app, name="edge-node")
app.add_typer(broker_app, name="broker")
model_app = typer.Typer(help="Models fitted from a factory's own photos.", no_args_is_help=True)
app.add_typer(slice_app, name="slice")
app.add_typer(model_app, name="model")

DataDirOption = Annotated[Path, typer.Option(help="Where the agent keeps its token, cache and models.")]
DEFAULT_AGENT_DIR = Path.home() / ".lineside" / "agent"
PeriodOption = Annotated[float, typer.Option(min=0.5, help="Seconds between agent passes.")]
HttpPortOption = Annotated[
    int | None,
    typer.Option(min=1, max=65535, help="Head only: serve the site's slices over HTTP (KServe v2) on this port."),
]
HttpHostOption = Annotated[str, typer.Option(help="Address the HTTP inference endpoint listens on.")]


def _default(model: type[BaseModel], field: str) -> Any:
    """A slice knob's default, read from the spec so that a flag's default is the spec's own."""
    return model.model_fields[field].default


def _help(model: type[BaseModel], field: str) -> str:
    """A slice knob's description, the spec's words."""
    return model.model_fields[field].description or field


@slice_app.command("run")
def slice_run(
    name: Annotated[str, typer.Option(help="Slice name.")] = "slice-1",
    tenant: Annotated[str, typer.Option(help="Tenant whose frames the slice judges.")] = "acme",
    line: Annotated[list[str], typer.Option(help="Line to serve (repeat for several).")] = ["line-1"],  # noqa: B006
    broker_host: Annotated[str, typer.Option(help=_help(BrokerSpec, "host"))] = _default(BrokerSpec, "host"),
    broker_port: Annotated[int, typer.Option(help=_help(BrokerSpec, "port"))] = _default(BrokerSpec, "port"),
    min_replicas: Annotated[int, typer.Option(min=0, help=_help(ReplicaSpec, "min_replicas"))] = _default(
        ReplicaSpec, "min_replicas"
    ),
    max_replicas: Annotated[
        int | None,
        typer.Option(min=1, help=_help(ReplicaSpec, "max_replicas") + " Default: measured, to fill this machine."),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help=_help(BatchSpec, "max_batch_size"))] = _default(
        BatchSpec, "max_batch_size"
    ),
    batch_wait_ms: Annotated[float, typer.Option(min=0, help=_help(BatchSpec, "batch_wait_ms"))] = _default(
        BatchSpec, "batch_wait_ms"
    ),
    ingress_replicas: Annotated[int, typer.Option(min=1, help=_help(SliceSpec, "ingress_replicas"))] = _default(
        SliceSpec, "ingress_replicas"
    ),
    ort_threads: Annotated[int, typer.Option(min=0, help=_help(ResourceSpec, "ort_threads") + " (0: measured)")] = 0,
    decode_at: Annotated[DecodeAt, typer.Option(help=_help(ResourceSpec, "decode_at"))] = DecodeAt.AUTO,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join; default: start a local one.")] = None,
    manifest: Annotated[
        Path, typer.Option(help="Model manifest (JSON) to load.", exists=True, dir_okay=False)
    ] = BUNDLED_MANIFEST,
) -> None:
    """Deploy a slice from flags and serve until Ctrl-C or SIGTERM.

    Stopping shuts down Serve and the Ray this command started, ends any of its processes that outlive
    that, and exits 0.
    """
    from edge_node import cluster, sizing

    ingress_batch = min(_default(BatchSpec, "ingress_batch"), max_batch_size)
    spec = SliceSpec(
        name=name,
        tenant=tenant,
        lines=line,
        manifest=manifest,
        ingress_replicas=ingress_replicas,
        broker=BrokerSpec(host=broker_host, port=broker_port),
        replicas=ReplicaSpec(min_replicas=min_replicas, max_replicas=max_replicas or max(min_replicas, 1)),
        batch=BatchSpec(max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, ingress_batch=ingress_batch),
        resources=ResourceSpec(ort_threads=ort_threads, decode_at=decode_at),
    )
    if not ort_threads:
        typer.echo("measuring the model at each thread count that fits this machine's cores ...")
    cores = os.cpu_count() or 1
    chosen = sizing.size(spec, manifest, cores, choose_replicas=max_replicas is None)
    typer.echo(f"slice {name}: {chosen.describe()}")
    spec = sizing.apply(spec, chosen, cores, min_replicas)
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
        cluster.stop(process_exiting=True)
    cluster.exit_now(0)


@edge_app.command("join")
def edge_join(
    control_plane_url: Annotated[str, typer.Option("--control-plane", help="Control plane URL.")],
    token: Annotated[
        str,
        typer.Option(
            help="One-time join token from an operator; or set LINESIDE_JOIN_TOKEN (kept out of the process list).",
            envvar="LINESIDE_JOIN_TOKEN",
            show_envvar=False,
        ),
    ],
    data_dir: DataDirOption = DEFAULT_AGENT_DIR,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join; default: start a local head.")] = None,
    run: Annotated[bool, typer.Option(help="Run the agent after joining.")] = True,
    period: PeriodOption = 5.0,
    http_port: HttpPortOption = None,
    http_host: HttpHostOption = "0.0.0.0",
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
        _run_agent(client, node, data_dir, ray_address, period, (http_host, http_port))


@edge_app.command("run")
def edge_run(
    data_dir: DataDirOption = DEFAULT_AGENT_DIR,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to use; default: start a local head.")] = None,
    period: PeriodOption = 5.0,
    http_port: HttpPortOption = None,
    http_host: HttpHostOption = "0.0.0.0",
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
    _run_agent(client, state["node"], data_dir, ray_address, period, (http_host, http_port))


def _run_agent(client: object, node: dict[str, Any], data_dir: Path, ray_address: str | None, period: float,
               http: tuple[str, int | None] = ("0.0.0.0", None)) -> None:  # fmt: skip
    import signal
    import threading

    import httpx

    from contracts.slice_spec import NODE_RESOURCE_PREFIX
    from edge_node import cluster
    from edge_node.agent import Agent

    assert isinstance(client, httpx.Client)
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
            cluster.exit_when_head_dies()  # systemd starts the agent again, with a new head
            address = cluster.gcs_address()
            typer.echo(f"Ray head at {address}: other servers join with --ray-address {address}")
        gateway = _serve_http(client, node["node_token"], *http) if http[1] and not ray_address else None
        try:
            Agent(client, node["node_token"], data_dir, period_s=period, head=not ray_address,
                  gateway=gateway).run(stop)  # fmt: skip
        finally:
            if gateway is not None:
                gateway.close()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop(process_exiting=True)  # Serve, Ray and every process this agent started, head or worker
    cluster.exit_now(0)


def _serve_http(client: Any, node_token: str, host: str, port: int | None) -> Any:
    """The head's HTTP inference endpoint (``edge_node.http_gateway``) on ``host:port``, in a thread."""
    import socket
    import threading

    import uvicorn

    from edge_node import serving
    from edge_node.http_gateway import ControlPlaneVerifier, Gateway, create_app

    verifier = ControlPlaneVerifier(client, lambda: {"Authorization": f"Bearer {node_token}"})
    gateway = Gateway(verifier, serving.model_caller, socket.gethostname())
    # At most 64 requests at once: each may hold 32 frames, so this bounds what the endpoint keeps in memory.
    config = uvicorn.Config(create_app(gateway), host=host, port=port or 0, log_level="warning", limit_concurrency=64)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="http-inference", daemon=True).start()
    typer.echo(f"HTTP inference (KServe v2) on http://{host}:{port}/v2/models/<slice>/infer")
    return gateway


@broker_app.command("run")
def broker_run(
    admin_password_file: Annotated[
        Path | None,
        typer.Option(help="File holding the admin password; else LINESIDE_BROKER_ADMIN_PASSWORD is read."),
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Plain MQTT port.")] = 1883,
    host: Annotated[
        str,
        typer.Option(
            help="Address the plain listener binds: 127.0.0.1 for the site's own slices, or an address on the "
            "private network between sites, where other sites' overflow ingresses reach it (the site's "
            "wan_broker_host). Never a public one: it is plain MQTT."
        ),
    ] = "127.0.0.1",
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
    broker = MosquittoBroker(data_dir.resolve(), port, host=host, admin_password=password, tls=tls,
                             max_queued_bytes=max_queued_mib * 1024 * 1024)  # fmt: skip
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


@model_app.command("fit")
def model_fit(
    good_dir: Annotated[Path, typer.Argument(help="Folder or zip of 50-500 JPEG/PNG photos of good parts.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write NAME.onnx, NAME.manifest.json, NAME.card.md.")],
    name: Annotated[str, typer.Option(help="Model name (lower case, digits, . _ -).")] = "fitted-inspector",
    version: Annotated[str, typer.Option(help="Semantic version written to the manifest.")] = "1.0.0",
    false_reject_rate: Annotated[
        float, typer.Option(min=0.0001, max=0.5, help="Share of good parts the threshold may reject (0.01 = 1 %).")
    ] = 0.01,
    defects: Annotated[
        Path | None, typer.Option(help="Optional folder or zip of defect photos: only to report recall.")
    ] = None,
) -> None:
    """Fit an anomaly model from photos of good parts, on this machine; prints its figures as JSON."""
    from pydantic import ValidationError

    from edge_node.fitting import fit_folder
    from models.anomaly.fit import FitError

    def progress(stage: str, done: float) -> None:
        typer.echo(f"fit: {stage} ({done:.0%})", err=True)

    try:
        manifest, fitted, photos = fit_folder(
            good_dir, out, name=name, version=version, false_reject_rate=false_reject_rate, defects=defects,
            progress=progress,
        )  # fmt: skip
    except ValidationError as e:
        fields = ", ".join(str(err["loc"][-1]) for err in e.errors())
        typer.echo(
            f"error: invalid {fields}: name is lower case letters, digits, . _ -; version is like 1.2.0", err=True
        )
        raise typer.Exit(2) from None
    except FitError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for file, why in list(photos.skipped.items())[:10]:
        typer.echo(f"skipped {file}: {why}", err=True)
    report = fitted.report
    typer.echo(json.dumps({
        "manifest": str(manifest), "threshold": round(fitted.threshold, 6), "good_photos": report.good_photos,
        "skipped_files": len(photos.skipped), "held_out_false_reject_rate": report.held_out_false_reject_rate,
        "defect_recall": report.defect_recall, "fit_s": report.fit_s,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":  # python -m edge_node.cli ...; after every command is registered
    app()
