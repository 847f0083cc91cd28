"""``lineside model fit`` from the command line, and the fitted model judging frames in the real runtime.

The photos are the generator's printed labels. The defect the location test looks for is not the
generator's: a dark blot painted onto a held-out good photo at a known place, so the test does not only
round-trip the generator the settings were chosen on.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from contracts.manifest import load_manifest
from edge_node.runtime import InspectionModel, Verdict
from models import synth
from tests.integration.cp_fixtures import ControlPlane, ok

FAMILY = "printed"


@pytest.fixture(scope="module")
def photos() -> dict[str, list[bytes]]:
    good = [s.data for s in synth.generate_many(701, range(80), workers=2, label="good", family=FAMILY)]
    cracks = [s.data for s in synth.generate_many(702, range(6), workers=2, label="crack", family=FAMILY)]
    return {"fit": good[:60], "held_out": good[60:], "cracks": cracks}


@pytest.fixture(scope="module")
def fitted(photos: dict[str, list[bytes]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("fit")
    archive = root / "good.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, data in enumerate(photos["fit"]):
            z.writestr(f"line-3/good_{i:03d}.jpg", data)
        z.writestr("README.txt", "photos of good labels")  # not a photo: not read
        z.writestr("../escaped.jpg", b"\xff\xd8\xff not really a jpeg")  # a path out: never written, refused
        z.writestr("truncated.jpg", photos["fit"][0][:300])
    out = root / "model"
    run = subprocess.run(
        [sys.executable, "-m", "lineside", "model", "fit", str(archive), "--out", str(out), "--name", "labels",
         "--version", "1.2.0"],
        capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return {"root": root, "out": out, "stdout": json.loads(run.stdout), "stderr": run.stderr}


def test_the_cli_fits_from_a_zip_and_skips_what_is_not_a_good_photo(fitted: dict[str, object]) -> None:
    out, report, stderr = Path(str(fitted["out"])), fitted["stdout"], str(fitted["stderr"])
    assert isinstance(report, dict)
    assert sorted(p.name for p in out.iterdir()) == ["labels.card.md", "labels.manifest.json", "labels.onnx"]
    manifest = load_manifest(out / "labels.manifest.json")
    assert (manifest.name, manifest.version, manifest.output.kind) == ("labels", "1.2.0", "anomaly")
    assert manifest.decision.threshold == pytest.approx(report["threshold"])
    assert report["good_photos"] == 60 and report["skipped_files"] == 2
    assert "skipped ../escaped.jpg" in stderr and "skipped truncated.jpg" in stderr
    assert "fit: threshold" in stderr  # progress
    assert not (Path(str(fitted["root"])).parent / "escaped.jpg").exists()
    card = (out / "labels.card.md").read_text()
    assert "60 photos of good parts" in card and str(round(report["threshold"], 4)) in card


def _blot(data: bytes, centre: tuple[int, int]) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    x, y = centre
    ImageDraw.Draw(image).ellipse((x - 7, y - 5, x + 7, y + 5), fill=(70, 62, 55))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_the_fitted_model_passes_good_parts_and_points_at_a_defect_it_never_saw(
    fitted: dict[str, object], photos: dict[str, list[bytes]]
) -> None:
    model = InspectionModel(Path(str(fitted["out"])) / "labels.manifest.json", warmup_batch=2)
    good = model.inspect(photos["held_out"])
    assert all(isinstance(v, Verdict) for v in good)
    assert sum(v.verdict == "pass" for v in good if isinstance(v, Verdict)) >= len(good) - 1

    centre = (150, 170)  # on the label's bare lower half, in pixels of the 256 x 256 frame
    (blotted,) = model.inspect([_blot(photos["held_out"][0], centre)])
    assert isinstance(blotted, Verdict) and blotted.verdict == "fail", blotted
    assert blotted.location is not None
    assert abs(blotted.location["x"] - centre[0] / 256) < 0.06 and abs(blotted.location["y"] - centre[1] / 256) < 0.06
    x1, y1, x2, y2 = blotted.location["box"]
    assert x1 <= centre[0] / 256 <= x2 and y1 <= centre[1] / 256 <= y2

    cracks = model.inspect(photos["cracks"])
    assert sum(v.verdict == "fail" for v in cracks if isinstance(v, Verdict)) >= len(cracks) - 1


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--name", "Bad Name"], "invalid name"), (["--false-reject-rate", "0.9"], "--false-reject-rate")],
)
def test_the_cli_refuses_what_it_cannot_fit_with_what_to_change(
    photos: dict[str, list[bytes]], tmp_path: Path, args: list[str], says: str
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    for i, data in enumerate(photos["fit"][:55]):
        (good / f"{i}.jpg").write_bytes(data)
    run = subprocess.run([sys.executable, "-m", "lineside", "model", "fit", str(good), "--out", str(tmp_path / "o"),
                          *args], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and says in run.stderr, run.stderr
    assert not (tmp_path / "o").exists()


def test_too_few_good_photos_is_refused_before_any_work(photos: dict[str, list[bytes]], tmp_path: Path) -> None:
    for i, data in enumerate(photos["fit"][:12]):
        (tmp_path / f"{i}.png").write_bytes(data)  # JPEG bytes named .png: decoded by content, still a photo
    run = subprocess.run([sys.executable, "-m", "lineside", "model", "fit", str(tmp_path), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "12 good photos; a fit takes 50 to 500" in run.stderr, run.stderr
    assert np.all([not p.name.endswith(".onnx") for p in tmp_path.rglob("*")])


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_registry_takes_the_fitted_model_as_written_and_serves_it_back(
    fitted: dict[str, object], control_plane: ControlPlane, tmp_path: Path
) -> None:
    out = Path(str(fitted["out"]))
    manifest = json.loads((out / "labels.manifest.json").read_text())
    files = {"file": ("labels.onnx", (out / "labels.onnx").read_bytes())}
    version = ok(control_plane.client.post("/models", files=files, data={"manifest": json.dumps(manifest)},
                                           headers=control_plane.a.pm), 201)  # fmt: skip
    assert version["manifest"]["output"]["kind"] == "anomaly"
    assert version["manifest"]["decision"]["threshold"] == manifest["decision"]["threshold"]
    stored = control_plane.client.get(f"/models/{version['id']}/file", headers=control_plane.a.it).content
    assert stored == (out / "labels.onnx").read_bytes()
