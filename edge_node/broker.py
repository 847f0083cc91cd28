"""Run a Mosquitto broker with a generated configuration (demo, tests, single-node sites).

The configuration is what Lineside needs from a broker: TCP_NODELAY (Nagle's
algorithm plus delayed ACKs otherwise adds ~40 ms to each small answer), persistence so QoS 1
frames survive a restart, and a packet limit above the slice's frame limit so
an oversized frame reaches the slice and is answered with ``too_large``.

Queues are bounded in bytes, not in messages. Mosquitto's default of 1000
messages per client would drop QoS 1 frames of a briefly slow ingress, so the
message count is unlimited (``max_queued_messages 0``); instead each client's
queue holds at most ``max_queued_bytes`` (``QUEUED_BYTES_PER_CLIENT``, 64 MiB by
default). The client whose queue grows is the slice ingress's persistent session
while the ingress is down: 64 MiB is about 10 s of one robot at 30 frames/s of
200 kB, longer than a robot waits for an answer before it resends, so the limit
costs nothing in normal operation and caps what a robot flooding a stopped
slice can make the broker hold (clients x limit). Mosquitto 2.0.11 handles a
QoS 1 frame beyond the limit by acknowledging it (PUBACK "Success") and dropping
it, logging "Outgoing messages are being dropped for client ..." (see
tests/integration/test_security_broker_limits.py): a PUBACK says the broker took
the frame, not that it will be judged, so robots count a frame as accepted only
when its answer arrives and resend the others (``robots.sdk``).

With ``admin_password`` the broker requires credentials and loads Mosquitto's
dynamic-security plugin with one admin client (``lineside-admin``) that may
only use the plugin's control topic; the control plane creates robot and
slice clients through it (``control_plane.broker_sync``). With ``tls`` a second
listener speaks MQTT over TLS, for robots on a factory network that is not trusted;
the plain listener stays on 127.0.0.1 unless ``host`` names an address on the private network between sites.
"""

from __future__ import annotations

import base64
import fcntl
import getpass
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from contracts.wire import BROKER_MESSAGE_LIMIT
from edge_node.errors import EdgeNodeError

log = logging.getLogger(__name__)

DYNSEC_ADMIN = "lineside-admin"
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)


QUEUED_BYTES_PER_CLIENT = 64 * 1024 * 1024
"""Default ``max_queued_bytes``: what Mosquitto holds per client beyond its in-flight messages (see above)."""


class BrokerError(EdgeNodeError):
    """The broker could not be started."""


@dataclass(frozen=True)
class TlsListener:
    """A listener speaking MQTT over TLS; robots verify the broker with the CA that signed ``certfile``."""

    port: int
    certfile: Path
    keyfile: Path
    host: str = "0.0.0.0"
    client_cafile: Path | None = None
    """CA of client certificates: when set, every TLS client must present a certificate it signed."""

    def config(self) -> str:
        for path in (self.certfile, self.keyfile, self.client_cafile):
            if path is not None and not path.is_file():
                raise BrokerError(f"TLS file {path} does not exist")
        lines = [f"listener {self.port} {self.host}", f"certfile {self.certfile}", f"keyfile {self.keyfile}",
                 "tls_version tlsv1.2"]  # fmt: skip
        if self.client_cafile is not None:
            lines += [f"cafile {self.client_cafile}", "require_certificate true"]
        return "\n".join(lines) + "\n"


FREE_PORTS = range(20000, 32768)
"""Where ``free_port`` looks: below Linux's ephemeral range (32768-60999), from which the kernel hands every
outgoing connection a local port, and above Ray's worker ports (10002-19999). A port the kernel picked
(``bind(0)``) is ephemeral, so any connection on the machine could take it before its listener binds it: a
CI run lost an OPC UA bridge that way (``address already in use``)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range (``FREE_PORTS``)."""
    for _ in range(200):
        port = random.choice(FREE_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken: try another
                continue
            return port
    raise OSError(f"no free port in {FREE_PORTS.start}-{FREE_PORTS.stop - 1} after 200 tries")


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


AUTOSAVE_S = int(os.environ.get("LINESIDE_BROKER_AUTOSAVE_S", "5"))
"""Seconds between Mosquitto's saves of its sessions and queued messages. After a crash the broker restores the
last save: frames answered since then come back and are answered again (from the ingress's memory), so the robots
see duplicates; the shorter the interval, the fewer (chaos scenario 1: 3.2 % at 5 s)."""


class MosquittoBroker:
    """A Mosquitto process with its own config and data folder; its plain listener on ``host`` (127.0.0.1)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        extra_config: str = "",
        admin_password: str | None = None,
        max_queued_bytes: int = QUEUED_BYTES_PER_CLIENT,
        tls: TlsListener | None = None,
    ) -> None:
        self.workdir = workdir
        self.max_queued_bytes = max_queued_bytes
        self.tls = tls
        self.port = port or free_port()
        self.host = host
        self.extra_config = extra_config
        self.admin_password = admin_password
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None  # the workdir's lock file, held while the broker runs

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def render_config(self) -> str:
        """The generated mosquitto.conf."""
        return (
            f"listener {self.port} {self.host}\n"
            # Mosquitto started as root switches to user "mosquitto", which cannot read this folder.
            f"user {getpass.getuser()}\n"
            + (self._dynsec_config() if self.admin_password else "allow_anonymous true\n")
            + "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            f"autosave_interval {AUTOSAVE_S}\n"
            "max_queued_messages 0\n"
            f"max_queued_bytes {self.max_queued_bytes}\n"
            "max_inflight_messages 0\n"
            f"max_packet_size {BROKER_MESSAGE_LIMIT + 4096}\n"
            "persistent_client_expiration 1d\n"
            # Nagle's algorithm with delayed ACKs adds ~40 ms to every small answer.
            "set_tcp_nodelay true\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "connection_messages true\n"
            # Global settings come first: Mosquitto applies them to every listener defined after them too.
             + (self.tls.config() if self.tls else "") + self.extra_config
        )

    def _dynsec_config(self) -> str:
        plugin = next((p for p in DYNSEC_PLUGIN_PATHS if Path(p).exists()), None)
        if plugin is None:
            raise BrokerError(
                "Mosquitto's dynamic-security plugin is missing (mosquitto_dynamic_security.so); "
                "install Mosquitto >= 2.0 from your distribution (apt-get install mosquitto)"
            )
        return (
            f"allow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {self.workdir / 'dynamic-security.json'}\n"
        )

    def _write_dynsec_state(self) -> None:
        """First start only: the plugin's state file with the admin client (later changes are the plugin's)."""
        state = self.workdir / "dynamic-security.json"
        if state.exists() or self.admin_password is None:
            return
        salt = os.urandom(12)
        iterations = 10_000
        digest = hashlib.pbkdf2_hmac("sha512", self.admin_password.encode(), salt, iterations)
        control = "$CONTROL/dynamic-security/#"
        document = {
            "defaultACLAccess": {
                "publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True,
            },
            "clients": [{
                "username": DYNSEC_ADMIN, "textName": "Lineside control plane",
                "password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
                "iterations": iterations, "roles": [{"rolename": DYNSEC_ADMIN}],
            }],
            "roles": [{
                "rolename": DYNSEC_ADMIN,
                "acls": [{"acltype": t, "topic": control, "allow": True}
                         for t in ("publishClientSend", "publishClientReceive", "subscribePattern")],
            }],
        }  # fmt: skip
        state.write_text(json.dumps(document, indent=2))
        state.chmod(0o600)

    @property
    def pid(self) -> int | None:
        """The running broker's process id (None when stopped)."""
        return self._process.pid if self._process else None

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
        )
        if binary is None:
            raise BrokerError("mosquitto is not installed: apt-get install mosquitto (make demo does this for you)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._take_workdir()
        self.config_path.write_text(self.render_config())
        self._write_dynsec_state()
        # Its own session: a Ctrl-C in the terminal reaches the demo, which stops robots, slice and
        # then the broker in that order; the broker must not die first with the answers still in it.
        self._process = subprocess.Popen(
            [binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except BrokerError:
            self.stop()
            raise
        log.info("mosquitto listening on %s:%d (config %s)", self.host, self.port, self.config_path)
        return self

    def _take_workdir(self) -> None:
        """Lock the data folder for this broker. Two brokers in one folder write the same persistence file, and
        Mosquitto exits at the first autosave that finds the other's rename ("No such file or directory")."""
        if self._lock is not None:
            return
        fd = os.open(self.workdir / "broker.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BrokerError(f"another broker runs with the data folder {self.workdir}; give each broker a folder "
                              "of its own") from None  # fmt: skip
        self._lock = fd

    def _release_workdir(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the file releases the lock
            self._lock = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._process:
            self._process.kill()
            self._process.wait()
            self._process = None
        self._release_workdir()

    def stop(self) -> None:
        if self._process is None:
            self._release_workdir()
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        self._release_workdir()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
