"""Errors the control plane raises on purpose, mapped to HTTP statuses in one place (``STATUS``).

Hierarchy::

    ControlPlaneError          anything refused; 400
    ├── NotFound               no such object for this caller (also other tenants' objects); 404
    ├── Forbidden              the caller's role may not do this; 403
    ├── Unauthenticated        missing, unknown or revoked token; 401
    ├── Conflict               duplicate name or illegal state change; 409
    │   └── IllegalTransition  a state machine refused the move
    ├── InvalidUpload          a model file or manifest that cannot be served; 422
    ├── TooManyRequests        too many login attempts; 429 with Retry-After
    │   └── ValidatorBusy      every model-validation slot is taken
    └── BrokerUnavailable      the site's broker did not confirm a credential change; 503

A value that passes validation but that the database cannot hold (an integer past the column's
range, a NUL character in PostgreSQL text) answers 422 ``invalid_value``; the driver's text is logged.

Every error carries a message that says what to do.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)


class ControlPlaneError(Exception):
    """Base class; ``code`` is stable, the message is for people."""

    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ControlPlaneError):
    code = "not_found"


class Forbidden(ControlPlaneError):
    code = "forbidden"


class Unauthenticated(ControlPlaneError):
    code = "unauthenticated"


class Conflict(ControlPlaneError):
    code = "conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class InvalidUpload(ControlPlaneError):
    """``reason`` is a stable word a client can act on (``external_data``, ``timeout``, ``too_large``...)."""

    code = "invalid_upload"

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class InvalidInput(ControlPlaneError):
    """A well-formed request whose values do not fit what the server knows (e.g. a node's own hardware)."""

    code = "invalid_input"


class BrokerUnavailable(ControlPlaneError):
    code = "broker_unavailable"


class TooManyRequests(ControlPlaneError):
    """Refused until ``retry_after_s`` has passed (sent as ``Retry-After``)."""

    code = "too_many_requests"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ValidatorBusy(TooManyRequests):
    """Every model-validation slot is taken (LINESIDE_VALIDATOR_CONCURRENCY); retry the upload later."""

    code = "validator_busy"


class PaymentRequired(ControlPlaneError):
    """Funds, vouchers and credit are used up: a top-up, a higher credit limit or a voucher lets it through."""

    code = "payment_required"


STATUS: dict[type[ControlPlaneError], int] = {
    PaymentRequired: 402,
    NotFound: 404,
    Forbidden: 403,
    Unauthenticated: 401,
    Conflict: 409,
    InvalidUpload: 422,
    InvalidInput: 422,
    BrokerUnavailable: 503,
    TooManyRequests: 429,
    ControlPlaneError: 400,
}


def status_of(error: ControlPlaneError) -> int:
    """HTTP status of an error: the entry of its nearest class in ``STATUS``."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


async def _handle(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ControlPlaneError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthenticated) else None
    if isinstance(error, TooManyRequests):
        headers = {"Retry-After": str(error.retry_after_s)}
    content = {"detail": error.message, "code": error.code}
    if isinstance(error, InvalidUpload):
        content["reason"] = error.reason
    return JSONResponse(status_code=status_of(error), content=content, headers=headers)


async def _handle_integrity(_request: Request, error: Exception) -> JSONResponse:
    # Two writers raced past a uniqueness check: the loser gets a clear 409, nothing is half-written.
    detail = "a concurrent change conflicts with this one (duplicate name or id); reload and retry"
    return JSONResponse(status_code=409, content={"detail": detail, "code": Conflict.code})


async def _handle_data_error(_request: Request, error: Exception) -> JSONResponse:
    # A value the database cannot hold (an id past its integer range, a NUL character in text) that got
    # past validation. The driver's text names columns and values: log it, answer a stable code.
    log.warning("database refused a value: %s", str(error).splitlines()[0][:300])
    detail = "a value is out of range or contains characters that cannot be stored (e.g. NUL); fix it and retry"
    return JSONResponse(status_code=422, content={"detail": detail, "code": "invalid_value"})


async def _handle_pool_timeout(_request: Request, error: Exception) -> JSONResponse:
    # Every database connection stayed busy for the pool's timeout: the request changed nothing; say when to retry.
    log.warning("no database connection free within the pool timeout (LINESIDE_DB_POOL_SIZE may be too small)")
    detail = "the control plane's database is busy; nothing was changed, retry in a few seconds"
    return JSONResponse(status_code=503, content={"detail": detail, "code": "database_busy"},
                        headers={"Retry-After": "5"})  # fmt: skip


def install(app: FastAPI) -> None:
    """Answer every ``ControlPlaneError`` as JSON ``{"detail", "code"}`` with its status."""
    app.add_exception_handler(ControlPlaneError, _handle)
    app.add_exception_handler(PoolTimeout, _handle_pool_timeout)
    app.add_exception_handler(IntegrityError, _handle_integrity)
    app.add_exception_handler(DataError, _handle_data_error)
