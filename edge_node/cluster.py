"""Every Ray call Lineside makes goes through here, so the rest is testable without a cluster."""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve

from edge_node.errors import ClusterUnavailable
from edge_node.serving import deploy
from edge_node.slice_spec import NODE_RESOURCE_PREFIX, SliceSpec

log = logging.getLogger(__name__)

AGENT_APPLY_WAIT_S = 30.0
"""How long an agent pass waits for an applied slice to run before it reports it as deploying."""


def start(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    metrics_port: int | None = None,
    resources: dict[str, float] | None = None,
) -> None:
    """Connect to the site's Ray cluster (``address``) or start a local one; start Serve without HTTP.

    A local Ray exports Prometheus metrics (Lineside's ``ray_lineside_*`` and Serve's own) at
    ``http://127.0.0.1:{metrics_port}/metrics`` when ``metrics_port`` is given.
    """
    if not ray.is_initialized():
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


def stop() -> None:
    """Shut down Serve and, when this process started it, the local Ray."""
    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
