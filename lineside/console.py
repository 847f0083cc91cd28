"""What ``lineside demo`` shows: one live status view on a terminal, plain lines everywhere else.

On a terminal (and without ``-v``) the demo prints its setup once (URLs, logins), shows each long step
with a spinner and its time, then one status panel that redraws in place: robots, frames/s, latency
against the line's budget, verdict accuracy, lost frames, slice replicas, the tenant's money. Piped into
a file, a test or CI, it prints the same facts as plain lines, one progress line a second
(``robots.cli.progress_line``), which the integration tests and the browser fixture read, and a
``money:`` line whenever the tenant's spend or balances change.

Logs (the control plane's, Alembic's, the agent's HTTP requests, Ray's) go to a file whose path is
printed first; ``-v`` keeps them on the console instead, with plain lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from robots.cli import progress_line
from robots.simulate import SimulationReport


class PlainConsole:
    """Plain lines on a stream: what a pipe, a test or CI reads."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._money = ""

    def note(self, text: str) -> None:
        """A line that stays: a URL, a login, a result."""
        print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """A long step (starting Ray, rendering images): announced before it runs."""
        self.note(text)
        yield

    @contextlib.contextmanager
    def streaming(self, title: str) -> Iterator[None]:
        """The robots stream inside this block; ``update`` reports on them."""
        self.note(title)
        yield

    def update(self, report: SimulationReport, replicas: str) -> None:
        """One progress line a second (``replicas`` is for the live view only: the line format is read)."""
        self.note(progress_line(report))

    def money(self, text: str) -> None:
        """The tenant's month (spend, vouchers): a ``money:`` line each time it changes."""
        if text and text != self._money:
            self._money = text
            self.note(f"money: {text}")


class LiveConsole(PlainConsole):
    """A terminal: spinners for long steps and one status panel redrawn in place."""

    def __init__(self, budget_ms: float, console: Console) -> None:
        super().__init__(console.file)
        self.console = console
        self.budget_ms = budget_ms
        self._live: Live | None = None
        self._title = ""

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        started = time.monotonic()
        with self.console.status(text.rstrip(".") + "…"):
            yield
        self.console.print(f"[green]✓[/] {text.rstrip('.')} [dim]({time.monotonic() - started:.1f}s)[/]")

    @contextlib.contextmanager
    def streaming(self, title: str) -> Iterator[None]:
        self._title = title
        with Live(
            Text(title), console=self.console, refresh_per_second=4, redirect_stdout=False, redirect_stderr=False
        ) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def update(self, report: SimulationReport, replicas: str) -> None:
        if self._live is not None:
            self._live.update(status_view(self._title, report, replicas, self.budget_ms, self._money))

    def money(self, text: str) -> None:
        self._money = text or self._money  # shown in the panel at its next redraw


def status_view(title: str, report: SimulationReport, replicas: str, budget_ms: float, money: str = "") -> Group:
    """The live panel: what a plant manager would glance at, the latency coloured against the budget."""
    s = report.summary()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    answered = s["results"] + s["errors"]
    table.add_row("robots", f"{report.robots} × {report.target_fps / report.robots:g} fps")
    table.add_row("frames/s", f"{s['throughput_fps']:.1f} (target {report.target_fps:g})")
    table.add_row("latency", _latency(s["p50_ms"], s["p99_ms"], budget_ms) if answered else Text("-"))
    accuracy = "-" if s["accuracy"] is None else f"{s['accuracy']:.1%}"
    table.add_row("verdicts correct", accuracy)
    table.add_row("sent / answered", f"{s['sent']} / {answered}")
    table.add_row("lost frames", Text(str(s["lost"]), style="red bold" if s["lost"] else "green"))
    table.add_row("slice replicas", replicas or "-")
    if money:
        table.add_row("money", money)
    return Group(Text(f"{title}   t={report.elapsed_s:.0f}s", style="bold"), table)


def _latency(p50: float, p99: float, budget_ms: float) -> Text:
    def part(value: float) -> tuple[str, str]:
        return f"{value:.1f} ms", "green" if value <= budget_ms else "red"

    return Text.assemble("p50 ", part(p50), "  p99 ", part(p99), f"  (budget {budget_ms:g} ms)")


def replicas_text(actual: dict[str, Any] | None) -> str:
    """The agent's last report of a slice (``actual``) in a few words: "model 2 running, ingress 1 running"."""
    deployments = (actual or {}).get("replicas") or {}
    parts = []
    for name, states in deployments.items():
        parts.append(f"{name} " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items())))
    return "; ".join(parts)


def make_console(stream: IO[str], *, live: bool, budget_ms: float) -> PlainConsole:
    """A live view when ``stream`` is a terminal and ``live`` is asked for; plain lines otherwise."""
    if live and stream.isatty():
        return LiveConsole(budget_ms, Console(file=stream, highlight=False))
    return PlainConsole(stream)


@contextlib.contextmanager
def logs_to_file(path: Path, *, verbose: bool) -> Iterator[IO[str]]:
    """Yields the stream the console writes to; unless ``verbose``, everything else goes to ``path``.

    The descriptors themselves (1 and 2) are pointed at the file, not only Python's log handlers:
    Ray's Serve logger, the raylet's error lines and Ray's C++ core write to stdout and stderr on their
    own, as do the processes started meanwhile (they inherit the file). The console gets a copy of the
    original stdout. Both are restored on the way out, so a traceback that ends the command still
    reaches the terminal.
    """
    if verbose:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    with path.open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        terminal.close()
