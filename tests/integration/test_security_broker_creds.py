"""Broker credentials an attacker could derive or abuse (issue 11, items 3 and 7), against a real Mosquitto."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from sqlmodel import Session

from control_plane import broker_sync, sites
from control_plane.models import Site
from control_plane.security import derived_secret
from control_plane.settings import ControlPlaneSettings
from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.test_cp_broker import Probe

PUBLIC_DEFAULT = "lineside-dev-secret-change-me"
"""The key every install used when LINESIDE_SECRET_KEY was unset; it is in the public source."""


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LINESIDE_SECRET_KEY", raising=False)
    monkeypatch.delenv("LINESIDE_PRODUCTION", raising=False)


def test_public_default_key_does_not_open_the_broker(control_plane: ControlPlane) -> None:
    cp = control_plane
    guessed = derived_secret(PUBLIC_DEFAULT, f"broker-admin:{cp.site_id}")
    admin = Probe(cp, broker_sync.ADMIN_USERNAME, guessed, "attacker")
    assert admin.connect_reason == "Not authorized"


def test_generated_key_is_private_and_kept_across_restarts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="control_plane.settings"):
        first = ControlPlaneSettings(data_dir=tmp_path / "data")
    key_file = tmp_path / "data" / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first.key) >= 32
    assert first.secret_key_source == f"generated at {key_file}"
    second = ControlPlaneSettings(data_dir=tmp_path / "data")
    assert second.key == first.key
    assert second.secret_key_source == f"loaded from {key_file}"
    other_install = ControlPlaneSettings(data_dir=tmp_path / "elsewhere")
    assert other_install.key != first.key


def test_configured_key_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    key = "k" * 40
    settings = ControlPlaneSettings(data_dir=tmp_path / "data", secret_key=key)
    assert settings.key == key
    assert settings.secret_key_source == "configured (LINESIDE_SECRET_KEY)"
    assert not (tmp_path / "data" / "secret_key").exists()


def test_production_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LINESIDE_SECRET_KEY must be set"):
        ControlPlaneSettings(data_dir=tmp_path / "data", production=True)
    assert not (tmp_path / "data" / "secret_key").exists()


def test_short_key_is_refused_with_the_minimum(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        ControlPlaneSettings(data_dir=tmp_path / "data", secret_key="s3cret-from-vault")


def test_ingress_credentials_cannot_take_over_a_robot(control_plane: ControlPlane) -> None:
    from tests.integration.test_security_nodes import broker_of, join

    cp = control_plane
    robot = ok(cp.client.post(f"/robots/{cp.a.ids['robot']}/rotate", headers=cp.a.it))
    online = Probe(cp, robot["mqtt_username"], robot["mqtt_password"], robot["client_id"])
    assert online.connect_reason == "Success"
    _, head = join(cp, "head-1")
    broker = broker_of(cp, head, cp.a.ids["slice"])
    for out in (False, True):
        username, password = broker_sync.ingress_connection(broker["username"], broker["password"], 0, out=out)
        assert Probe(cp, username, password, robot["client_id"]).connect_reason == "Not authorized"
        assert Probe(cp, username, password, username).connect_reason == "Success"
    assert not online.disconnected.wait(1.0), "an ingress credential took over the robot's session"
    online.close()


def test_monitor_credentials_cannot_take_over_a_robot(control_plane: ControlPlane) -> None:
    """The control plane's monitor login is pinned to its own client id (issue 11 item 7)."""
    cp = control_plane
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        site = session.get(Site, cp.site_id)
        assert site is not None
        with sites.admin(cp.settings, site) as broker:
            broker.reconcile(sites.desired_broker_clients(session, cp.settings, site))
        monitor = sites.monitor_broker_client(cp.settings, site)
    robot = ok(cp.client.post(f"/robots/{cp.a.ids['robot']}/rotate", headers=cp.a.it))
    online = Probe(cp, robot["mqtt_username"], robot["mqtt_password"], robot["client_id"])
    assert online.connect_reason == "Success"
    assert Probe(cp, monitor.username, monitor.password, robot["client_id"]).connect_reason == "Not authorized"
    assert Probe(cp, monitor.username, monitor.password, monitor.username).connect_reason == "Success"
    assert not online.disconnected.wait(1.0), "the monitor's credential took over the robot's session"
    online.close()


def test_reconcile_keeps_other_control_plane_instances_monitor_logins(control_plane: ControlPlane) -> None:
    """Control planes watch a site with a pinned login each; one's sync keeps the others'."""
    cp = control_plane
    other = cp.settings.model_copy(update={"instance": "cp-b"})
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        site = session.get(Site, cp.site_id)
        assert site is not None
        with sites.admin(cp.settings, site) as broker:
            broker.ensure(sites.monitor_broker_client(other, site))
            broker.reconcile(sites.desired_broker_clients(session, cp.settings, site))
            present = broker.managed_usernames()
        mine, theirs = sites.monitor_broker_client(cp.settings, site), sites.monitor_broker_client(other, site)
    assert {mine.username, theirs.username} <= present
    assert Probe(cp, theirs.username, theirs.password, theirs.username).connect_reason == "Success"
