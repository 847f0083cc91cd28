"""Typed permissions: every permission names its roles, and one dependency refuses the others with a 403
that names the roles that may (a misspelt permission is an AttributeError at import, not a 500)."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from control_plane import errors
from control_plane.api import deps
from control_plane.models import Role, SliceScale
from control_plane.security import ROLES_FOR, Permission, Principal

OP, PM, IT, EO = Role.OPERATOR, Role.PLANT_MANAGER, Role.FACTORY_IT, Role.EDGE_OPERATOR

# Who may do what, as the API has promised since roles existed (the old CAN table, by value).
MATRIX = {
    "manage_tenants": {OP},
    "manage_users": {OP, PM},
    "manage_sites": {OP},
    "manage_nodes": {OP},
    # the compute bank (issue 14): a tenant's edge operators join, lend and take back its own nodes
    "lend_nodes": {OP, EO},
    "read_sites": {OP, PM, IT, EO},
    "manage_lines": {PM, IT},
    "manage_robots": {IT},
    "read_robots": {OP, PM, IT},
    "upload_models": {OP, PM, IT},
    "manage_slices": {PM},
    "read_slices": {OP, PM, IT},
    "rotate_slice_credentials": {OP, PM},
    # model rollouts (issue 15): the tenant's plant managers and factory IT move a slice to a new version
    "roll_out_models": {PM, IT},
    "fit_models": {PM, IT},
    # money (issue 13): operators run the catalogue, funds and voucher programmes; plant managers buy,
    # budget and redeem; factory IT reads the catalogue but sees no bills
    "manage_catalogue": {OP},
    "read_catalogue": {OP, PM, IT},
    "buy_leases": {PM},
    "read_billing": {OP, PM},
    "set_budget": {PM},
    "manage_funds": {OP},
    "manage_vouchers": {OP},
    "redeem_vouchers": {PM},
    "read_bank": {OP, EO, PM},
    "bank_payout": {EO, PM},
}


def test_every_permission_has_its_roles() -> None:
    assert set(ROLES_FOR) == set(Permission)
    assert {p.value: set(p.roles) for p in Permission} == MATRIX


@pytest.mark.parametrize("permission", list(Permission))
@pytest.mark.parametrize("role", list(Role))
def test_require_refuses_exactly_the_roles_without_the_permission(permission: Permission, role: Role) -> None:
    caller = Principal(user_id=1, role=role, tenant_id=None if role is OP else 7)
    assert caller.may(permission) is (role in MATRIX[permission.value])
    if caller.may(permission):
        caller.require(permission, action="doing it")
    else:
        named = " or ".join(r.value for r in permission.roles)
        with pytest.raises(errors.Forbidden, match=f"^doing it needs the {named} role; your token is {role.value}$"):
            caller.require(permission, action="doing it")


def _app(role: Role) -> TestClient:
    """A route behind ``allowed``, with the caller's role fixed (the token lookup is the seam)."""
    app = FastAPI()
    errors.install(app)

    @app.post("/slices")
    def create(caller: Annotated[Principal, deps.allowed(Permission.MANAGE_SLICES, "buying capacity")]) -> dict:
        return {"user_id": caller.user_id, "role": caller.role.value}

    @app.post("/slices/{slice_id}/scale")
    def scale(
        slice_id: int, body: SliceScale, caller: Annotated[Principal, deps.allowed(Permission.MANAGE_SLICES, "scaling")]
    ) -> dict:
        return body.model_dump()

    app.dependency_overrides[deps._principal] = lambda: Principal(user_id=3, role=role, tenant_id=7)
    return TestClient(app)


def test_the_dependency_gives_the_caller_to_a_role_that_may() -> None:
    response = _app(PM).post("/slices")
    assert response.status_code == 200 and response.json() == {"user_id": 3, "role": "plant_manager"}


@pytest.mark.parametrize("role", [OP, IT, EO])
def test_the_dependency_answers_403_naming_the_role_that_may(role: Role) -> None:
    response = _app(role).post("/slices")
    assert response.status_code == 403
    assert response.json()["detail"] == f"buying capacity needs the plant_manager role; your token is {role.value}"
    assert response.json()["code"] == "forbidden"


def test_a_misspelt_permission_is_an_error_before_any_request() -> None:
    with pytest.raises(AttributeError):
        Permission.MANAGE_SLICE  # type: ignore[attr-defined]  # noqa: B018


def test_a_caller_without_the_role_learns_nothing_about_valid_input() -> None:
    """The role is checked before the path and body are validated: 403, not 422, for a bad body or id."""
    it = _app(IT)
    assert it.post("/slices/1/scale", json={"min_replicas": "many"}).status_code == 403
    assert it.post("/slices/one/scale", json={"min_replicas": 1, "max_replicas": 2}).status_code == 403
    assert _app(PM).post("/slices/1/scale", json={"min_replicas": "many"}).status_code == 422
