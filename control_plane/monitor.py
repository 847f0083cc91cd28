"""The control plane's read-only connection to each site broker, feeding the dashboard.

One MQTT client per site, logged in as this instance's monitor (``sites.monitor_broker_client``,
pinned to its client id, created here through the site's dynsec admin), subscribed to every slice's
telemetry and every robot's retained status. Messages are queued by paho's
thread and written in batches by ``flush`` (``telemetry.ingest``), so a slow
database never blocks the broker connection. Sites added later are picked up
on the next ``refresh``; a site whose broker is down is retried.

Telemetry is billed (verdict usage), so none may be lost to a control plane restart: the ingress
publishes it at QoS 1, the monitor's session is persistent (``clean_start=False`` with a session
expiry of ``telemetry_session_s``), so the broker queues telemetry while the control plane is down,
and messages are acknowledged by hand only after the batch holding them is committed (``manual_ack``).
A crash between receipt and commit therefore means a redelivery, which metering stores once (its
records are keyed by the window), never a loss. Stopping flushes what was received before disconnecting.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import Engine
from sqlmodel import Session, select

from control_plane import broker_sync, sites, telemetry
from control_plane.errors import BrokerUnavailable
from control_plane.models import Site, utcnow
from control_plane.settings import ControlPlaneSettings

log = logging.getLogger(__name__)

QUEUE_LIMIT = 50_000
"""Messages held while the database catches up; beyond this, telemetry is dropped (and counted)."""


class SiteMonitors:
    """Monitor connections of every site; ``run`` keeps them up and writes what arrives."""

    def __init__(self, engine: Engine, settings: ControlPlaneSettings) -> None:
        self.engine, self.settings = engine, settings
        self.clients: dict[int, mqtt.Client] = {}
        self.subscribed: set[int] = set()
        """Sites whose broker confirmed the monitor's subscriptions."""
        self.unreachable: set[int] = set()
        self.inbox: queue.Queue[tuple[int, str, bytes, int, int]] = queue.Queue(
            QUEUE_LIMIT
        )  # site, topic, payload, mid, qos
        self.dropped = 0
        self.source = f"{socket.gethostname()[:40]}-{os.getpid()}"
        """This instance's name on the line-minute rows it writes."""
        self.totals = telemetry.IngestCounts()

    def run(self, stop: threading.Event, refresh_s: float = 5.0, flush_s: float = 1.0, prune_s: float = 3600.0) -> None:
        ticks = 0
        while not stop.wait(flush_s):
            try:
                if ticks % max(1, round(refresh_s / flush_s)) == 0:
                    self.refresh()
                if ticks % max(1, round(prune_s / flush_s)) == 0:
                    self.prune()
                ticks += 1
                self.flush()
            except Exception:  # keep monitoring; the next pass retries
                log.exception("site monitor pass failed")
        try:
            self.flush()  # what arrived before the stop is stored and acknowledged, not redelivered
        except Exception:
            log.exception("final telemetry flush failed; the broker redelivers it to the next start")
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()

    def prune(self) -> None:
        """Forget line minutes older than ``history_days``."""
        with Session(self.engine) as session:
            gone = telemetry.prune_history(session, utcnow() - timedelta(days=self.settings.history_days))
        if gone:
            log.info("deleted %d line minutes older than %d days", gone, self.settings.history_days)

    def refresh(self) -> None:
        """Connect to sites not connected yet."""
        with Session(self.engine) as session:
            for site in session.exec(select(Site)).all():
                if site.id is not None and site.id not in self.clients:
                    self._connect(site)

    def _connect(self, site: Site) -> None:
        assert site.id is not None
        login = sites.monitor_broker_client(self.settings, site)
        try:
            with sites.admin(self.settings, site) as broker:
                broker.ensure(login)
        except BrokerUnavailable as e:
            if site.id not in self.unreachable:  # say it once, not every refresh
                log.warning("site %s: dashboard telemetry unavailable until its broker answers (%s)", site.name, e)
                self.unreachable.add(site.id)
            return
        self.unreachable.discard(site.id)
        site_id = site.id
        # The broker pins this login to its client id (the username), so no login can take over another's.
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=login.username, protocol=mqtt.MQTTv5,
                             manual_ack=True)  # fmt: skip
        client.username_pw_set(login.username, login.password)

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                log.warning("site %s refused the monitor: %s", site.name, reason)
                return
            c.subscribe([(topic, 1) for topic in broker_sync.MONITOR_TOPICS])
            log.info("monitoring site %s (%s:%d)", site.name, site.broker_host, site.broker_port)

        def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
            try:
                self.inbox.put_nowait((site_id, message.topic, bytes(message.payload), message.mid, message.qos))
            except queue.Full:  # not acknowledged: the broker redelivers it when the monitor reconnects
                self.dropped += 1

        client.on_connect, client.on_message = on_connect, on_message
        client.on_subscribe = lambda *_args: self.subscribed.add(site_id)
        client.reconnect_delay_set(1, 30)
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = self.settings.telemetry_session_s
        client.connect_async(site.broker_host, site.broker_port, keepalive=30, clean_start=False, properties=session)
        client.loop_start()
        self.clients[site_id] = client

    def flush(self) -> telemetry.IngestCounts:
        """Write everything queued so far, one transaction per site."""
        batches: dict[int, list[tuple[str, bytes]]] = {}
        acks: dict[int, list[tuple[int, int]]] = {}
        while True:
            try:
                site_id, topic, payload, mid, qos = self.inbox.get_nowait()
            except queue.Empty:
                break
            batches.setdefault(site_id, []).append((topic, payload))
            acks.setdefault(site_id, []).append((mid, qos))
        counts = telemetry.IngestCounts()
        for site_id, messages in batches.items():
            try:
                with Session(self.engine) as session:
                    done = telemetry.ingest(
                        session, site_id, messages, keep_failed=self.settings.failed_parts_kept, source=self.source
                    )
            except Exception:  # one site's batch is a gap in its charts; the other sites' are still written
                log.exception("storing %d telemetry messages of site %s failed", len(messages), site_id)
                self.totals.rejected += len(messages)
                continue  # not acknowledged: redelivered when the monitor reconnects
            self._ack(site_id, acks[site_id])
            counts.add(done)
            self.totals.add(done)
        return counts

    def _ack(self, site_id: int, messages: list[tuple[int, int]]) -> None:
        """Acknowledge stored messages (QoS 1), releasing them from the broker's queue for this session."""
        client = self.clients.get(site_id)
        if client is None:
            return
        for mid, qos in messages:
            if qos > 0:
                client.ack(mid, qos)
