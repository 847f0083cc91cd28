"""A bounded OpenAPI fuzz run: schemathesis (a client we did not write) drives every operation.

It runs against the control plane served over real HTTP on PostgreSQL, with a real
dynsec Mosquitto as its site broker, as an operator and as a factory_it user. The
invariant is what a caller must always get: never a server error, and always a
response that matches the OpenAPI schema the control plane publishes.

Operations that end the caller's own access (logout, deleting users, revoking
tokens, changing the password) are left out: they would make the rest of the run
a series of 401s; their own tests cover them. A 503 ``broker_unavailable`` is the
documented answer when a site's broker is down (the fuzzer makes sites whose
broker does not exist), so it is not a server fault; any other 5xx is.

The run is bounded by examples per operation (``LINESIDE_FUZZ_EXAMPLES``, default 20),
not by time.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from control_plane.server import BackgroundServer
from edge_node.broker import free_port
from tests.integration.cp_fixtures import ControlPlane

EXAMPLES = int(os.environ.get("LINESIDE_FUZZ_EXAMPLES", "20"))
SELF_ENDING = (
    ("POST", "/auth/logout"),
    ("PUT", "/auth/password"),
    ("DELETE", "/users/{user_id}"),
    ("DELETE", "/users/me/tokens/{token_id}"),
    ("DELETE", "/users/me"),
)


@pytest.fixture
def served(control_plane: ControlPlane) -> Iterator[tuple[ControlPlane, str]]:
    server = BackgroundServer(control_plane.client.app, "127.0.0.1", free_port()).start()  # type: ignore[arg-type]
    try:
        yield control_plane, server.url
    finally:
        server.stop()


def _server_fault(response: schemathesis.Response) -> str | None:
    if response.status_code < 500:
        return None
    if response.status_code == 503:
        try:
            if response.json().get("code") == "broker_unavailable":
                return None
        except ValueError:
            pass
    return f"{response.status_code}: {response.text[:300]}"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("who", ["operator", "factory_it"])
def test_fuzzing_the_api_finds_no_server_errors(served: tuple[ControlPlane, str], who: str) -> None:
    cp, url = served
    headers = cp.op if who == "operator" else cp.a.it
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    results = list(schema.get_all_operations())
    broken = [str(r.err()) for r in results if isinstance(r, Err)]
    assert not broken, f"operations the fuzzer cannot read from the schema: {broken}"
    everything = [r.ok() for r in results if isinstance(r, Ok)]
    operations = [op for op in everything if (op.method.upper(), op.path) not in SELF_ENDING]
    assert len(operations) > 30, "the schema lost its operations"
    faults: list[str] = []
    nonconforming: list[str] = []
    answered: dict[str, set[int]] = defaultdict(set)

    for operation in operations:
        strategy = operation.as_strategy()

        @given(case=strategy)
        @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
        def run(case: schemathesis.Case) -> None:
            response = case.call(headers=headers, timeout=30)
            answered[f"{case.method} {case.path}"].add(response.status_code)
            fault = _server_fault(response)
            if fault:
                faults.append(f"{case.method} {case.formatted_path}: {fault}")
                return
            if response.status_code < 300:
                try:
                    case.validate_response(response, checks=[response_schema_conformance])
                except Exception as e:  # schemathesis raises grouped failures; keep going, report all
                    nonconforming.append(f"{case.method} {case.path}: {str(e).splitlines()[0][:200]}")

        run()
    Path(os.environ.get("FUZZ_DUMP", "/dev/null")).write_text(
        "\n".join([*sorted(set(faults + nonconforming)), *(f"{k} {sorted(v)}" for k, v in sorted(answered.items()))])
    )
    assert not faults, "\n".join(sorted(set(faults))[:40])
    assert not nonconforming, "\n".join(sorted(set(nonconforming))[:40])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_text_the_database_cannot_store_is_a_clear_422(control_plane: ControlPlane) -> None:
    """What the fuzzer found first: PostgreSQL refuses NUL in text, which answered 500 with the driver's error."""
    response = control_plane.client.post("/users/me/tokens", json={"name": "ci\x00script"}, headers=control_plane.a.it)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_value"
    assert "psycopg" not in response.text and "INSERT" not in response.text
