"""Security headers on every answer of the control plane (pages, JSON, files).

The dashboard and ``/docs`` load nothing but their own files (``ui/static`` and
the Swagger UI files shipped by the ``fastapi-offline`` package), so the policy
can be strict: scripts and styles only from the control plane itself, no inline
script at all (an injected ``<script>`` or ``onerror=`` does not run), no
plugins, no framing (clickjacking), and fetches only to the control plane.
Styles set from scripts go through the CSSOM (``element.style``), which the
policy allows; ``style=`` attributes in markup it does not.

``Strict-Transport-Security`` is sent when ``cookie_secure`` is on (always in
production): the deployment then promises HTTPS, and browsers should never try
plain HTTP again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from control_plane.settings import ControlPlaneSettings

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",  # Swagger UI's icons are data: URLs in its stylesheet
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])  # fmt: skip

HSTS_MAX_AGE_S = 365 * 24 * 3600


def security_headers(settings: ControlPlaneSettings) -> dict[str, str]:
    """The headers every answer carries under these settings."""
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
        "Referrer-Policy": "same-origin",
    }
    if settings.cookie_secure:
        headers["Strict-Transport-Security"] = f"max-age={HSTS_MAX_AGE_S}"
    return headers


def install(app: FastAPI, settings: ControlPlaneSettings) -> None:
    """Add the headers to every answer (a route that sets one of them itself keeps its own)."""
    headers = security_headers(settings)

    @app.middleware("http")
    async def add_security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response
