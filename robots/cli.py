"""``lineside robots simulate``: a simulated fleet of inspection robots streaming over MQTT.

``lineside.cli`` mounts this app as it is; ``python -m robots.cli robots simulate`` runs the same command.
``progress_line`` is the one-line report the demo prints too when its output is not a terminal.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from robots.simulate import SimulationReport

app = typer.Typer(no_args_is_help=True)
robots_app = typer.Typer(help="Inspection robots: simulate a fleet.", no_args_is_help=True)
app.add_typer(robots_app, name="robots")


def progress_line(report: SimulationReport) -> str:
    """One line of live progress (tests and the browser fixture read its ``t=`` prefix and fields)."""
    s = report.summary()
    accuracy = f"{s['accuracy']:.1%}" if s["accuracy"] is not None else "-"
    return (
        f"t={report.elapsed_s:5.1f}s sent={s['sent']:<6} answered={s['results'] + s['errors']:<6} "
        f"fps={s['throughput_fps']:6.1f} p50={s['p50_ms']:6.1f}ms p99={s['p99_ms']:6.1f}ms "
        f"verdicts-correct={accuracy} lost={s['lost']}"
    )


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
    family: Annotated[
        str | None, typer.Option(help="Surface family of every part (brushed, machined, cast, painted, printed).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Stream generated parts with known ground truth; print throughput, latency, accuracy, lost frames."""
    from models.synth import FAMILIES
    from robots.simulate import Simulation, render_pool

    if family is not None and family not in FAMILIES:
        raise typer.BadParameter(f"{family!r} is not a surface family; choose one of {', '.join(FAMILIES)}")
    pool = render_pool(96, family=family)
    sim = Simulation(host, port, tenant=tenant, line=line, robots=robots, fps=fps, pool=pool, timeout_s=timeout)
    report = sim.run(duration, progress=lambda r: typer.echo(progress_line(r), err=as_json))
    typer.echo(json.dumps(report.summary()) if as_json else "summary: " + progress_line(report))
    raise typer.Exit(1 if report.lost else 0)


if __name__ == "__main__":  # python -m robots.cli robots simulate ...
    app()
