"""Find and end the processes one Lineside command started, and only those.

Ray leaves some of its processes running when the process that started it stops: the raylet's
DashboardAgent and RuntimeEnvAgent ignore SIGTERM and outlive the raylet, and ``ray start`` daemons
outlive the command that ran it. ``ray stop --force`` would end them, but also every other Ray of the
same user on the machine (a test's, another slice's). So the command marks what it starts instead:
an environment variable with a value of its own (``RUN_MARK_VAR``), which the processes Ray starts
inherit and keep even after they are re-parented. ``/proc/<pid>/environ`` then names that run's
processes. Not all of them: a process that sets its title (Ray's agents do) may overwrite the memory
``environ`` shows. Those are the raylet's children, so a run is its marked processes *and all their
descendants*, taken while the tree is still whole (before Ray is shut down). Linux only (where the
agent runs); elsewhere nothing is found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RUN_MARK_VAR = "LINESIDE_RUN_MARK"
"""Environment variable whose value marks the processes one Lineside command started."""


@dataclass(frozen=True)
class Proc:
    """A process by PID and start time, so a PID the kernel reused for another process is never signalled."""

    pid: int
    started: int  # clock ticks after boot (/proc/<pid>/stat field 22)
    name: str


@dataclass(frozen=True)
class _Entry:
    proc: Proc
    parent: int
    marked: bool


def new_mark() -> str:
    """A value no other run on this machine carries."""
    return f"{os.getpid()}-{uuid.uuid4().hex}"


def _entry(pid: int, needle: bytes) -> _Entry | None:
    base = Path(f"/proc/{pid}")
    try:
        stat = (base / "stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ..., starttime is 20th
        if fields[0] == "Z":  # a zombie is dead already; only its parent's wait is missing
            return None
        marked = needle in (base / "environ").read_bytes().split(b"\0")
        name = (base / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except (OSError, IndexError):  # gone meanwhile, or another user's process
        return None
    return _Entry(Proc(pid, int(fields[19]), name), int(fields[1]), marked)


def of_run(mark: str) -> set[Proc]:
    """Live processes (not this one) that carry ``RUN_MARK_VAR=mark``, with all their descendants."""
    proc = Path("/proc")
    if not proc.is_dir():
        return set()
    needle = f"{RUN_MARK_VAR}={mark}".encode()
    entries = [e for p in proc.iterdir() if p.name.isdigit() and (e := _entry(int(p.name), needle))]
    found = {e.proc.pid for e in entries if e.marked}
    grew = True
    while grew:
        more = {e.proc.pid for e in entries if e.parent in found} - found
        found |= more
        grew = bool(more)
    found.discard(os.getpid())
    return {e.proc for e in entries if e.proc.pid in found}


def alive(procs: set[Proc]) -> set[Proc]:
    """Those of ``procs`` still running (the same process: a reused PID is not)."""
    running = set()
    for p in procs:
        entry = _entry(p.pid, b"")
        if entry is not None and entry.proc.started == p.started:
            running.add(p)
    return running


def _signal_all(procs: set[Proc], signum: signal.Signals) -> None:
    for p in alive(procs):
        with contextlib.suppress(ProcessLookupError, PermissionError):  # gone meanwhile
            os.kill(p.pid, signum)


def _wait_gone(procs: set[Proc], timeout_s: float) -> set[Proc]:
    """Poll until none of ``procs`` is alive or ``timeout_s`` passed; those still alive."""
    deadline = time.monotonic() + timeout_s
    while (left := alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def end(procs: set[Proc], grace_s: float = 5.0) -> set[Proc]:
    """SIGTERM ``procs``, SIGKILL those still alive after ``grace_s``; returns those that had to be killed.

    Waits (briefly) for the killed ones too, so a caller that returns has left nothing behind.
    """
    if not alive(procs):
        return set()
    _signal_all(procs, signal.SIGTERM)
    stubborn = _wait_gone(procs, grace_s)
    if stubborn:
        log.info("killing %d processes that ignored SIGTERM: %s", len(stubborn),
                 ", ".join(sorted({p.name for p in stubborn})))  # fmt: skip
        _signal_all(stubborn, signal.SIGKILL)
        if still := _wait_gone(stubborn, grace_s):
            log.warning("processes %s survived SIGKILL (stuck in the kernel?)", sorted(p.pid for p in still))
    return stubborn
