"""State machines of nodes and slices: ``str`` enums and one transition function each.

Routes and agents never assign ``status`` directly; they call ``transition``,
which refuses illegal moves with the reason (HTTP 409).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from control_plane.errors import IllegalTransition


class NodeStatus(StrEnum):
    JOINING = "joining"
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"
    DRAINED = "drained"
    REMOVED = "removed"


class SliceStatus(StrEnum):
    PENDING = "pending"  # desired, not yet reported by the site's agent
    RUNNING = "running"  # the agent applied the current generation and Serve reports it healthy
    DEGRADED = "degraded"  # applied, but Serve reports unhealthy or missing replicas
    FAILED = "failed"  # the agent could not apply it; see status_message
    DELETING = "deleting"  # deletion requested; the agent removes it
    DELETED = "deleted"


class RobotStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


NODE_MOVES: dict[NodeStatus, set[NodeStatus]] = {
    NodeStatus.JOINING: {NodeStatus.ONLINE, NodeStatus.OFFLINE, NodeStatus.REMOVED},
    NodeStatus.ONLINE: {NodeStatus.OFFLINE, NodeStatus.DRAINING, NodeStatus.REMOVED},
    NodeStatus.OFFLINE: {NodeStatus.ONLINE, NodeStatus.DRAINING, NodeStatus.REMOVED},
    NodeStatus.DRAINING: {NodeStatus.DRAINED, NodeStatus.ONLINE, NodeStatus.OFFLINE, NodeStatus.REMOVED},
    NodeStatus.DRAINED: {NodeStatus.ONLINE, NodeStatus.OFFLINE, NodeStatus.REMOVED},
    NodeStatus.REMOVED: set(),
}

SLICE_MOVES: dict[SliceStatus, set[SliceStatus]] = {
    SliceStatus.PENDING: {SliceStatus.RUNNING, SliceStatus.DEGRADED, SliceStatus.FAILED, SliceStatus.DELETING},
    SliceStatus.RUNNING: {SliceStatus.PENDING, SliceStatus.DEGRADED, SliceStatus.FAILED, SliceStatus.DELETING},
    SliceStatus.DEGRADED: {SliceStatus.PENDING, SliceStatus.RUNNING, SliceStatus.FAILED, SliceStatus.DELETING},
    SliceStatus.FAILED: {SliceStatus.PENDING, SliceStatus.RUNNING, SliceStatus.DEGRADED, SliceStatus.DELETING},
    SliceStatus.DELETING: {SliceStatus.DELETED},
    SliceStatus.DELETED: set(),
}

ROBOT_MOVES: dict[RobotStatus, set[RobotStatus]] = {
    RobotStatus.ACTIVE: {RobotStatus.REVOKED},
    RobotStatus.REVOKED: set(),
}

S = TypeVar("S", NodeStatus, SliceStatus, RobotStatus)

_MOVES: dict[type[StrEnum], dict] = {NodeStatus: NODE_MOVES, SliceStatus: SLICE_MOVES, RobotStatus: ROBOT_MOVES}


def transition(current: S, target: S, *, what: str) -> S:
    """Return ``target`` if ``current -> target`` is legal (staying put always is), else raise.

    ``what`` names the object in the error, e.g. ``"slice line-1-inspect"``.
    """
    if current == target:
        return target
    allowed = _MOVES[type(current)][current]
    if target not in allowed:
        options = ", ".join(sorted(s.value for s in allowed)) or "none (final state)"
        raise IllegalTransition(f"{what} is {current.value}; it cannot become {target.value} (allowed: {options})")
    return target
