"""Control-plane logic without a database or broker: state machines, roles, derived secrets, ACLs."""

from __future__ import annotations

import pytest

from control_plane import broker_sync
from control_plane.errors import Forbidden, IllegalTransition, NotFound, status_of
from control_plane.models import Role
from control_plane.security import Permission, Principal, derived_secret, new_token, token_hash
from control_plane.settings import ControlPlaneSettings
from control_plane.states import NODE_MOVES, SLICE_MOVES, NodeStatus, SliceStatus, transition


@pytest.mark.parametrize(("moves", "enum"), [(NODE_MOVES, NodeStatus), (SLICE_MOVES, SliceStatus)])
def test_every_pair_of_states_is_either_allowed_or_refused_with_reason(moves, enum) -> None:
    for current in enum:
        for target in enum:
            if target == current or target in moves[current]:
                assert transition(current, target, what="x") == target
            else:
                with pytest.raises(IllegalTransition) as refused:
                    transition(current, target, what="slice s")
                assert f"slice s is {current.value}; it cannot become {target.value}" in str(refused.value)


def test_final_states_say_so() -> None:
    with pytest.raises(IllegalTransition, match=r"allowed: none \(final state\)"):
        transition(SliceStatus.DELETED, SliceStatus.PENDING, what="slice s")


def test_roles_and_tenants() -> None:
    pm = Principal(user_id=1, role=Role.PLANT_MANAGER, tenant_id=7)
    with pytest.raises(Forbidden, match="needs the factory_it role; your token is plant_manager"):
        pm.require(Permission.MANAGE_ROBOTS, action="creating robots")
    assert pm.sees_tenant(7) and not pm.sees_tenant(8) and not pm.sees_tenant(None)
    assert Principal(user_id=2, role=Role.OPERATOR, tenant_id=None).sees_tenant(8)


def test_errors_map_to_http_statuses() -> None:
    assert status_of(NotFound("x")) == 404
    assert status_of(IllegalTransition("x")) == 409
    assert status_of(Forbidden("x")) == 403


def test_tokens_are_random_and_stored_hashed() -> None:
    a, b = new_token("api"), new_token("api")
    assert a != b and a.startswith("ls_") and len(a) > 40
    assert token_hash(a) != a and len(token_hash(a)) == 64


def test_derived_secrets_depend_on_key_and_purpose() -> None:
    assert derived_secret("k", "robot:1:1") == derived_secret("k", "robot:1:1")
    assert derived_secret("k", "robot:1:1") != derived_secret("k", "robot:1:2")  # rotation changes it
    assert derived_secret("k", "robot:1:1") != derived_secret("other", "robot:1:1")


def test_production_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LINESIDE_SECRET_KEY", raising=False)
    with pytest.raises(ValueError, match="LINESIDE_SECRET_KEY must be set"):
        ControlPlaneSettings(production=True)
    assert ControlPlaneSettings(production=True, secret_key="s3cret-from-vault-" + "x" * 20).production


def test_robot_acls_name_only_its_own_topics() -> None:
    client = broker_sync.robot_client("acme", "line-1", "cam-7", "pw")
    assert client.username == client.client_id == "r.acme.line-1.cam-7"
    topics = {topic for _, topic in client.acls}
    assert topics == {f"lineside/acme/line-1/cam-7/{k}" for k in ("frames", "status", "results", "errors")}
    assert not any("+" in t or "#" in t for t in topics)
    sends = {t for kind, t in client.acls if kind == "publishClientSend"}
    assert sends == {"lineside/acme/line-1/cam-7/frames", "lineside/acme/line-1/cam-7/status"}


def test_ingress_acls_cover_its_lines_only() -> None:
    clients = broker_sync.ingress_clients("t1-inspect", "acme", ["line-1"], "pw", replicas=1)
    # Two ranks per replica, two slots per rank (an ingress being replaced and its replacement), and the head's
    # HTTP inference endpoint, which only meters.
    *ingress, gateway = clients
    assert [c.username for c in ingress] == [f"s.t1-inspect.{i}{out}" for i in range(4) for out in ("", "-out")]
    assert gateway.username == "s.t1-inspect.http"
    assert gateway.acls == (("publishClientSend", "lineside-telemetry/acme/line-1/t1-inspect"),)
    assert all(c.client_id == c.username for c in clients)  # pinned: no robot's session can be taken over
    frames_in, results_out = clients[0], clients[1]
    gone = "lineside-ingress/acme/t1-inspect/gone"  # its will, and the slice's other frames connections' wills
    assert frames_in.acls == (("publishClientSend", gone), ("subscribeLiteral", gone), ("publishClientReceive", gone),
                              ("subscribeLiteral", "$share/t1-inspect/lineside/acme/line-1/+/frames"),
                              ("publishClientReceive", "lineside/acme/line-1/+/frames"))  # fmt: skip
    own = ("lineside/acme/line-1/", "lineside-telemetry/acme/line-1/t1-")
    assert all(kind == "publishClientSend" and topic.startswith(own) for kind, topic in results_out.acls)
    assert ("publishClientSend", "lineside-telemetry/acme/line-1/t1-inspect") in results_out.acls
