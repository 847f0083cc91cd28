"""Issue 11 items 9 and 13: the site broker's admin password stays out of ``ps``, and robots can use TLS.

``lineside broker run`` reads the dynamic-security admin's password from
LINESIDE_BROKER_ADMIN_PASSWORD or ``--admin-password-file``; the old ``--admin-password``
flag is refused, since every user of the host can read a process's command line. With
``--tls-port`` the broker also listens with TLS: here with a CA made at test time, clients
other people wrote (mosquitto_pub, mosquitto_sub) and the robot SDK connect with that CA,
and a client that does not trust it is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_node.broker import DYNSEC_ADMIN, MosquittoBroker, TlsListener, free_port, wait_for_port
from robots.sdk import RobotClient
from tests.integration.test_readme import readme_block

PASSWORD = "s3cret-admin-password-for-the-test"
LINESIDE = str(Path(sys.executable).parent / "lineside")


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(p for child in children for p in _tree(int(child)))]


def _admin_connects(port: int, ca_certs: str | None = None) -> str:
    """CONNACK reason for the dynsec admin with PASSWORD (over TLS when ``ca_certs`` is given)."""
    reason: list[str] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-admin", protocol=mqtt.MQTTv5)
    client.username_pw_set(DYNSEC_ADMIN, PASSWORD)
    if ca_certs:
        client.tls_set(ca_certs=ca_certs)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, r: object, _p: object) -> None:
        reason.append(str(r))
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(5)
    client.disconnect()
    client.loop_stop()
    return reason[0] if reason else "no answer"


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [LINESIDE, "broker", "run", "--port", str(port), "--data-dir", str(tmp_path / "broker"), *args],
        env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, port


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(15)


@pytest.mark.parametrize("source", ["file", "environment"])
def test_admin_password_never_shows_in_the_process_list(tmp_path: Path, source: str) -> None:
    if source == "file":
        secret = tmp_path / "admin-password"
        secret.write_text(PASSWORD + "\n")
        secret.chmod(0o600)
        process, port = _run(tmp_path, "--admin-password-file", str(secret))
    else:
        process, port = _run(tmp_path, env={"LINESIDE_BROKER_ADMIN_PASSWORD": PASSWORD})
    try:
        try:
            wait_for_port("127.0.0.1", port, 20)
        except Exception:
            process.kill()
            raise AssertionError(process.communicate()[0].decode()) from None
        for pid in _tree(process.pid):  # lineside and the mosquitto it started
            assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert _admin_connects(port) == "Success"  # the broker's admin has the password given
    finally:
        _stop(process)


def test_password_on_the_command_line_is_refused_with_what_to_do_instead(tmp_path: Path) -> None:
    process, _port = _run(tmp_path, "--admin-password", PASSWORD)
    output = process.communicate(timeout=30)[0].decode()
    assert process.returncode != 0
    assert "LINESIDE_BROKER_ADMIN_PASSWORD" in output and "--admin-password-file" in output


def test_readme_starts_the_broker_without_the_password_in_its_arguments() -> None:
    runs = [line for line in readme_block("control-plane").splitlines() if "lineside broker run" in line]
    assert runs and not any("--admin-password " in line or '"$ADMIN"' in line.split("lineside")[1] for line in runs)


# --- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for 127.0.0.1 / localhost it signed, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Lineside test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return folder


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path) -> Iterator[int]:
    """``lineside broker run`` with a TLS listener; yields the TLS port."""
    tls_port = free_port()
    process, _port = _run(
        tmp_path, "--tls-port", str(tls_port), "--tls-host", "127.0.0.1",
        "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        env={"LINESIDE_BROKER_ADMIN_PASSWORD": PASSWORD},
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", tls_port, 20)
        yield tls_port
    finally:
        _stop(process)


def test_clients_that_trust_the_ca_connect_over_tls(tls_broker: int, pki: Path) -> None:
    ca = str(pki / "ca.pem")
    assert _admin_connects(tls_broker, ca_certs=ca) == "Success"
    # mosquitto_sub and mosquitto_pub: the admin asks the dynamic-security plugin for its clients, over TLS.
    control = "$CONTROL/dynamic-security/v1"
    login = ["-h", "127.0.0.1", "-p", str(tls_broker), "--cafile", ca, "-u", DYNSEC_ADMIN, "-P", PASSWORD]
    watch = subprocess.Popen(["mosquitto_sub", *login, "-i", "admin-sub", "-t", f"{control}/response", "-C", "1",
                              "-W", "15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = "", "no answer"
    for _ in range(50):  # until the subscription is in place: the answer is not retained
        request = '{"commands":[{"command":"listClients"}]}'
        ask = subprocess.run(["mosquitto_pub", *login, "-i", "admin-pub", "-t", control, "-m", request],
                             capture_output=True, text=True)  # fmt: skip
        assert ask.returncode == 0, ask.stderr
        try:
            out, err = watch.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    assert watch.returncode == 0 and DYNSEC_ADMIN in out, err


def test_the_robot_sdk_connects_over_tls_with_the_ca(tmp_path: Path, pki: Path) -> None:
    tls = TlsListener(port=free_port(), host="127.0.0.1", certfile=pki / "server.pem", keyfile=pki / "server.key")
    with MosquittoBroker(tmp_path / "broker", tls=tls):
        robot = RobotClient("127.0.0.1", tls.port, tenant="acme", line="line-1", robot="cam-7",
                            tls_ca=str(pki / "ca.pem")).connect(timeout_s=10)  # fmt: skip
        robot.close()


def test_clients_without_the_ca_are_refused(tls_broker: int, pki: Path) -> None:
    refused = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tls_broker), "--capath", "/etc/ssl/certs",
         "-u", DYNSEC_ADMIN, "-P", PASSWORD, "-t", "$CONTROL/dynamic-security/v1", "-m", "{}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert refused.returncode != 0
    robot = RobotClient("127.0.0.1", tls_broker, tenant="acme", line="line-1", robot="cam-7", tls=True)
    with pytest.raises(ConnectionError):
        robot.connect(timeout_s=3)
    plain = RobotClient("127.0.0.1", tls_broker, tenant="acme", line="line-1", robot="cam-8")
    with pytest.raises(ConnectionError):
        plain.connect(timeout_s=3)
