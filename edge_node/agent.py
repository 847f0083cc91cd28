"""The edge agent: joins a node to the control plane and makes the site's Ray Serve match it.

Lifecycle (``lineside edge-node join`` then ``lineside edge-node run``)::

    join     POST /agent/v1/join with a one-time token and the node's inventory;
             the node token is kept in <data_dir>/agent.json (0600 in a 0700 folder)
    loop     every period: pull desired slices (If-None-Match: unchanged answers 304),
             cache them on disk, reconcile Ray Serve, heartbeat with the actual state,
             and start the site's queued model fits as Ray tasks (``edge_node.fit_jobs``)

Reconciliation is level-triggered: it compares the desired generations with
what this agent last applied (<data_dir>/applied.json: generation and a
digest of the spec and model, so a new generation that changes nothing Serve
sees, e.g. a placement without pinning, is not re-applied) and with the
applications Serve really has, applies only the difference, and deletes
Lineside applications that are no longer desired. Applying the same desired
state twice changes nothing; an agent killed mid-apply re-applies on its next
pass. With the control plane unreachable the agent keeps serving from the
cache, and an agent restarted then restores its slices from it.

The head's heartbeats are also the meter of capacity. One the control plane
could not take (unreachable, or a 5xx: its database down) is kept, with the
time it was made, in <data_dir>/unsent_heartbeats.json (at most
``UNSENT_MAX``, the oldest dropped first); once the control plane answers, they
are sent oldest first, before the live one, as ``observed_at`` heartbeats, so
the replicas that ran while it was away are billed, not shown as a gap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from contracts.agent_api import (
    DesiredSlice,
    DesiredState,
    Heartbeat,
    LinkReport,
    ModelRef,
    NodeJoin,
    ProfileReport,
    SliceReport,
)
from contracts.slice_spec import INGRESS_SLOTS, SliceSpec
from edge_node import cluster, links, serving, sizing
from edge_node.errors import EdgeNodeError
from edge_node.fit_jobs import FitRunner
from edge_node.private_files import private_dir, tighten, write_private
from edge_node.profiling import ProfileResult, profile
from edge_node.utilization import UtilizationMeter

if TYPE_CHECKING:
    from edge_node.http_gateway import Gateway

log = logging.getLogger(__name__)

UNSENT_MAX = 1440
"""Heartbeats kept for a control plane that is away: two hours at the 5 s period. Older ones are dropped (the
control plane then stores that time as an unbilled gap), so a long outage costs the agent bounded disk and
its first pass after it a bounded number of requests."""


class AgentError(EdgeNodeError):
    """The agent cannot join or cannot reach what it needs."""


def _digest(item: DesiredSlice, *, rollout: bool = True) -> str:
    """What Serve sees of a desired slice: its spec (broker password included) and models, not its generation.

    ``rollout=False``: what the ingress is started with, which a rollout's start, step or end leaves alone
    (Serve reconfigures the running ingress), so it needs no new ingress slot.
    """
    spec = item.content()["spec"]
    seen = {"spec": spec, "model": item.model.sha256}
    if not rollout:
        seen["spec"] = {k: v for k, v in spec.items() if k != "rollout"}
    elif item.candidate is not None:  # only then: a slice without a rollout keeps the digest it had
        seen["candidate"] = item.candidate.sha256
    content = json.dumps(seen, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()


def inventory() -> dict[str, Any]:
    """Hostname, CPUs, memory and NVIDIA GPUs (model, memory) of this machine: ``NodeJoin``'s fields."""
    memory_kb = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    gpus: list[dict[str, Any]] = []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        gpus = [
            {"model": n.strip(), "memory_mb": int(m)} for n, m in (row.split(",") for row in out.splitlines() if row)
        ]
    except (OSError, subprocess.SubprocessError, ValueError):
        pass  # no NVIDIA driver: a CPU node
    return {
        "hostname": socket.gethostname() or platform.node(),
        "cpus": os.cpu_count() or 1,
        "memory_mb": max(1, memory_kb // 1024),
        "gpus": gpus,
    }


def join(client: httpx.Client, token: str, data_dir: Path, ray_address: str | None = None) -> dict[str, Any]:
    """Register this node; stores the node token under ``data_dir`` and returns the node record."""
    body = NodeJoin.model_validate({"token": token, "ray_address": ray_address, **inventory()})
    response = client.post("/agent/v1/join", json=body.model_dump(mode="json"))
    if response.status_code != 201:
        raise AgentError(f"join refused ({response.status_code}): {response.json().get('detail', response.text)}")
    node = response.json()
    write_private(
        private_dir(data_dir) / "agent.json", json.dumps({"control_plane": str(client.base_url), "node": node})
    )
    log.info("joined site %s as node %s (%s)", node["site_id"], node["id"], node["hostname"])
    return node


def _remembered(choice: int | dict[str, Any]) -> tuple[int, str]:
    """(threads, decode_at) of a remembered sizing; an agent of before decode_at remembered threads only."""
    if isinstance(choice, int):
        return choice, "model"
    return int(choice["threads"]), str(choice.get("decode_at", "model"))


def _decode_at(spec: SliceSpec, chosen: str) -> str:
    """Where ``spec`` decodes: its own setting, unless it left it to the node ("auto")."""
    return chosen if spec.resources.decode_at == "auto" else spec.resources.decode_at


@dataclass
class Agent:
    """One pass of ``step`` = pull, cache, reconcile, heartbeat. ``run`` repeats it."""

    client: httpx.Client
    node_token: str
    data_dir: Path
    period_s: float = 5.0
    apply: Callable[[SliceSpec], None] = cluster.apply_slice_briefly
    delete: Callable[[str], None] = cluster.delete_slice
    forget: Callable[[str], None] = serving.forget
    applications: Callable[[], set[str]] = cluster.applications
    status: Callable[[str], dict[str, Any]] = cluster.app_status
    profiler: Callable[..., ProfileResult] = profile
    ray_resources: Callable[[], list[str]] = cluster.lineside_resources
    head: bool = True  # the head's agent applies the site's slices; worker nodes' agents only report
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)  # app -> {"generation", "digest"}
    errors: dict[str, str] = field(default_factory=dict)
    _etag: str | None = None
    _inventory: Heartbeat = field(default_factory=Heartbeat)  # what every heartbeat says of the machine
    _profiled: set[str] = field(default_factory=set)  # "sha256@hardware" reported to the control plane
    # "sha256@cores/replicas per node" -> {"threads", "decode_at"} chosen (an int: threads, from before decode_at)
    _sizings: dict[str, Any] = field(default_factory=dict)
    _measured: dict[str, ProfileResult] = field(default_factory=dict)  # this process's sizing runs, for the profile
    _meter: UtilizationMeter = field(init=False)
    fits: FitRunner | None = None  # the site's model fits, run as Ray tasks (head only); None: made from client
    gateway: Gateway | None = None  # HTTP inference (head only, ``--http-port``): told the slices after each pass
    specs: dict[str, SliceSpec] = field(default_factory=dict)  # app -> the spec as last applied here
    link_period_s: float = 60.0  # how often the head probes the round trip to other sites' brokers
    probe: Callable[[str, int], float | None] = links.round_trip_ms
    _links_due: float = 0.0  # monotonic time of the next probe pass
    _unsent: list[dict[str, Any]] = field(default_factory=list)  # heartbeats kept while the control plane is away

    def __post_init__(self) -> None:
        tighten(self.data_dir)  # the node token, broker passwords and tenants' models: 0600 files, 0700 folders
        private_dir(self.data_dir / "models")
        if self._applied_path.exists():
            self.applied = json.loads(self._applied_path.read_text())
        if self._profiles_path.exists():
            self._profiled = set(json.loads(self._profiles_path.read_text()))
        if self._sizings_path.exists():
            self._sizings = json.loads(self._sizings_path.read_text())
        if self._unsent_path.exists():
            self._unsent = json.loads(self._unsent_path.read_text())
        # The machine does not change under a running agent: ask nvidia-smi once, not every heartbeat.
        self._inventory = Heartbeat.model_validate({k: v for k, v in inventory().items() if k != "hostname"})
        self._meter = UtilizationMeter(has_gpus=bool(self._inventory.gpus))
        if self.fits is None:
            self.fits = FitRunner(self.client, self._headers)

    @property
    def _cache_path(self) -> Path:
        return self.data_dir / "desired.json"

    @property
    def _applied_path(self) -> Path:
        return self.data_dir / "applied.json"

    @property
    def _unsent_path(self) -> Path:
        return self.data_dir / "unsent_heartbeats.json"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.node_token}"}

    def pull(self) -> DesiredState:
        """Desired state from the control plane, or the cached copy when it cannot be reached."""
        headers = self._headers() | ({"If-None-Match": self._etag} if self._etag else {})
        try:
            response = self.client.get("/agent/v1/desired", headers=headers)
        except httpx.TransportError as e:
            log.warning("control plane unreachable (%s); serving the cached desired state", e)
            return self._cached()
        if response.status_code == 304:
            return self._cached()
        if response.status_code != 200:
            log.warning("desired state refused (%s): %s; keeping the cache", response.status_code, response.text[:200])
            return self._cached()
        try:
            state = DesiredState.model_validate_json(response.content)
        except ValidationError as e:  # a control plane this agent cannot follow: keep serving what it knows
            log.warning("desired state unreadable (%s); keeping the cache", str(e)[:500])
            return self._cached()
        write_private(self._cache_path, response.content)  # holds the slices' broker credentials
        self._etag = response.headers.get("etag")
        return state

    def _cached(self) -> DesiredState:
        if not self._cache_path.exists():
            return DesiredState()
        return DesiredState.model_validate_json(self._cache_path.read_bytes())

    def _model_manifest(self, model: ModelRef) -> Path:
        """The model file (fetched by hash and verified) with its manifest, on this node's disk."""
        sha = model.sha256
        target = self.data_dir / "models" / f"{sha}.onnx"
        if not target.exists():
            response = self.client.get(f"/agent/v1/models/{sha}", headers=self._headers())
            response.raise_for_status()
            if hashlib.sha256(response.content).hexdigest() != sha:
                raise AgentError(f"model download does not match its sha256 {sha}; refusing it")
            write_private(target, response.content)
        # One manifest file per manifest, not per model file: two versions of one file (a new threshold, or a
        # rollout's candidate repackaged) must not overwrite each other's on a node that serves both.
        content = json.dumps({**model.manifest, "file": target.name}, sort_keys=True)
        manifest_path = target.with_name(f"{sha}-{hashlib.sha256(content.encode()).hexdigest()[:16]}.json")
        write_private(manifest_path, content)
        return manifest_path

    @property
    def _sizings_path(self) -> Path:
        return self.data_dir / "sizings.json"

    @property
    def _cores(self) -> int:
        return int(self._inventory.cpus or 1)

    def _sizing_key(self, spec: SliceSpec, model: ModelRef) -> str:
        return f"{model.sha256}@{self._cores}/{sizing.replicas_per_node(spec)}"

    def _sized(self, spec: SliceSpec, model: ModelRef) -> SliceSpec:
        """``spec`` with its ONNX Runtime threads per replica chosen for this node (``sizing``), measured once
        per model and shape (remembered across restarts: a changed choice would restart the model replicas)."""
        key = self._sizing_key(spec, model)
        if spec.resources.ort_threads == 0 and key in self._sizings:
            threads, decode_at = _remembered(self._sizings[key])
            return sizing.sized(spec, threads, decode_at=_decode_at(spec, decode_at))
        assert spec.manifest is not None
        chosen = sizing.size(spec, spec.manifest, self._cores, profiler=self.profiler)
        log.info("slice %s: %s", spec.name, chosen.describe())
        if not chosen.explicit:
            self._sizings[key] = {"threads": chosen.ort_threads, "decode_at": chosen.decode_at}
            self._measured[key] = chosen.measured[chosen.ort_threads]
            write_private(self._sizings_path, json.dumps(self._sizings, sort_keys=True))
        return sizing.apply(spec, chosen, self._cores)

    def reconcile(self, state: DesiredState) -> list[SliceReport]:
        """Make Serve match ``state``; returns one report per desired slice."""
        present = self.applications()
        desired = {s.spec.name: s for s in state.slices}
        reports = []
        for name, item in desired.items():
            digest, ingress = _digest(item), _digest(item, rollout=False)
            before = self.applied.get(name, {})
            if before.get("digest") != digest or name not in present:
                # A changed slice rolls its ingress over: the new version takes the other broker login, so it
                # never takes over the MQTT session the old one drains (a restart of the same one keeps its own).
                # A change of its rollout alone reconfigures the running ingress: it keeps its login.
                slot = int(before.get("slot", 0))
                if name in present and before.get("ingress", before.get("digest")) not in (None, ingress, digest):
                    slot = (slot + 1) % INGRESS_SLOTS
                try:
                    spec = self._local_spec(item, slot)
                    log.info("applying slice %s generation %s (ingress slot %s)", name, item.generation, slot)
                    self.apply(spec)
                    self.specs[name] = spec
                    self.applied[name] = {"generation": item.generation, "digest": digest, "slot": slot,
                                          "ingress": ingress}  # fmt: skip
                    self.errors.pop(name, None)
                except Exception as e:  # keep going with the other slices; report this one as failed
                    log.exception("slice %s could not be applied", name)
                    self.errors[name] = f"{type(e).__name__}: {e}"[:1000]
            else:
                self.applied[name]["generation"] = item.generation  # same content: nothing to do in Serve
                if name not in self.specs and self.gateway is not None:  # a restarted agent: as it was applied
                    try:
                        self.specs[name] = self._local_spec(item, int(before.get("slot", 0)))
                    except Exception:  # HTTP waits for the next pass; the slice and the heartbeat go on
                        log.exception("slice %s: its spec for HTTP inference could not be made", name)
            reports.append(self._report(name, item))
        for name in sorted(set(self.applied) - set(desired)):
            log.info("deleting slice %s: no longer desired", name)
            self.delete(name)
            self.forget(name)  # its rollout's candidate and board, if it had them
            del self.applied[name]
            self.specs.pop(name, None)
        write_private(self._applied_path, json.dumps(self.applied))
        if self.gateway is not None:  # another site's overflow is served over HTTP at its home only
            served = [
                n for n, item in desired.items() if n in self.specs and n not in self.errors and not item.home_site
            ]
            try:
                self.gateway.update([self.specs[n] for n in served])
            except Exception:  # HTTP inference must not cost the site its heartbeat
                log.exception("the HTTP inference endpoint could not take this pass's slices")
        return reports

    def _local_spec(self, item: DesiredSlice, slot: int) -> SliceSpec:
        """``item``'s spec as this node runs it: its models on this disk, its ingress slot, sized here."""
        update: dict[str, Any] = {"manifest": self._model_manifest(item.model), "ingress_slot": slot}
        if item.candidate is not None and item.spec.rollout is not None:
            candidate = {"manifest": self._model_manifest(item.candidate)}
            update["rollout"] = item.spec.rollout.model_copy(update=candidate)
        return self._sized(item.spec.model_copy(update=update), item.model)

    def _report(self, name: str, item: DesiredSlice) -> SliceReport:
        if name in self.errors:
            return SliceReport(slice_id=item.slice_id, generation=item.generation, healthy=False, failed=True,
                               message=self.errors[name])  # fmt: skip
        status = self.status(name)
        replicas = {d: v.get("replicas", {}) for d, v in status.get("deployments", {}).items()}
        return SliceReport.model_validate({
            "slice_id": item.slice_id, "generation": self.applied.get(name, {}).get("generation", 0),
            "healthy": status.get("status") == "RUNNING", "message": status.get("status", ""), "replicas": replicas,
        })  # fmt: skip

    def heartbeat(self, reports: list[SliceReport], measured: list[LinkReport] | None = None) -> None:
        self._beat(applications=sorted(self.applications()), slices=reports, ray_resources=self.ray_resources(),
                   links=measured or [])  # fmt: skip

    def measure_links(self, state: DesiredState) -> list[LinkReport]:
        """Round trips to the other sites' brokers, every ``link_period_s`` (else nothing new to report)."""
        if not state.peers or time.monotonic() < self._links_due:
            return []
        self._links_due = time.monotonic() + self.link_period_s
        measured = []
        for peer in state.peers:
            rtt = self.probe(peer.host, peer.port)
            if rtt is not None:
                measured.append(LinkReport(site_id=peer.site_id, rtt_ms=rtt))
        if measured:
            log.info("round trips to other sites: %s", ", ".join(f"site {m.site_id} {m.rtt_ms:g} ms" for m in measured))
        return measured

    def _beat(self, **head: Any) -> None:
        """Inventory and utilization, plus what only the head's agent knows (``head``: its slices)."""
        beat = {**self._inventory.model_dump(exclude_unset=True), "utilization": self._meter.read(), **head}
        body = Heartbeat.model_validate(beat)
        if not self._send_unsent():
            self._keep_unsent(body)
            return
        try:
            response = self._post_beat(body)
            failure = str(response.status_code) if response.status_code >= 500 else None
        except httpx.TransportError as e:
            failure = str(e)
        if failure is not None:
            log.warning("heartbeat failed (%s); slices keep serving, their capacity is kept for later", failure)
            self._keep_unsent(body)
        elif response.status_code != 200:
            log.warning("heartbeat refused (%s): %s", response.status_code, response.text[:200])

    def _post_beat(self, body: Heartbeat) -> httpx.Response:
        return self.client.post("/agent/v1/heartbeat", json=body.model_dump(mode="json"), headers=self._headers())

    def _keep_unsent(self, body: Heartbeat) -> None:
        """Keep the capacity a heartbeat the control plane did not take reports (the head's slices)."""
        if not body.slices:
            return
        kept = {
            "observed_at": datetime.now(UTC).isoformat(),
            "slices": [r.model_dump(mode="json") for r in body.slices],
        }
        self._unsent = [*self._unsent, kept][-UNSENT_MAX:]
        write_private(self._unsent_path, json.dumps(self._unsent))

    def _send_unsent(self) -> bool:
        """Send the kept heartbeats, oldest first; False (the rest kept) while the control plane is away."""
        sent = 0
        try:
            for kept in self._unsent:
                response = self._post_beat(Heartbeat.model_validate(kept))
                if response.status_code >= 500:
                    return False
                if response.status_code != 200:  # refused for good (a revoked token): retrying cannot help
                    log.warning("kept heartbeat refused (%s): %s", response.status_code, response.text[:200])
                sent += 1
        except httpx.TransportError:
            return False
        finally:
            if sent:
                self._unsent = self._unsent[sent:]
                write_private(self._unsent_path, json.dumps(self._unsent))
                log.info("sent %d heartbeats kept while the control plane was away (%d left)", sent,
                         len(self._unsent))  # fmt: skip
        return True

    def step(self) -> list[SliceReport]:
        if not self.head:
            self._beat()
            return []
        state = self.pull()
        reports = self.reconcile(state)
        self.heartbeat(reports, self.measure_links(state))
        self.profile_models(state)
        if self.fits is not None:
            self.fits.poll()  # starts a background thread per new fit: this pass does not wait for it
        return reports

    @property
    def _profiles_path(self) -> Path:
        return self.data_dir / "profiles.json"

    def _served_models(self, state: DesiredState) -> Iterator[tuple[SliceSpec, ModelRef]]:
        """Each applied slice's model, and its rollout's candidate as the slice would run it once promoted."""
        for item in state.slices:
            if item.spec.name not in self.applied:
                continue
            yield item.spec, item.model
            if item.candidate is not None and item.spec.rollout is not None:
                as_model = {"manifest": self._model_manifest(item.candidate), "rollout": None}
                candidate = item.spec.model_copy(update=as_model)
                if not candidate.resources.ort_threads and self._sizing_key(candidate, item.candidate) not in \
                        self._sizings:  # fmt: skip
                    self._sized(candidate, item.candidate)
                yield candidate, item.candidate

    def profile_models(self, state: DesiredState) -> None:
        """Measure each served model once per hardware and report it (the planner needs it). A rollout's
        candidate is measured while it rolls out, so that the line's plan has its figures once it is promoted."""
        gpus = self._inventory.gpus or []
        for spec, model in self._served_models(state):
            resources = spec.resources
            sizing_key = self._sizing_key(spec, model)
            fallback = max(1, int(resources.cpus_per_replica))
            threads = resources.ort_threads or _remembered(self._sizings.get(sizing_key, fallback))[0]
            on_gpu = resources.gpus_per_replica > 0 and gpus
            hardware = gpus[0].model if on_gpu else f"cpu x{threads}"
            key = f"{model.sha256}@{hardware}"
            if key in self._profiled:
                continue
            batch = spec.batch.max_batch_size
            # Sizing measured the chosen threads on this node already: report that run rather than measure again.
            sized = None if on_gpu or resources.ort_threads else self._measured.get(sizing_key)
            result = sized or self.profiler(self._model_manifest(model), threads=threads, batch=batch)
            body = ProfileReport(model_sha256=model.sha256, hardware=hardware,
                                 frames_per_s_per_replica=result.frames_per_s_per_replica,
                                 cold_start_s=result.cold_start_s)  # fmt: skip
            try:
                response = self.client.post(
                    "/agent/v1/profiles", json=body.model_dump(mode="json"), headers=self._headers()
                )
            except httpx.TransportError as e:
                log.warning("profile of %s not reported (%s); will retry", key, e)
                continue
            if response.status_code == 204:
                self._profiled.add(key)
                write_private(self._profiles_path, json.dumps(sorted(self._profiled)))
                log.info("profiled %s: %.0f frames/s per replica, cold start %.2fs", key,
                         result.frames_per_s_per_replica, result.cold_start_s)  # fmt: skip

    def run(self, stop: threading.Event) -> None:
        log.info("agent running: pass every %.0fs", self.period_s)
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.step()
            except Exception:  # one bad pass must not end the agent
                log.exception("agent pass failed; retrying")
            stop.wait(max(0.0, self.period_s - (time.monotonic() - started)))
