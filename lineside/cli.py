"""The ``lineside`` command: the whole product's CLI, assembled from the packages' own sub-apps.

Each package owns its commands beside its code, and this module only mounts them (plus the demo, which
runs all of them together), the way ``ray`` and ``kubectl`` group their verbs:

    control_plane.cli   lineside control-plane
    edge_node.cli       lineside edge-node join|run, lineside broker run, lineside slice run
    robots.cli          lineside robots simulate
    training.cli        lineside inspect, lineside model-info
    bench.cli           lineside bench pipeline|runtime|scheduler|autoscale|dashboard
    bridges.cli         lineside bridge opcua|opcua-certificate
    lineside.cli        lineside demo

A package's app is mounted without a name (Typer >= 0.14 merges its commands and groups into this one),
so ``python -m <package>.cli ARGS`` and ``python -m lineside ARGS`` run what ``lineside ARGS`` runs.
Every subcommand has ``--help``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from bench.cli import app as bench_app
from bridges.cli import app as bridges_app
from control_plane.cli import app as control_plane_app
from edge_node.cli import app as edge_node_app
from robots.cli import app as robots_app
from training.cli import app as training_app

app = typer.Typer(
    name="lineside",
    help="Lineside: elastic edge compute for AI quality inspection over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for package_app in (control_plane_app, edge_node_app, robots_app, training_app, bench_app, bridges_app):
    app.add_typer(package_app)

VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details to the console.")]


@app.callback()
def _main(ctx: typer.Context, verbose: VerboseOption = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = {"verbose": verbose}


@app.command()
def demo(
    ctx: typer.Context,
    duration: Annotated[float | None, typer.Option(help="Seconds to stream; default: until Ctrl-C.", min=1)] = None,
    robots: Annotated[int, typer.Option(min=1, help="Simulated robots.")] = 8,
    fps: Annotated[float, typer.Option(min=0.1, help="Frames per second per robot.")] = 5.0,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Control plane and dashboard port; 0 = any free.")] = 0,
    rollout: Annotated[
        bool, typer.Option(help="Fit a model on the line's good parts and roll it out: shadow, canary, full.")
    ] = True,
    verbose: VerboseOption = False,
) -> None:
    """Run the main job on embedded defaults: broker, local Ray, one slice, simulated robots, the dashboard.

    On a terminal it shows one live status view; piped, plain progress lines. Logs go to a file whose
    path is printed first; -v shows them on the console instead. Exits non-zero if any frame was sent
    and never answered.
    """
    from edge_node import cluster
    from lineside.console import logs_to_file, make_console
    from lineside.demo import LATENCY_BUDGET_MS, run_demo

    verbose = verbose or bool((ctx.obj or {}).get("verbose"))
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    workdir = Path(tempfile.mkdtemp(prefix="lineside-demo-"))
    log_file = workdir / "demo.log"
    with logs_to_file(log_file, verbose=verbose) as terminal:
        console = make_console(terminal, live=not verbose, budget_ms=LATENCY_BUDGET_MS)
        if not verbose:
            console.note(f"logs: {log_file} (-v shows them here)")
        code = run_demo(
            duration_s=duration, robots=robots, fps=fps, console=console, workdir=workdir, port=port,
            fitted_rollout=rollout,
        )  # fmt: skip
    cluster.exit_now(code)


if __name__ == "__main__":  # python -m lineside.cli ...; after every command is registered
    app()
