"""First start of a site's Mosquitto: write its dynamic-security state with the control plane's admin.

Run before Mosquitto (Kubernetes init container, compose one-shot service) as

    python init_dynsec.py /var/lib/lineside/broker

with LINESIDE_BROKER_ADMIN_PASSWORD set to the site's admin password (GET /sites/{id}/broker-admin).
It writes <folder>/dynamic-security.json (0600) exactly as `lineside broker run` does on its first start
(edge_node/broker.py): one client, lineside-admin, allowed only the plugin's control topic, and
nothing allowed to anyone else by default. A state that exists already is left as it is: from then
on the plugin owns it, and the control plane rebuilds the logins in it (POST /sites/{id}/broker/sync).

`lineside broker run` itself cannot serve a cluster: its plain listener binds 127.0.0.1 only, and the
control plane and the slice ingress connect from other pods. So Mosquitto runs with mosquitto.conf
beside this file, and only this step borrows the project's code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edge_node.broker import MosquittoBroker


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} STATE_FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    state = folder / "dynamic-security.json"
    if state.exists():
        print(f"{state} exists: kept (the plugin owns it)")
        return 0
    password = os.environ.get("LINESIDE_BROKER_ADMIN_PASSWORD", "").strip()
    if not password:
        print(
            "LINESIDE_BROKER_ADMIN_PASSWORD is empty: set it to the site's admin password, which an operator "
            "reads with GET /sites/{id}/broker-admin",
            file=sys.stderr,
        )
        return 2
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The same writer `lineside broker run` uses on its first start; the port is not part of the state.
    MosquittoBroker(folder, 1883, admin_password=password)._write_dynsec_state()
    print(f"{state} written with the control plane's admin")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
