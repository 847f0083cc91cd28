"""Dependencies shared by the routes: settings, database session, caller, tenant scoping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Path, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import QueuePool
from sqlmodel import Session, SQLModel, col, select
from sqlmodel.sql.expression import SelectOfScalar

from control_plane.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from control_plane.models import MAX_ID, ApiToken, Node, User, as_utc, utcnow
from control_plane.money import CURRENCIES, Money
from control_plane.security import Permission, Principal, token_hash
from control_plane.settings import ControlPlaneSettings
from control_plane.states import NodeStatus


def _settings(request: Request) -> ControlPlaneSettings:
    return request.app.state.settings


DB_GATE_MAX = 32
"""At most this many requests hold a database session at once, whatever the pool (the worker threads are 40)."""


def _db_gate(request: Request) -> asyncio.Semaphore:
    """The running loop's gate: as many requests at once as the engine's pool has connections."""
    gates: dict[int, asyncio.Semaphore] = request.app.state.__dict__.setdefault("db_gates", {})
    loop = id(asyncio.get_running_loop())
    if loop not in gates:
        pool = request.app.state.engine.pool
        capacity = pool.size() + pool._max_overflow if isinstance(pool, QueuePool) else DB_GATE_MAX
        gates[loop] = asyncio.Semaphore(max(1, min(capacity, DB_GATE_MAX)))
    return gates[loop]


async def _session(request: Request) -> AsyncIterator[Session]:
    """One session per request, for no more requests at once than the pool has connections.

    A sync route runs in a worker thread, and so does the validation of its answer, which may still read
    through the route's session. With more requests than connections, the waiting routes took every worker, the
    routes holding connections could not finish their answers, and all of them stalled for the pool's timeout
    (chaos scenario 11, ``test_chaos_api``). Requests beyond the pool now wait here, on the event loop, holding
    no worker; the session is closed on the loop too."""
    async with _db_gate(request):
        with Session(request.app.state.engine) as session:
            yield session


def _now(request: Request) -> datetime:
    """The control plane's clock, plant-local (shift times are local); tests replace ``app.state.clock``."""
    now: datetime = request.app.state.clock()
    return now


def _utc_now(request: Request) -> datetime:
    """The same clock in UTC, as money counts it (billing months and hours are UTC); a naive clock is local."""
    return _now(request).astimezone(UTC)


SettingsDep = Annotated[ControlPlaneSettings, Depends(_settings)]
NowDep = Annotated[datetime, Depends(_now)]
UtcNowDep = Annotated[datetime, Depends(_utc_now)]
SessionDep = Annotated[Session, Depends(_session)]


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthenticated("send your API token as 'Authorization: Bearer <token>'")
    return authorization.split(" ", 1)[1].strip()


SESSION_COOKIE = "lineside_session"
SESSION_TOKEN_NAME = "dashboard"  # the ApiToken row behind a dashboard login
CSRF_HEADER = "X-Lineside-Request"
"""Dashboard requests that change something carry this header: a page of another site cannot send
it without a CORS preflight, which the control plane never grants (with SameSite=Strict cookies)."""
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _token_of(request: Request, authorization: str | None) -> str:
    """The bearer token, else the dashboard's session cookie (with the CSRF header on changes)."""
    if authorization:
        return _bearer(authorization)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return _bearer(None)
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
        raise Forbidden(f"dashboard changes must send the {CSRF_HEADER}: 1 header (the dashboard's pages do)")
    return cookie


def _principal(request: Request, session: SessionDep, settings: SettingsDep,
               authorization: Annotated[str | None, Header()] = None) -> Principal:  # fmt: skip
    return principal_of_token(session, settings, _token_of(request, authorization))


def principal_of_token(session: Session, settings: ControlPlaneSettings, token: str) -> Principal:
    """Whose ``token`` is; raises ``Unauthenticated`` for an unknown, revoked or expired one."""
    row = session.exec(
        select(ApiToken, User).where(ApiToken.token_hash == token_hash(token), ApiToken.user_id == User.id)
    ).first()
    if row is None or row[0].revoked_at is not None:
        raise Unauthenticated("unknown or revoked API token; ask your administrator for a new one")
    api_token, user = row
    # Tokens from before expiry existed have none stored: they live api_token_ttl_days from creation.
    expires = api_token.expires_at or api_token.created_at + timedelta(days=settings.api_token_ttl_days)
    if as_utc(expires) < utcnow():
        if api_token.name == SESSION_TOKEN_NAME:
            raise Unauthenticated("your dashboard session has expired; log in again")
        raise Unauthenticated(f"API token {api_token.prefix}... expired; create a new one (POST /users/me/tokens)")
    assert user.id is not None
    return Principal(user_id=user.id, role=user.role, tenant_id=user.tenant_id, token_id=api_token.id)


def _node(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Node:
    token = _bearer(authorization)
    node = session.exec(select(Node).where(Node.token_hash == token_hash(token))).first()
    if node is None or node.status is NodeStatus.REMOVED:
        raise Unauthenticated("unknown or removed node token; join the node again with a new join token")
    return node


def caller_of(request: Request, session: Session) -> Principal | None:
    """The caller of a page request (session cookie or bearer token), or None when not logged in."""
    try:
        return _principal(request, session, _settings(request), request.headers.get("authorization"))
    except (Unauthenticated, Forbidden):
        return None


CurrentUser = Annotated[Principal, Depends(_principal)]
CurrentNode = Annotated[Node, Depends(_node)]


def allowed(permission: Permission, action: str) -> Any:
    """The dependency of a route that needs ``permission``: it gives the caller, or answers 403 naming the
    roles that may (``action`` says what was refused, e.g. "creating lines").

    Use as ``caller: Annotated[Principal, allowed(Permission.MANAGE_LINES, "creating lines")]``. The check runs
    before the route reads its body, so a caller without the role learns nothing about what a valid body is.
    """

    def check(caller: CurrentUser) -> Principal:
        caller.require(permission, action=action)
        return caller

    return Depends(check)


T = TypeVar("T", bound=SQLModel)


def get_or_404(session: Session, model: type[T], object_id: int) -> T:
    """The object, or 404: for objects that are nobody's tenant's (sites, nodes), which a role either sees or not."""
    obj = session.get(model, object_id)
    if obj is None:
        raise NotFound(f"{model.__name__.lower()} {object_id} not found")
    return obj


def scoped_get(session: Session, model: type[T], object_id: int, caller: Principal) -> T:
    """The object if it exists and belongs to the caller's tenant (operators: any); else 404.

    Objects of other tenants answer exactly like missing ones, so ids reveal nothing.
    """
    obj = get_or_404(session, model, object_id)
    if not caller.sees_tenant(getattr(obj, "tenant_id", None)):
        raise NotFound(f"{model.__name__.lower()} {object_id} not found")
    return obj


def insert(session: Session, obj: T, *, conflict: str) -> T:
    """Add and commit ``obj``; a uniqueness clash becomes ``Conflict(conflict)`` (HTTP 409)."""
    session.add(obj)
    try:
        session.commit()
    except IntegrityError as e:
        session.rollback()
        raise Conflict(conflict) from e
    session.refresh(obj)
    return obj


IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description=f"The object's id (1 to {MAX_ID}).")]
IdFilter = Annotated[int | None, Query(ge=1, le=MAX_ID, description=f"Only objects of this id (1 to {MAX_ID}).")]

PAGE_LIMIT_DEFAULT = 100
PAGE_LIMIT_MAX = 1000


@dataclass
class Page:
    """One page of a list: ``limit`` items after the cursor ``after`` (an id), in id order.

    When more items follow, the answer carries ``X-Next-Cursor: <id>`` and ``Link: <url>; rel="next"``
    (RFC 8288); the body stays a plain JSON list. Lists shown newest first walk towards older ids.
    """

    limit: int
    after: int | None
    request: Request
    response: Response

    def of(self, session: Session, query: SelectOfScalar[T], model: type[T], *, newest_first: bool = False,
           key: str = "id") -> list[T]:  # fmt: skip
        """The page of ``query``'s rows (its own ORDER BY is replaced by ``key`` order, the id unless the rows are
        keyed otherwise), setting the next-page headers."""
        column = col(getattr(model, key))
        if self.after is not None:
            query = query.where(column < self.after if newest_first else column > self.after)
        query = query.order_by(None).order_by(column.desc() if newest_first else column)
        rows = list(session.exec(query.limit(self.limit + 1)))
        if len(rows) > self.limit:
            rows = rows[: self.limit]
            cursor = getattr(rows[-1], key)
            following = self.request.url.include_query_params(limit=self.limit, after=cursor)
            self.response.headers["X-Next-Cursor"] = str(cursor)
            self.response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
        return rows


def _page(request: Request, response: Response,
          limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX, description=(
              f"Items per page (1 to {PAGE_LIMIT_MAX}, default {PAGE_LIMIT_DEFAULT}).")
          )] = PAGE_LIMIT_DEFAULT,
          after: Annotated[int | None, Query(ge=0, le=MAX_ID, description=(
              "Cursor: the id of the previous page's last item, as its X-Next-Cursor header (or Link rel=next) "
              "gives it. Lists shown newest first continue with older items.")
          )] = None) -> Page:  # fmt: skip
    return Page(limit=limit, after=after, request=request, response=response)


PageDep = Annotated[Page, Depends(_page)]


def own_tenant(query: SelectOfScalar[T], model: type[T], caller: Principal) -> SelectOfScalar[T]:
    """``query`` restricted to the caller's tenant (operators: unrestricted)."""
    if caller.is_operator:
        return query
    return query.where(model.tenant_id == caller.tenant_id)  # type: ignore[attr-defined]


def money_in(amount: str, currency: str, what: str) -> Money:
    """A caller's amount in major units as ``Money``; one finer than the currency's minor unit ("10.001" EUR)
    is a 422 that names it (``Money.of`` raises, which answered 500 before: the API fuzzer found it)."""
    if currency not in CURRENCIES:
        raise InvalidInput(f"{what}: currency {currency!r} is not one of {sorted(CURRENCIES)}")
    try:
        return Money.of(amount, currency)
    except ValueError:
        digits = CURRENCIES[currency]
        raise InvalidInput(f"{what} {amount!r} has more decimals than {currency} has ({digits}); round it to "
                           f"{digits} decimal(s)") from None  # fmt: skip
