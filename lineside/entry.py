"""The ``lineside`` console script: the CLI, or on a robot-only install a message naming what is missing.

``pip install "lineside[robot]"`` puts the SDK's two dependencies (paho-mqtt, pydantic) on a robot's
small computer, and pip installs this script with it. The commands themselves need the server side
(typer, Ray, FastAPI, ...), so there the script says which extra to install instead of a traceback.
"""

from __future__ import annotations

import sys

OWN_PACKAGES = frozenset(
    {"contracts", "robots", "models", "edge_node", "training", "control_plane", "bench", "bridges", "lineside"}
)

SERVER_MISSING = (
    "lineside: this install lacks the server side of Lineside (no module named {module!r}); it looks like a "
    'robot-only install (`pip install "lineside[robot]"`), which carries the robot SDK (robots.sdk.RobotClient) '
    "and no commands.\nFor the `lineside` commands install the server extra with one ONNX Runtime: "
    'pip install "lineside[server,cpu]" (or [server,gpu] on an NVIDIA machine).'
)


def main() -> None:
    """Run the CLI; exit 1 with ``SERVER_MISSING`` when a third-party dependency of it is not installed."""
    try:
        from lineside.cli import app
    except ModuleNotFoundError as e:
        module = (e.name or "").partition(".")[0]
        if not module or module in OWN_PACKAGES:
            raise  # a module of Lineside itself is missing: a broken install or a bug, not a missing extra
        print(SERVER_MISSING.format(module=module), file=sys.stderr)
        sys.exit(1)
    app()
