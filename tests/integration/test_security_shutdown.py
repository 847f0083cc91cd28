"""Stopping Lineside's Ray-starting commands leaves no process behind (issue 11, item 18).

systemd stops the edge agent with SIGTERM and a person stops a slice with Ctrl-C (SIGINT). Either
way, every process the command started (Ray's GCS, raylet, dashboard and runtime-env agents, the Serve
controller and replicas) must be gone afterwards, and the command exits 0: a stop that was asked for
and done is a success.

Each command runs in its own session with an environment variable that only this run carries: the
processes Ray starts inherit it and keep it after they are re-parented, so ``/proc/<pid>/environ`` names
this run's processes (never other Rays on the machine); with their descendants, since a process that
retitles itself (Ray's agents) may blank its environ, and with every process seen while the run was up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from edge_node.broker import MosquittoBroker

LINESIDE = str(Path(sys.executable).parent / "lineside")
RUN_MARK = "LINESIDE_TEST_SHUTDOWN_RUN"
STARTUP_TIMEOUT_S = 300.0  # Ray plus a Serve deployment on a busy 2-core machine
EXIT_TIMEOUT_S = 120.0
LEFTOVER_GRACE_S = 30.0  # after the command exited: processes still dying (a kernel reaping them) get this long


Key = tuple[int, int]
"""A process as (PID, start time in clock ticks): a PID the kernel reused is another process."""


class Seen(NamedTuple):
    parent: int
    environ: list[bytes]
    cmdline: str


def _proc_table() -> dict[Key, Seen]:
    """Every live process we may read."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):  # gone meanwhile, or another user's process
            continue
        if fields[0] != "Z":  # a zombie is dead, only waiting for its parent to reap it
            table[(int(entry.name), int(fields[19]))] = Seen(int(fields[1]), environ, cmdline)
    return table


def run_processes(mark: str) -> dict[Key, str]:
    """This run's live processes -> command line: those whose environment carries ``RUN_MARK=mark`` and
    all their descendants (a process that sets its title, as Ray's agents do, may blank its environ)."""
    needle = f"{RUN_MARK}={mark}".encode()
    table = _proc_table()
    found = {pid for (pid, _), seen in table.items() if needle in seen.environ}
    while more := {pid for (pid, _), seen in table.items() if seen.parent in found} - found:
        found |= more
    return {key: seen.cmdline for key, seen in table.items() if key[0] in found}


def kill_all(keys: dict[Key, str]) -> None:
    """Whatever a failed test left running must not slow the next tests down."""
    alive = _proc_table()
    for key in keys:
        if key in alive:
            with suppress(ProcessLookupError):
                os.kill(key[0], signal.SIGKILL)


@dataclass
class Run:
    """One command started in its own session; its output lines are collected as they come."""

    process: subprocess.Popen[str]
    mark: str
    lines: list[str] = field(default_factory=list)
    up: dict[Key, str] = field(default_factory=dict)  # its processes once it was fully up
    seen: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.seen:
                self.lines.append(line.rstrip("\n"))
                self.seen.notify_all()

    def wait_for(self, text: str, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        with self.seen:
            while True:
                hit = next((line for line in self.lines if text in line), None)
                if hit is not None:
                    return hit
                left = deadline - time.monotonic()
                assert left > 0 and self.process.poll() is None, f"no {text!r} in:\n" + "\n".join(self.lines)
                self.seen.wait(min(left, 1.0))

    def stop(self, signum: signal.Signals) -> int:
        """Send ``signum`` to the command only (as `kill` and systemd's KillMode=mixed do); its exit code."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_TIMEOUT_S:.0f}s after {signum.name}:\n" + "\n".join(self.lines))

    def alive(self) -> dict[Key, str]:
        """Its processes seen while it was up that still live, and any process of this run now."""
        table = _proc_table()
        return {key: cmd for key, cmd in self.up.items() if key in table} | run_processes(self.mark)

    def leftovers(self) -> dict[Key, str]:
        """Its processes still alive, polled until none remain or the grace period is over."""
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left


@contextmanager
def started(args: list[str], ray_tmp: Path, program: str = LINESIDE) -> Iterator[Run]:
    """``lineside *args`` with an isolated Ray temp dir; everything it started is killed afterwards."""
    mark = uuid.uuid4().hex
    env = {**os.environ, RUN_MARK: mark, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [program, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    run = Run(process, mark)
    reader = threading.Thread(target=run.read, daemon=True)
    reader.start()
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        kill_all(run.alive())
        reader.join(timeout=10)


def wait_for_ray_agents(run: Run, *, head: bool = True) -> None:
    """The raylet starts its DashboardAgent and RuntimeEnvAgent (the ones that ignore SIGTERM) a little
    after it serves; signal before they exist and the test proves nothing."""
    expected = ["raylet", "DashboardAgent", "RuntimeEnvAgent"] + (["gcs_server"] if head else [])
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        run.up = run_processes(run.mark)
        if all(name in " ".join(run.up.values()) for name in expected):
            return
        time.sleep(0.5)
    pytest.fail(f"this run's Ray processes were not all found: {run.up}")


def assert_nothing_left(run: Run, code: int, signum: signal.Signals) -> None:
    left = run.leftovers()
    survivors = "\n".join(f"{pid} {cmd[:160]}" for (pid, _), cmd in sorted(left.items()))
    assert not left, f"{len(left)} processes of this run survived {signum.name} (exit {code}):\n{survivors}"
    assert code == 0, f"exit {code} after {signum.name}:\n" + "\n".join(run.lines[-30:])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_slice_run_stops_cleanly_and_leaves_no_process(
    broker: MosquittoBroker, ray_tmp: Path, signum: signal.Signals
) -> None:
    args = ["slice", "run", "--broker-port", str(broker.port), "--max-batch-size", "4"]
    with started(args, ray_tmp) as run:
        run.wait_for("Ctrl-C to stop")
        wait_for_ray_agents(run)
        code = run.stop(signum)
        assert_nothing_left(run, code, signum)


def _agent_dir(base: Path, node_id: int) -> Path:
    """A joined node whose control plane is down: the agent runs from its state alone (systemd's restart case)."""
    data_dir = base / f"agent-{node_id}"
    data_dir.mkdir(mode=0o700)
    node = {"id": node_id, "site_id": 1, "hostname": f"edge-{node_id}", "node_token": "ls_node-unreachable"}
    (data_dir / "agent.json").write_text(json.dumps({"control_plane": "http://127.0.0.1:9", "node": node}))
    return data_dir


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_edge_agent_head_and_worker_stop_cleanly_and_leave_no_process(
    tmp_path: Path, ray_tmp: Path, signum: signal.Signals
) -> None:
    head_args = ["edge-node", "run", "--data-dir", str(_agent_dir(tmp_path, 1)), "--period", "1"]
    with started(head_args, ray_tmp) as head:
        address = head.wait_for("Ray head at ").split("--ray-address ")[-1].strip()
        wait_for_ray_agents(head)
        worker_args = ["edge-node", "run", "--data-dir", str(_agent_dir(tmp_path, 2)), "--ray-address", address]
        with started(worker_args, ray_tmp) as worker:
            worker.wait_for("agent running")
            wait_for_ray_agents(worker, head=False)
            assert_nothing_left(worker, worker.stop(signum), signum)
        assert_nothing_left(head, head.stop(signum), signum)


def ignoring_sigterm(ready: Path) -> str:
    """Python code that ignores SIGTERM, then says so by creating ``ready``, then sleeps."""
    return (f"import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(300)")  # fmt: skip


def test_cleanup_ends_this_runs_processes_and_no_one_elses(tmp_path: Path) -> None:
    """What ``cluster.stop`` does after Ray's shutdown, on plain processes: ones that ignore SIGTERM are
    killed, a child whose environment lost the mark (as a retitled Ray agent's does) is found through its
    parent, and a process of another run with the same variable is left alone."""
    from edge_node import processes

    mark, other = processes.new_mark(), processes.new_mark()
    child = ignoring_sigterm(tmp_path / "child")
    parent = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {child!r}], env={{}}); "
    parent += ignoring_sigterm(tmp_path / "parent")
    env = {**os.environ, processes.RUN_MARK_VAR: mark}
    ours = subprocess.Popen([sys.executable, "-c", parent], env=env)
    env = {**os.environ, processes.RUN_MARK_VAR: other}
    theirs = subprocess.Popen([sys.executable, "-c", ignoring_sigterm(tmp_path / "theirs")], env=env)
    found: set[processes.Proc] = set()
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        found = processes.of_run(mark)
        assert ours.pid in {p.pid for p in found} and len(found) == 2, found
        killed = processes.end(found, grace_s=1.0)
        assert killed == found, "both ignore SIGTERM: both must have needed SIGKILL"
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert not processes.of_run(mark)
        assert theirs.poll() is None, "another run's process was ended"
    finally:
        processes.end(found, grace_s=0)
        for process in (ours, theirs):
            process.kill()
            process.wait()


LATE_CALLBACK = """
import signal
import ray
from edge_node import cluster
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}})
cluster.start(num_cpus=1)
worker = ray._private.worker.global_worker.core_worker
print("ray up", flush=True)
signal.sigwait({{signal.SIGUSR1}})  # the test has seen Ray's agents
cluster.stop(process_exiting={exiting})
worker.get_current_job_id()  # what a late callback on one of Ray's own threads does
print("cleaned up", flush=True)
cluster.exit_now(3)
"""


@pytest.mark.parametrize("exiting", [False, True], ids=["ray-shutdown", "process-exiting"])
def test_a_late_ray_callback_after_the_stop_cannot_change_the_commands_exit_status(
    ray_tmp: Path, exiting: bool
) -> None:
    """A demo whose every frame was answered once exited 1, its cleanup cut short: after ``ray.shutdown`` a
    callback on one of Ray's threads found the driver's worker gone, and Ray ended the process at once with
    status 1. A command about to end stops with ``process_exiting`` and ends with ``exit_now``: its own
    status, all of its Ray processes ended. (``ray-shutdown`` shows the hazard, Ray's own behaviour.)"""
    script = LATE_CALLBACK.format(exiting=exiting)
    with started(["-c", script], ray_tmp, program=sys.executable) as run:
        run.wait_for("ray up")
        wait_for_ray_agents(run)
        run.process.send_signal(signal.SIGUSR1)
        code = run.process.wait(timeout=EXIT_TIMEOUT_S)
        if not exiting:
            time.sleep(1)  # the reader thread has the last lines
            assert code == 1 and "cleaned up" not in run.lines, run.lines[-20:]
            return
        run.wait_for("cleaned up", timeout_s=10)
        assert code == 3, run.lines[-20:]
        left = run.leftovers()
        assert not left, f"{len(left)} processes of this run survived: {sorted(left.values())}"
