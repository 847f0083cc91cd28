"""The ``lineside`` command. Every subcommand has ``--help``."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from models.manifest import BUNDLED_MANIFEST

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
    from edge_node.runtime import InspectionModel, Verdict

    model = InspectionModel(manifest)
    failed = False
    for path, outcome in zip(images, model.inspect([p.read_bytes() for p in images]), strict=True):
        if isinstance(outcome, Verdict):
            typer.echo(json.dumps({"file": str(path), **outcome.__dict__}))
        else:
            failed = True
            typer.echo(json.dumps({"file": str(path), "code": outcome.code.value, "detail": outcome.detail}))
    raise typer.Exit(1 if failed else 0)


@app.command()
def demo(
    parts: Annotated[int, typer.Option(min=1, help="Generated parts to inspect.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of the generated parts.")] = 2026,
    manifest: ManifestOption = BUNDLED_MANIFEST,
) -> None:
    """Run the main job on embedded defaults: judge generated parts and print verdicts.

    Until the MQTT data path lands this runs the model locally on generated
    frames (with known ground truth) through the same runtime a slice uses.
    """
    from edge_node.runtime import InspectionModel, Verdict
    from models import synth

    model = InspectionModel(manifest)
    typer.echo(f"model {model.manifest.name} {model.manifest.version} on {', '.join(model.providers)}")
    correct = 0
    started = time.perf_counter()
    for i in range(parts):
        sample = synth.generate(seed, i)
        (outcome,) = model.inspect([sample.data])
        if not isinstance(outcome, Verdict):
            typer.echo(f"frame {i} refused: {outcome}", err=True)
            raise typer.Exit(1)
        expected = "pass" if sample.label == "good" else "fail"
        correct += outcome.verdict == expected
        mark = "ok " if outcome.verdict == expected else "MISS"
        typer.echo(
            f"[{i + 1:>4}/{parts}] {mark} part {i:<5} {sample.family:<9} truth={sample.label:<16} "
            f"verdict={outcome.verdict:<4} class={outcome.defect_class or '-':<16} score={outcome.score:.3f}"
        )
    elapsed = time.perf_counter() - started
    typer.echo(
        f"summary: {parts} parts, {correct} verdicts match ground truth ({correct / parts:.1%}), "
        f"{parts / elapsed:.1f} parts/s including rendering"
    )


@app.command("model-info")
def model_info(manifest: ManifestOption = BUNDLED_MANIFEST) -> None:
    """Print a model's manifest and the execution providers it would run on."""
    from edge_node.runtime import InspectionModel

    model = InspectionModel(manifest)
    typer.echo(json.dumps({"manifest": model.manifest.model_dump(mode="json"), "providers": model.providers}, indent=2))


if __name__ == "__main__":
    app()
