"""What a browser and a proxy see (issue 11, items 12, 13, 14 and 16): the session cookie's Secure
flag and HSTS, forwarded headers believed only from trusted proxies, the bootstrap token kept out of
the logs, no stored XSS, a Content-Security-Policy without inline script, /docs served without a CDN,
and a duplicate e-mail that names nobody.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from control_plane.app import create_app
from control_plane.models import ApiToken, Role, User
from control_plane.security import new_token, token_hash
from control_plane.settings import ControlPlaneSettings
from edge_node.broker import free_port
from tests.integration.cp_fixtures import BOOT, bearer, ok

LINESIDE = str(Path(sys.executable).parent / "lineside")
PASSWORD = "correct horse battery"


def _app(tmp_path: Path, database_url: str | None = None, **overrides: Any) -> Any:
    settings = ControlPlaneSettings(data_dir=tmp_path / "data", database_url=database_url, bootstrap_token=BOOT,
                                    monitor_sites=False, **overrides)  # fmt: skip
    return create_app(settings)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[TestClient]:
    """An app on SQLite, with tenant ``acme`` (id 1)."""
    app = _app(tmp_path)
    with TestClient(app) as client:
        ok(client.post("/tenants", json={"slug": "acme", "name": "Acme"}, headers=bearer(BOOT)), 201)
        yield client
    app.state.engine.dispose()


# --- item 12: cookies, HSTS, proxies ------------------------------------------------------------


def _login_as_new_pm(client: TestClient) -> httpx.Response:
    body = {"email": "pm@acme.example", "role": "plant_manager", "tenant_id": 1, "password": PASSWORD}
    ok(client.post("/users", json=body, headers=bearer(BOOT)), 201)
    return client.post("/auth/login", json={"email": "pm@acme.example", "password": PASSWORD})


@pytest.mark.parametrize("secure", [True, False])
def test_the_secure_flag_and_hsts_follow_the_setting_not_the_scheme(tmp_path: Path, secure: bool) -> None:
    """Behind a proxy that is not on 127.0.0.1 the request looks like plain HTTP: the setting decides."""
    app = _app(tmp_path, cookie_secure=secure)
    with TestClient(app, base_url="http://testserver") as client:
        ok(client.post("/tenants", json={"slug": "acme", "name": "Acme"}, headers=bearer(BOOT)), 201)
        login = _login_as_new_pm(client)
        assert login.status_code == 200, login.text
        cookie = login.headers["set-cookie"]
        assert ("secure" in cookie.lower().split("; ")) is secure, cookie
        assert ("Strict-Transport-Security" in client.get("/healthz").headers) is secure
        if secure:
            assert "max-age=" in client.get("/ui/login").headers["Strict-Transport-Security"]
    app.state.engine.dispose()


def test_production_forces_the_secure_cookie_on(tmp_path: Path) -> None:
    settings = ControlPlaneSettings(data_dir=tmp_path, production=True, secret_key="k" * 48, cookie_secure=False)
    assert settings.cookie_secure is True


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """``lineside control-plane`` as a service runs it, on a free port; returns the process and its URL."""
    port = free_port()
    environment = {**os.environ, "LINESIDE_DATA_DIR": str(tmp_path / "cp"), "LINESIDE_BOOTSTRAP_TOKEN": BOOT,
                   "LINESIDE_MONITOR_SITES": "0", "LINESIDE_LOGIN_ATTEMPTS_PER_MINUTE": "3", **env}  # fmt: skip
    environment.pop("LINESIDE_DATABASE_URL", None)
    log = (tmp_path / "cp.log").open("wb")
    process = subprocess.Popen([LINESIDE, "control-plane", "--port", str(port)], env=environment,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
        assert process.poll() is None, (tmp_path / "cp.log").read_text()
    process.kill()
    raise AssertionError("the control plane did not start: " + (tmp_path / "cp.log").read_text())


@pytest.mark.parametrize(("trusted", "forged_is_believed"), [("", False), ("127.0.0.1", True)])
def test_forwarded_addresses_are_believed_only_from_trusted_proxies(tmp_path: Path, trusted: str,
                                                                   forged_is_believed: bool) -> None:  # fmt: skip
    """Logins are limited per client address: a client must not dodge that by inventing X-Forwarded-For."""
    process, url = _serve(tmp_path, LINESIDE_TRUSTED_PROXIES=trusted)
    try:
        answers = []
        for i in range(5):
            headers = {"X-Forwarded-For": f"203.0.113.{i}", "X-Forwarded-Proto": "https"}
            body = {"email": f"guess{i}@acme.example", "password": "wrong password"}
            answers.append(httpx.post(url + "/auth/login", json=body, headers=headers, timeout=30).status_code)
        assert answers == ([401] * 5 if forged_is_believed else [401, 401, 401, 429, 429])
    finally:
        process.terminate()
        process.wait(30)


# --- item 13: the bootstrap token stays out of the logs -----------------------------------------


def test_the_generated_bootstrap_token_is_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = ControlPlaneSettings(data_dir=tmp_path / "data", monitor_sites=False)
    app = create_app(settings)
    token = app.state.bootstrap_token
    assert token and token.startswith("ls_")
    assert token not in caplog.text
    assert token[:8] in caplog.text  # enough to tell which token it is
    saved = tmp_path / "data" / "bootstrap-token"
    assert saved.read_text().strip() == token and str(saved) in caplog.text
    assert saved.stat().st_mode & 0o077 == 0
    with TestClient(app) as client:
        assert ok(client.get("/users/me", headers=bearer(token)))["role"] == "operator"
    app.state.engine.dispose()


# --- item 14: XSS, CSP, /docs without a CDN -----------------------------------------------------

XSS_EMAIL = "<script>alert(1)</script>@evil.example"  # the old validator (no whitespace, one @) took it


def test_the_email_validator_refuses_markup(web: TestClient) -> None:
    for email in (XSS_EMAIL, "<img/src=x/onerror=alert(1)>@x.example", 'a"b@x.example', "a@b"):
        body = {"email": email, "role": "factory_it", "tenant_id": 1}
        answer = web.post("/users", json=body, headers=bearer(BOOT))
        assert answer.status_code == 422, (email, answer.text)
    for email in ("o'brien+qa@plant-7.acme.example", "IT.Dept@Acme.Example"):
        created = ok(web.post("/users", json={"email": email, "role": "factory_it", "tenant_id": 1},
                              headers=bearer(BOOT)), 201)  # fmt: skip
        assert created["email"] == email.lower()


def test_an_email_stored_before_the_fix_is_escaped_on_the_pages(web: TestClient) -> None:
    """A user created while the validator took markup: the page shows the text, the browser runs nothing."""
    token = new_token("api")
    with Session(web.app.state.engine) as session:  # type: ignore[attr-defined]
        user = User(email=XSS_EMAIL, role=Role.FACTORY_IT, tenant_id=1)
        session.add(user)
        session.flush()
        assert user.id is not None
        session.add(ApiToken(user_id=user.id, name="old", token_hash=token_hash(token), prefix=token[:8]))
        session.commit()
    for path, status in (("/ui/it", 200), ("/ui/plant", 403)):
        page = web.get(path, headers=bearer(token))
        assert page.status_code == status
        assert "<script>alert(1)</script>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;@evil.example" in page.text


def _csp(response: httpx.Response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    return {part.split()[0]: part.strip() for part in policy.split(";") if part.strip()}


@pytest.mark.parametrize("path", ["/ui/login", "/ui/it", "/ui/plant", "/ui/operator", "/ui/nowhere", "/docs"])
def test_pages_forbid_inline_script_and_framing(web: TestClient, path: str) -> None:
    headers = bearer(BOOT) if path != "/ui/login" else {}
    page = web.get(path, headers=headers)
    assert page.status_code in (200, 403, 404)
    csp = _csp(page)
    assert csp["script-src"] == "script-src 'self'"
    assert "'unsafe-inline'" not in page.headers["Content-Security-Policy"]
    assert csp["frame-ancestors"] == "frame-ancestors 'none'"
    assert csp["object-src"] == "object-src 'none'"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    # The pages keep to the policy: every script is a file, no handler or style attributes.
    assert all(' src="' in tag for tag in re.findall(r"<script[^>]*>", page.text)), page.text
    assert not re.search(r"\son[a-z]+=|\sstyle=", page.text)


def test_docs_are_served_without_any_other_host(web: TestClient) -> None:
    page = web.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert not re.search(r"https?://|//[a-z]", page.text), page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        answer = web.get(asset)
        assert answer.status_code == 200 and answer.content, asset
    assert ok(web.get("/openapi.json"))["info"]["title"] == "Lineside control plane"
    assert web.get("/redoc").status_code == 404  # ReDoc is not shipped (it would need a CDN)


# --- item 16: a taken e-mail names nobody --------------------------------------------------------


def test_a_taken_email_is_refused_without_naming_it(database_url: str, tmp_path: Path) -> None:
    app = _app(tmp_path, database_url)
    with TestClient(app) as client:
        op = bearer(BOOT)
        acme = ok(client.post("/tenants", json={"slug": "acme", "name": "Acme"}, headers=op), 201)["id"]
        globex = ok(client.post("/tenants", json={"slug": "globex", "name": "Globex"}, headers=op), 201)["id"]
        body = {"email": "quality@globex.example", "role": "factory_it", "tenant_id": globex}
        ok(client.post("/users", json=body, headers=op), 201)
        pm = {"email": "pm@acme.example", "role": "plant_manager", "tenant_id": acme}
        pm_h = bearer(ok(client.post("/users", json=pm, headers=op), 201)["token"])
        taken = client.post("/users", json={"email": "Quality@globex.example", "role": "factory_it"}, headers=pm_h)
        assert taken.status_code == 409
        detail = taken.json()["detail"].lower()
        assert "quality" not in detail and "globex" not in detail and "exists" not in detail, detail
        assert "choose another" in detail
    app.state.engine.dispose()
