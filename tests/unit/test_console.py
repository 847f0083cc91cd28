"""What ``lineside demo`` shows: plain lines when piped, one live view on a terminal, logs in a file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from lineside.console import LiveConsole, PlainConsole, logs_to_file, make_console, replicas_text, status_view
from robots.simulate import SimulationReport


def _report(latencies: list[float], lost: int = 0) -> SimulationReport:
    report = SimulationReport(robots=8, target_fps=40.0, elapsed_s=12.0, sent=400, results=398, lost=lost)
    report.correct = 390
    report.latencies_ms = latencies
    return report


def _text(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(renderable)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_plain_lines_keep_the_progress_format_the_tests_read() -> None:
    out = io.StringIO()
    console = PlainConsole(out)
    with console.step("rendering part images for the robots..."), console.streaming("8 robots"):
        console.update(_report([20.0, 30.0]), "model 1 running")
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["rendering part images for the robots...", "8 robots"]
    assert lines[2].startswith("t= 12.0s sent=400")
    assert "verdicts-correct=98.0% lost=0" in lines[2]


def test_live_view_shows_the_fleet_against_the_budget() -> None:
    text = _text(status_view("8 robots x 5 fps", _report([20.0] * 98 + [150.0] * 2), "model 2 running (max 2)", 100))
    assert "8 × 5 fps" in text
    assert "frames/s" in text and "(target 40)" in text
    assert "p50 20.0 ms" in text and "budget 100 ms" in text
    assert "verdicts correct  98.0%" in text
    assert "lost frames       0" in text
    assert "model 2 running (max 2)" in text


def test_latency_over_budget_is_red() -> None:
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system="standard")
    console.print(status_view("t", _report([500.0]), "", 100))
    assert isinstance(console.file, io.StringIO)
    assert "\x1b[31m500.0 ms" in console.file.getvalue()


def test_live_console_marks_finished_steps_and_redraws_one_view() -> None:
    out = io.StringIO()
    console = LiveConsole(100, Console(file=out, width=120, force_terminal=True, color_system=None))
    with console.step("starting local Ray..."):
        pass
    with console.streaming("8 robots"):
        console.update(_report([20.0]), "model 1 running")
    text = out.getvalue()
    assert "✓ starting local Ray (" in text
    assert "model 1 running" in text and "t= 12.0s" not in text  # the view, not plain progress lines


def test_a_pipe_gets_plain_lines() -> None:
    assert type(make_console(io.StringIO(), live=True, budget_ms=100)) is PlainConsole


def test_replicas_in_a_few_words() -> None:
    actual = {"replicas": {"model": {"RUNNING": 2, "STARTING": 1}, "ingress": {"RUNNING": 1}}, "reported_at": "x"}
    assert replicas_text(actual) == "model 2 running, 1 starting; ingress 1 running"
    assert replicas_text({}) == ""


def test_logs_and_children_go_to_the_file_and_the_console_keeps_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with logs_to_file(log, verbose=False) as terminal:
        os.write(1, b"stray stdout\n")  # what Ray and its C++ core write past Python
        os.write(2, b"raw stderr\n")
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
        terminal.write("for the user\n")
        terminal.flush()
    assert log.read_text().split() == ["stray", "stdout", "raw", "stderr", "child", "out", "child", "err"]
    os.write(1, b"")  # descriptors are back: writing does not fail
