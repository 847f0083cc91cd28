"""``lineside bridge ...``: bridges from a line's MQTT answers to plant equipment."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)
bridge_app = typer.Typer(help="Bridges from a line's answers to plant equipment (OPC UA).", no_args_is_help=True)
app.add_typer(bridge_app, name="bridge")

PASSWORD_ENV = {
    "broker": "LINESIDE_BROKER_PASSWORD",
    "opcua": "LINESIDE_OPCUA_PASSWORD",
    "plc": "LINESIDE_PLC_PASSWORD",
}
"""Passwords come from the environment, never argv (which any user of the machine can read with ps)."""


def _password(kind: str, needed: bool) -> str | None:
    value = os.environ.get(PASSWORD_ENV[kind])
    if needed and not value:
        raise typer.BadParameter(f"set {PASSWORD_ENV[kind]} to the password (it is never taken on the command line)")
    return value


@bridge_app.command("opcua")
def bridge_opcua(
    tenant: Annotated[str, typer.Option(help="Tenant (factory) of the line.")],
    line: Annotated[str, typer.Option(help="Line whose answers to serve.")],
    broker_host: Annotated[str, typer.Option(help="The site's MQTT broker.")] = "127.0.0.1",
    broker_port: Annotated[int, typer.Option(min=1, max=65535, help="The broker's port.")] = 1883,
    username: Annotated[
        str | None,
        typer.Option(help="The line's watch login (w.TENANT.LINE); its password in LINESIDE_BROKER_PASSWORD."),
    ] = None,
    tls_ca: Annotated[Path | None, typer.Option(help="CA of a TLS broker.", exists=True, dir_okay=False)] = None,
    endpoint: Annotated[str, typer.Option(help="The OPC UA server's endpoint.")] = "opc.tcp://0.0.0.0:4840/lineside/",
    certificate: Annotated[
        Path | None, typer.Option(help="Server certificate (DER or PEM): offers Basic256Sha256.", exists=True)
    ] = None,
    private_key: Annotated[Path | None, typer.Option(help="The certificate's private key.", exists=True)] = None,
    opcua_user: Annotated[
        str | None,
        typer.Option(help="The one OPC UA user; its password in LINESIDE_OPCUA_PASSWORD. Anonymous is refused."),
    ] = None,
    allow_insecure: Annotated[
        bool, typer.Option(help="Also offer an unsecured endpoint (a test bench; never on a plant network).")
    ] = False,
    pulse_ms: Annotated[int, typer.Option(min=10, max=60_000, help="Length of RejectPulse after a fail.")] = 500,
    plc_endpoint: Annotated[str | None, typer.Option(help="Client mode: the PLC's OPC UA server.")] = None,
    plc_node: Annotated[
        str | None,
        typer.Option(help="Client mode: the Boolean node each verdict's fail is written to, e.g. 'ns=3;s=Reject'."),
    ] = None,
    plc_user: Annotated[
        str | None, typer.Option(help="Client mode: user; its password in LINESIDE_PLC_PASSWORD.")
    ] = None,
) -> None:
    """Serve a line's verdicts as OPC UA variables for PLCs, until Ctrl-C (address space: bridges/opcua.py)."""
    from bridges.opcua import BrokerLogin, OpcUaBridge, PlcTarget, Security, run_bridge

    if (certificate is None) != (private_key is None):
        raise typer.BadParameter("give --certificate and --private-key together")
    if certificate is None and not allow_insecure:
        raise typer.BadParameter("an OPC UA server without a certificate is unsecured: give --certificate and "
                                 "--private-key (`lineside bridge opcua-certificate` makes them), or "
                                 "--allow-insecure on a test bench")  # fmt: skip
    if (plc_endpoint is None) != (plc_node is None):
        raise typer.BadParameter("client mode needs --plc-endpoint and --plc-node together")
    broker = BrokerLogin(broker_host, broker_port, username, _password("broker", username is not None),
                         str(tls_ca) if tls_ca else None)  # fmt: skip
    security = Security(certificate, private_key, opcua_user, _password("opcua", opcua_user is not None),
                        allow_insecure)  # fmt: skip
    plc = None
    if plc_endpoint is not None and plc_node is not None:
        plc = PlcTarget(plc_endpoint, plc_node, plc_user, _password("plc", plc_user is not None))
    bridge = OpcUaBridge(broker, tenant, line, endpoint, security=security, pulse_ms=pulse_ms, plc=plc)
    typer.echo(f"serving line {tenant}/{line} on {endpoint}; Ctrl-C to stop")
    try:
        run_bridge(bridge, threading.Event())
    except KeyboardInterrupt:
        typer.echo("stopped")


@bridge_app.command("opcua-certificate")
def bridge_opcua_certificate(
    out: Annotated[Path, typer.Option(help="Folder for the certificate and its key.")] = Path("opcua-certs"),
    hostname: Annotated[str, typer.Option(help="Host name PLCs reach the bridge by.")] = socket.gethostname(),
) -> None:
    """Make a self-signed server certificate (DER) and key (PEM) for `lineside bridge opcua` (kept if valid)."""
    from bridges.opcua import make_certificate

    logging.getLogger("asyncua").setLevel(logging.WARNING)
    certificate, key = asyncio.run(make_certificate(out, hostname))
    typer.echo(f"certificate: {certificate}\nprivate key: {key} (mode 600)\n"
               "PLCs must trust the certificate: add it to their trusted certificates")  # fmt: skip


if __name__ == "__main__":  # python -m bridges.cli bridge opcua ...
    app()
