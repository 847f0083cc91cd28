"""The dashboard: one page per role, served by the control plane with every asset it needs.

Pages are plain HTML with a small script each (``static/``); the data comes
from the same JSON API, authenticated by the session cookie that
``POST /auth/login`` sets. Nothing is loaded from outside the control plane
(factories are often air-gapped): no CDN, no web fonts, charts drawn as SVG by
``static/lineside.js``. ``/docs`` is Swagger UI from the files the
``fastapi-offline`` package ships, started by ``static/docs.js``.

Every page keeps to the Content-Security-Policy of ``web_headers``: scripts are
files, never inline, and anything a user typed (an e-mail) is HTML-escaped here
and set as text (never as HTML) by the scripts.
"""

from __future__ import annotations

import functools
import html
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlmodel import Session

from control_plane.api.deps import caller_of
from control_plane.models import Role, User
from control_plane.security import Principal

HERE = Path(__file__).parent
STATIC = HERE / "static"

PAGES: dict[str, tuple[str, Role]] = {
    "plant": ("Plant", Role.PLANT_MANAGER),
    "it": ("Robots", Role.FACTORY_IT),
    "operator": ("Edge operations", Role.OPERATOR),
    "contributor": ("Compute bank", Role.EDGE_OPERATOR),
}
HOME = {role: page for page, (_, role) in PAGES.items()}

router = APIRouter(prefix="/ui", include_in_schema=False)
static = StaticFiles(directory=STATIC)
SWAGGER_URL = "/ui/swagger"
swagger_static = StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static")
docs_router = APIRouter(include_in_schema=False)


@functools.cache
def _file(name: str) -> str:
    return (HERE / "pages" / name).read_text()


def render(page: str, title: str, caller: Principal | None, email: str = "") -> str:
    """The layout around ``pages/<page>.html``; the nav shows the caller's own page only."""
    nav = ""
    if caller is not None:
        home = HOME.get(caller.role)
        own = f'<a href="/ui/{home}" aria-current="page">{PAGES[home][0]}</a>' if home else ""
        nav = (f'<nav aria-label="Pages">{own}'
               f'<a href="/docs">API</a></nav><span class="who">{html.escape(email)} · {caller.role.value}</span>'
               '<button type="button" id="logout" class="quiet">Log out</button>')  # fmt: skip
    return (_file("layout.html").replace("{{title}}", title).replace("{{nav}}", nav)
            .replace("{{body}}", _file(f"{page}.html")).replace("{{page}}", page))  # fmt: skip


def _caller(request: Request) -> tuple[Principal, str] | None:
    with Session(request.app.state.engine) as session:
        caller = caller_of(request, session)
        if caller is None:
            return None
        user = session.get(User, caller.user_id)
        return caller, user.email if user else ""


@router.get("/login", response_class=HTMLResponse)
def login_page() -> str:
    return render("login", "Log in", None)


@router.get("", response_class=RedirectResponse)
@router.get("/", response_class=RedirectResponse)
def home(request: Request) -> Response:
    found = _caller(request)
    target = ("/ui/" + HOME[found[0].role] if found[0].role in HOME else "/docs") if found else "/ui/login"
    return RedirectResponse(target, status_code=303)


@router.get("/{page}", response_class=HTMLResponse)
def page(page: str, request: Request) -> Response:
    if page not in PAGES:
        return HTMLResponse(render("missing", "Not found", None), status_code=404)
    found = _caller(request)
    if found is None:
        return RedirectResponse(f"/ui/login?next=/ui/{page}", status_code=303)
    caller, email = found
    title, role = PAGES[page]
    if caller.role is not role:
        body = render("forbidden", "Not your page", caller, email)
        return HTMLResponse(body.replace("{{role}}", role.value), status_code=403)
    return HTMLResponse(render(page, title, caller, email), headers={"Cache-Control": "no-store"})


@docs_router.get("/docs", response_class=HTMLResponse)
def docs() -> str:
    """The API's Swagger UI, every file from the control plane itself (air-gapped plants included)."""
    return _file("docs.html")
