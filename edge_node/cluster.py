"""Every Ray call Lineside makes goes through here, so the rest is testable without a cluster."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import ray
from ray import serve

from contracts.slice_spec import NODE_RESOURCE_PREFIX, SliceSpec
from edge_node import processes
from edge_node.errors import ClusterUnavailable
from edge_node.serving import deploy

log = logging.getLogger(__name__)

HEAD_CHECK_S = 1.0
"""How often ``exit_when_head_dies`` looks at the local Ray head's processes."""
EXIT_HEAD_LOST = 75
"""Exit status of a command whose local Ray head died (EX_TEMPFAIL): systemd's ``Restart=always`` starts it
again, with a new head."""

AGENT_APPLY_WAIT_S = 30.0
"""How long an agent pass waits for an applied slice to run before it reports it as deploying."""


_stopping = threading.Event()
"""Set by ``stop``: the head going down is then asked for, not a failure ``exit_when_head_dies`` acts on."""
_run_mark: str | None = None
"""Set once this process started Ray processes (a local Ray, or ``ray start`` daemons): ``stop`` ends them."""


def start(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    metrics_port: int | None = None,
    resources: dict[str, float] | None = None,
) -> None:
    """Connect to the site's Ray cluster (``address``) or start a local one; start Serve without HTTP.

    A local Ray exports Prometheus metrics (Lineside's ``ray_lineside_*`` and Serve's own) at
    ``http://127.0.0.1:{metrics_port}/metrics`` when ``metrics_port`` is given. Call ``stop`` when done
    (in a ``finally``): SIGTERM, like Ctrl-C, raises KeyboardInterrupt afterwards unless the program
    installed a handler of its own.
    """
    _stopping.clear()
    if not ray.is_initialized():
        with _signal_handlers_kept(), _marked_children():
            ray.init(
                # "local" always starts a new cluster; plain None would join any Ray already running on this
                # machine (e.g. one a `ray start` left behind), where num_cpus and resources are refused.
                address=address or "local",
                num_cpus=None if address else num_cpus,
                resources=None if address else resources,
                _metrics_export_port=None if address else metrics_port,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    serve.start(proxy_location="Disabled")
    log.info("ray ready: %s", ray.cluster_resources())


def run_processes() -> set[processes.Proc]:
    """The Ray processes this process started (none if it joined a cluster or started nothing)."""
    return processes.of_run(_run_mark) if _run_mark else set()


def exit_when_head_dies() -> threading.Thread | None:
    """End this process, with every Ray process it started, as soon as the local Ray head it started dies.

    When the head's GCS server or raylet dies, Ray's calls hang and Ray ends the process after 60 s from
    inside, so no ``finally`` runs and the raylet's agents, which outlive it, are left behind (chaos
    scenario 5). Instead a thread checks the head every ``HEAD_CHECK_S``; once it is gone it ends the run's
    processes (as seen the second before, while the tree was whole: the agents lose their parent) and exits
    with ``EXIT_HEAD_LOST`` for the service manager to restart the command. None when this process started
    no head (it joined a cluster, or Ray is not started).
    """
    mark = _run_mark
    if mark is None or not ray.is_initialized():
        return None
    tree = processes.of_run(mark)
    head = {p for p in tree if any(name in p.name for name in ("gcs_server", "raylet"))}
    if not head:
        return None

    def watch() -> None:
        nonlocal tree
        while not _stopping.wait(HEAD_CHECK_S):
            if (gone := head - processes.alive(head)) and not _stopping.is_set():
                names = ", ".join(sorted(p.name.rsplit("/", 1)[-1] for p in gone))
                log.error("the Ray head died (%s gone): ending this run's Ray processes and exiting %d so that "
                          "the service manager starts it again", names, EXIT_HEAD_LOST)  # fmt: skip
                processes.end(tree | processes.of_run(mark), grace_s=2.0)
                logging.shutdown()
                os._exit(EXIT_HEAD_LOST)
            tree |= processes.of_run(mark)  # replicas come and go: keep every process seen

    thread = threading.Thread(target=watch, name="ray-head-watch", daemon=True)
    thread.start()
    return thread


def start_worker(address: str, resources: dict[str, float]) -> None:
    """Start this machine's raylet in the site's cluster at ``address`` (``ray start``); ``stop`` ends it."""
    # The `ray` beside this Python: systemd runs the agent from its virtualenv without it on PATH.
    beside = Path(sys.executable).parent / "ray"
    ray_cli = str(beside) if beside.exists() else "ray"
    command = [ray_cli, "start", "--address", address, "--resources", json.dumps(resources)]
    with _signal_handlers_kept(), _marked_children():
        # Ray 2.60 heads require a cluster token: copy the head's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN).
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
        subprocess.run(command, check=True, env=env)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Ray must not change how this process reacts to SIGTERM and SIGINT.

    ``ray.init`` replaces SIGTERM's handler with one that aborts the process (exit -6, no ``finally``
    runs, Ray's agents stay behind). Afterwards the program's own handlers are back; where SIGTERM had
    none, it raises KeyboardInterrupt as Ctrl-C does, so the caller's ``finally: stop()`` cleans up.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            if not (callable(handler) or handler == signal.SIG_IGN):
                handler = signal.default_int_handler if signum == signal.SIGINT else _interrupt
            signal.signal(signum, handler)


@contextlib.contextmanager
def _marked_children() -> Iterator[None]:
    """Processes started inside carry this run's mark (``processes``); later children of this one do not."""
    global _run_mark
    _run_mark = _run_mark or processes.new_mark()
    os.environ[processes.RUN_MARK_VAR] = _run_mark
    try:
        yield
    finally:
        os.environ.pop(processes.RUN_MARK_VAR, None)


def _connected() -> None:
    """Serve's calls connect to Ray by themselves when it is not initialised; after ``stop`` that would
    start a new driver in whatever thread asked (an agent finishing its pass) and Ray ends the process."""
    if not ray.is_initialized():
        raise ClusterUnavailable("not connected to Ray: start the cluster first (or it was shut down)")


def apply_slice(spec: SliceSpec, wait_s: float | None = 600.0) -> bool:
    """Create or update a slice; True once it runs, False if it still deploys after ``wait_s``."""
    _connected()
    running = deploy(spec, wait_s)
    if running:
        log.info("slice %s serving %s for tenant %s", spec.name, ", ".join(spec.lines), spec.tenant)
    else:
        log.warning("slice %s not running after %.0fs; Serve keeps deploying it", spec.name, wait_s or 0)
    return running


def apply_slice_briefly(spec: SliceSpec) -> None:
    """The edge agent's apply: hand the slice to Serve, wait a little, report whatever state it is in."""
    apply_slice(spec, wait_s=AGENT_APPLY_WAIT_S)


def slice_stats(spec: SliceSpec) -> dict[str, Any]:
    """Counters of one ingress replica of the slice (routing picks which)."""
    handle = serve.get_deployment_handle("ingress", app_name=spec.name)
    return dict(handle.stats.remote().result())


def slice_processes(spec: SliceSpec) -> dict[str, dict[str, Any]]:
    """PID, resident memory and details of one replica of each of the slice's deployments."""
    ingress = serve.get_deployment_handle("ingress", app_name=spec.name)
    model = serve.get_deployment_handle("model", app_name=spec.name)
    return {"ingress": dict(ingress.process.remote().result()), "model": dict(model.info.remote().result())}


def gcs_address() -> str:
    """Address other nodes pass to ``ray start --address`` (and ``lineside edge-node join --ray-address``)."""
    return str(ray.get_runtime_context().gcs_address)


def lineside_resources() -> list[str]:
    """The ``lineside_node_<id>`` resources of the cluster's nodes (which nodes replicas can be pinned to)."""
    _connected()
    return sorted(r for r in ray.cluster_resources() if r.startswith(NODE_RESOURCE_PREFIX))


def applications() -> set[str]:
    """Names of the Serve applications on the cluster."""
    _connected()
    return set(serve.status().applications)


def slice_status(spec: SliceSpec) -> dict[str, Any]:
    """Serve's view of the slice: application status and running replicas per deployment."""
    return app_status(spec.name)


def app_status(name: str) -> dict[str, Any]:
    """Serve's view of one application: its status and running replicas per deployment."""
    _connected()
    status = serve.status().applications.get(name)
    if status is None:
        return {"status": "NOT_DEPLOYED", "deployments": {}}
    return {
        "status": str(status.status.value if hasattr(status.status, "value") else status.status),
        "deployments": {
            name: {"status": str(d.status.value if hasattr(d.status, "value") else d.status),
                   "replicas": dict(d.replica_states)}
            for name, d in status.deployments.items()
        },
    }  # fmt: skip


def delete_slice(name: str) -> None:
    _connected()
    serve.delete(name)


def stop(*, process_exiting: bool = False) -> None:
    """Shut down Serve and Ray, then end whatever Ray processes this process started that are still there.

    A second SIGTERM or Ctrl-C meanwhile is ignored (logged): it must not cut the cleanup short.

    ``process_exiting``: a command about to end, which then ends with ``exit_now``. Its own Ray worker is
    not shut down: after ``ray.shutdown`` a late callback on one of Ray's threads (a retried task of the
    Serve controller it just killed, say) can find that worker gone, and Ray then ends the process at once
    with status 1 ("The core worker has already been shutdown"), whatever the command meant to return; a
    demo whose every frame was answered exited 1 that way. Serve is shut down and the run's Ray processes
    are ended all the same.
    """
    _stopping.set()
    with _signals_deferred():
        # Taken before Ray goes down: its agents are known only as the raylet's children (see processes).
        started = processes.of_run(_run_mark) if _run_mark else set()
        try:
            if ray.is_initialized():
                try:
                    serve.shutdown()
                finally:
                    if not process_exiting:
                        ray.shutdown()
        finally:
            if _run_mark is not None:
                killed = processes.end(started | processes.of_run(_run_mark))
                if killed:
                    log.info("ended %d Ray processes %s", len(killed),
                             "of this run" if process_exiting else "that outlived ray.shutdown")  # fmt: skip


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` now, after ``stop(process_exiting=True)``: output and logs flushed, but
    not through Python's exit handlers, where Ray's own would shut its worker down (see ``stop``)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def already_stopping(signum: int, _frame: FrameType | None) -> None:
        log.warning("%s: already stopping Serve and Ray", signal.Signals(signum).name)

    before = {s: signal.signal(s, already_stopping) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
