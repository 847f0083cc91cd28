"""What every schema module shares: the strict input base, bounded body ids, times in UTC, and the
small validators (topic-safe names, weekdays, HH:MM) that several entities' inputs use."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict
from sqlmodel import Field, SQLModel

from contracts import wire

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def weekdays(value: list[int]) -> list[int]:
    """Days of a shift or a lending window, sorted and without repeats."""
    if any(d < 0 or d > 6 for d in value):
        raise ValueError(f"days {value} must be weekdays 0 (Monday) to 6 (Sunday)")
    return sorted(set(value))


def hhmm(value: str) -> str:
    """A time of day as the plant writes it; a window ending before it starts runs past midnight."""
    if not _HHMM.match(value):
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time, UTC-aware: SQLite hands back naive datetimes of what was stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


MAX_ID = 2**31 - 1
"""Ids are 32-bit on every database the control plane runs on; larger ones cannot name anything."""
RowId = Annotated[int, Ge(1), Le(MAX_ID)]
"""An id a caller sends in a body: bounded like path ids, so it is a 422, not the database's overflow."""


class Input(SQLModel):
    """Base of every request body: an unknown field (a typo, a server-owned field) is a 422 naming it."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]


_SAME: Any = object()


def field_from(model: type[BaseModel], name: str, default: Any = _SAME, **narrower: Any) -> Any:
    """A field with the default, bounds and description of ``model``'s field ``name`` (``narrower`` bounds
    or another ``default`` on top; ``default=...``: required).

    How a value's rules are written once: the control plane's schemas take a slice knob from the edge's
    ``contracts.slice_spec``, and a partial update takes its fields from the entity's base.
    """
    info = model.model_fields[name]
    bounds = {key: getattr(m, key) for m in info.metadata for key in ("gt", "ge", "lt", "le") if hasattr(m, key)}
    kwargs = {"description": info.description, **bounds, **narrower}
    return Field(default=info.default if default is _SAME else default, **kwargs)


def topic_safe_name(value: str) -> str:
    """Slugs and names appear in MQTT topics and broker logins: the wire contract's rule for them."""
    return wire.check_name(value, "name")
