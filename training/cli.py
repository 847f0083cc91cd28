"""Model tools: ``lineside inspect`` (judge image files) and ``lineside model-info`` (manifest, providers).

They live with training and evaluation, the package that may use both the bundled model (``models``) and
the runtime that serves it (``edge_node.runtime``). ``lineside.cli`` mounts this app as it is;
``python -m training.cli inspect ...`` runs the same commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from models import BUNDLED_MANIFEST

app = typer.Typer(no_args_is_help=True)

ManifestOption = Annotated[Path, typer.Option(help="Model manifest (JSON) to load.", exists=True, dir_okay=False)]


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


@app.command("model-info")
def model_info(manifest: ManifestOption = BUNDLED_MANIFEST) -> None:
    """Print a model's manifest and the execution providers it would run on."""
    from edge_node.runtime import InspectionModel

    model = InspectionModel(manifest)
    typer.echo(json.dumps({"manifest": model.manifest.model_dump(mode="json"), "providers": model.providers}, indent=2))


if __name__ == "__main__":  # python -m training.cli inspect ...
    app()
