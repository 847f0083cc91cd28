"""Per-connection broker logins of a slice's ingress, derived the same way on both sides.

The control plane creates one dynamic-security client per ingress connection, pinned to its client
id; the ingress derives each connection's password from the slice's one base secret, so only that
secret travels (and only to the node that runs the ingress).
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def connection_password(base: str, client_id: str) -> str:
    """The password of one ingress connection under ``BrokerSpec.connection_logins`` (the control plane
    derives the same): a credential pinned to one client id cannot take over a robot's session."""
    digest = hmac.new(base.encode(), f"connection:{client_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
