"""The installed ``lineside`` command and the module entry points, run as a user runs them."""

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from models import synth

LINESIDE = str(Path(sys.executable).parent / "lineside")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=check)


def _walk(app: Any) -> list[list[str]]:
    """Every command and group of a Typer app, found by walking it (new ones are covered too)."""
    import typer

    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:  # typer's own click: groups have .commands
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_group(app), [])  # a group even with one command, as lineside mounts it
    return found


def _commands() -> list[list[str]]:
    from lineside.cli import app

    return _walk(app)


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "lineside")
def test_every_command_has_help(command: list[str]) -> None:
    result = run(LINESIDE, *command, "--help")
    assert "Usage" in result.stdout
    assert "--help" in result.stdout


MODULES = ["training.train", "training.evaluate", "docs.screenshots"]
PACKAGE_CLIS = [
    "control_plane.cli",
    "edge_node.cli",
    "robots.cli",
    "training.cli",
    "bench.cli",
    "bridges.cli",
    "lineside.cli",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_entry_points_have_help(module: str) -> None:
    assert "usage" in run(sys.executable, "-m", module, "--help").stdout


def _module_commands() -> list[tuple[str, list[str]]]:
    """(module, command) for every command of every package's sub-app, and of ``python -m lineside``."""
    found = [(module, path) for module in PACKAGE_CLIS for path in _walk(importlib.import_module(module).app)]
    return found + [("lineside", path) for path in _commands()]


@pytest.mark.parametrize(
    ("module", "command"), _module_commands(), ids=lambda c: " ".join(c) if isinstance(c, list) else c
)
def test_python_m_runs_every_command(module: str, command: list[str]) -> None:
    """``python -m <package>.cli ARGS`` runs what ``lineside ARGS`` runs: every command is registered first."""
    result = run(sys.executable, "-m", module, *command, "--help")
    assert "Usage" in result.stdout
    assert "--help" in result.stdout


def test_package_clis_together_are_the_lineside_cli() -> None:
    """lineside.cli only assembles: each command it has comes from one package's sub-app (or is the demo)."""
    from_packages = [p for m in PACKAGE_CLIS[:-1] for p in _walk(importlib.import_module(m).app) if p]
    assert sorted([*map(tuple, from_packages), ("demo",)]) == sorted(tuple(p) for p in _commands() if p)


def test_inspect_prints_a_verdict_per_file(tmp_path: Path) -> None:
    good, cracked = tmp_path / "good.jpg", tmp_path / "cracked.jpg"
    good.write_bytes(synth.generate(31, 0, "good").data)
    cracked.write_bytes(synth.generate(4242, 3, "crack").data)  # an obvious crack: the model is sure of it
    junk = tmp_path / "notes.txt"
    junk.write_text("not a frame")
    result = run(LINESIDE, "inspect", str(good), str(cracked), str(junk), check=False)
    assert result.returncode == 1
    first, second, third = (json.loads(line) for line in result.stdout.splitlines())
    assert (first["file"], first["verdict"]) == (str(good), "pass")
    assert (second["file"], second["verdict"], second["defect_class"]) == (str(cracked), "fail", "crack")
    assert third["code"] == "unsupported_format"


def test_demo_streams_robots_through_a_slice_and_cleans_up() -> None:
    """What `make demo` runs, all through the control plane; non-zero exit only if frames were lost."""
    result = run(LINESIDE, "demo", "--duration", "5", "--robots", "2", "--fps", "2", check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "model rollout: skipped" in result.stdout  # 5 s of streaming is too short for its three steps
    assert "control plane: http://127.0.0.1:" in result.stdout
    assert "broker: mosquitto with dynamic security on 127.0.0.1:" in result.stdout
    assert "2 robots registered" in result.stdout
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ui/", result.stdout)
    for role in ("operator", "plant_manager", "factory_it"):
        assert re.search(rf"{role} +login: \S+@\S+ / \S+ +API token: ls_", result.stdout), f"no {role} login printed"
    assert "slice inspect: running" in result.stdout
    assert "summary:" in result.stdout
    assert "ok: every one of" in result.stdout
    assert "stopped the agent, Ray, the broker and the control plane" in result.stdout
    # Logs go to the file it names, not between the progress lines (-v brings them back).
    logs = re.search(r"^logs: (\S+)", result.stdout, re.MULTILINE)
    assert logs, result.stdout
    assert "alembic.runtime.migration" in Path(logs.group(1)).read_text()
    assert " INFO " not in result.stdout + result.stderr
    config = re.search(r"\(config (\S+)\)", result.stdout)
    assert config, result.stdout
    leftovers = subprocess.run(["pgrep", "-f", config.group(1)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo left its broker running"


def test_evaluate_prints_one_json_object() -> None:
    result = run(sys.executable, "-m", "training.evaluate", "--json", "-n", "64")
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 64
    assert {"accuracy", "fail_recall", "false_reject_rate", "per_class"} <= metrics.keys()


def test_runtime_benchmark_prints_json() -> None:
    result = run(LINESIDE, "bench", "runtime", "--json", "--batches", "1", "--batches", "8",
                 "--threads", "1", "--seconds", "0.2")  # fmt: skip
    report = json.loads(result.stdout)
    assert [r["batch"] for r in report["results"]] == [1, 8]
    assert all(r["raw_ort_frames_per_s"] > 0 and r["lineside_frames_per_s"] > 0 for r in report["results"])


def test_pipeline_benchmark_refuses_a_model_it_cannot_find() -> None:
    result = run(LINESIDE, "bench", "pipeline", "--model", "/nowhere/x.manifest.json", check=False)
    assert result.returncode == 2 and "no manifest at /nowhere/x.manifest.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_scheduler_benchmark_prints_json() -> None:
    result = run(LINESIDE, "bench", "scheduler", "--nodes", "50", "--replicas", "500", "--baseline-seconds", "0.2",
                 "--json")  # fmt: skip
    report = json.loads(result.stdout)
    assert (report["nodes"], report["replicas"], report["placed"]) == (50, 500, 500)
    assert report["nodes_failed"] == 5 and report["unplaced_after_failure"] == 0
    assert report["placements_per_s"] > 0 and report["baseline_first_fit_placements_per_s"] > 0


def test_a_join_token_can_come_from_the_environment_and_stay_out_of_the_process_list(tmp_path: Path) -> None:
    """``edge-node join`` reads LINESIDE_JOIN_TOKEN (the Kubernetes and compose manifests pass it so): the token
    is not in the command line that ``ps`` shows. Without either, the error names both ways."""
    import os

    env = {**os.environ, "LINESIDE_JOIN_TOKEN": "jt_from-the-environment"}
    args = [LINESIDE, "edge-node", "join", "--control-plane", "http://127.0.0.1:9", "--data-dir", str(tmp_path / "a")]
    joined = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert joined.returncode == 2 and "join failed" in joined.stderr  # it tried: the token was read
    env.pop("LINESIDE_JOIN_TOKEN")
    missing = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "--token" in missing.stderr
