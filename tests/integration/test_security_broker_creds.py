"""Broker credentials an attacker could derive or abuse (issue 11, items 3 and 7), against a real Mosquitto."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from control_plane import broker_sync
from control_plane.security import derived_secret
from control_plane.settings import ControlPlaneSettings
from tests.integration.cp_fixtures import ControlPlane
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
    assert len(first.secret_key.get_secret_value()) >= 32
    assert first.secret_key_source == f"generated at {key_file}"
    second = ControlPlaneSettings(data_dir=tmp_path / "data")
    assert second.secret_key.get_secret_value() == first.secret_key.get_secret_value()
    assert second.secret_key_source == f"loaded from {key_file}"
    other_install = ControlPlaneSettings(data_dir=tmp_path / "elsewhere")
    assert other_install.secret_key.get_secret_value() != first.secret_key.get_secret_value()


def test_configured_key_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    key = "k" * 40
    settings = ControlPlaneSettings(data_dir=tmp_path / "data", secret_key=key)
    assert settings.secret_key.get_secret_value() == key
    assert settings.secret_key_source == "configured (LINESIDE_SECRET_KEY)"
    assert not (tmp_path / "data" / "secret_key").exists()


def test_production_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LINESIDE_SECRET_KEY must be set"):
        ControlPlaneSettings(data_dir=tmp_path / "data", production=True)
    assert not (tmp_path / "data" / "secret_key").exists()


def test_short_key_is_refused_with_the_minimum(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 characters"):
        ControlPlaneSettings(data_dir=tmp_path / "data", secret_key="s3cret-from-vault")
