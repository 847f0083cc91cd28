"""Each slice knob is written once: the control plane's schemas take it from the edge's slice spec.

A default or bound changed in ``contracts.slice_spec`` must change what the API accepts and shows,
so the two can never drift, and whatever the API accepts an edge node accepts.
"""

from __future__ import annotations

from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from contracts.slice_spec import KNOB_SECTIONS, FramePolicy, ReplicaSpec, SliceSpec, knob_sections
from control_plane.models import LineCreate, LineUpdate, Slice, SliceCreate, SliceKnobs, SlicePublic, SliceScale

SPEC_KNOBS = {(name, section): model.model_fields[name] for section, model in KNOB_SECTIONS.items()
              for name in model.model_fields if name in SliceKnobs.model_fields}  # fmt: skip
BODY: dict[str, Any] = {"slug": "inspect", "line_ids": [1], "model_version_id": 1}


def test_every_knob_but_priority_and_residency_comes_from_the_spec() -> None:
    assert {name for name, _ in SPEC_KNOBS} == set(SliceKnobs.model_fields) - {"priority", "residency"}


@pytest.mark.parametrize(("name", "section"), sorted(SPEC_KNOBS))
@pytest.mark.parametrize("schema", [SliceCreate, Slice, SlicePublic])
def test_a_knob_has_the_specs_default_bounds_and_description(schema: type[BaseModel], name: str, section: str) -> None:
    ours, spec = schema.model_fields[name], SPEC_KNOBS[name, section]
    assert (ours.annotation, ours.default, ours.description) == (spec.annotation, spec.default, spec.description)
    assert _bounds(ours) == _bounds(spec)


def _bounds(field: FieldInfo) -> list[object]:
    """The field's ge/gt/le/lt constraints (sqlmodel adds metadata of its own)."""
    return [m for m in field.metadata if isinstance(m, annotated_types.BaseMetadata)]


@pytest.mark.parametrize("knob", ["upscale_delay_s", "max_batch_size", "cpus_per_replica"])
def test_values_past_the_specs_bounds_are_refused_by_the_api(knob: str) -> None:
    section = next(s for n, s in SPEC_KNOBS if n == knob)
    too_big = next(m.le for m in SPEC_KNOBS[knob, section].metadata if hasattr(m, "le")) + 1
    with pytest.raises(ValidationError, match=knob):
        SliceCreate(**BODY, **{knob: too_big})


@pytest.mark.parametrize("schema", [SliceCreate, SliceScale])
def test_a_ceiling_below_the_floor_is_refused_quoting_both(schema: type[BaseModel]) -> None:
    body = BODY if schema is SliceCreate else {}
    with pytest.raises(ValidationError, match=r"max_replicas \(3\) must be >= min_replicas \(5\)"):
        schema(**body, min_replicas=5, max_replicas=3)
    with pytest.raises(ValidationError, match=r"max_replicas \(3\) must be >= min_replicas \(5\)"):
        ReplicaSpec(min_replicas=5, max_replicas=3)  # the same check on the edge


def test_scaling_needs_both_bounds() -> None:
    with pytest.raises(ValidationError, match="max_replicas"):
        SliceScale(min_replicas=1)


def test_flat_knobs_go_to_the_spec_section_that_names_them() -> None:
    flat = SliceCreate(**BODY, min_replicas=2, max_replicas=4, max_batch_size=8, gpus_per_replica=0.5).model_dump()
    sections = knob_sections(flat)
    assert sections["replicas"]["min_replicas"] == 2 and sections["replicas"]["max_replicas"] == 4
    assert sections["batch"] == {"max_batch_size": 8, "batch_wait_ms": 5.0}
    assert sections["resources"] == {"cpus_per_replica": 1.0, "gpus_per_replica": 0.5}
    assert "slug" not in str(sections) and "priority" not in str(sections)


def test_a_lines_policy_defaults_to_what_its_slices_ingress_enforces_by_default() -> None:
    line = LineCreate(slug="line-1", site_id=1)
    policy, spec = FramePolicy(), SliceSpec.model_fields["latency_budget_ms"].default
    assert (line.robot_max_fps, line.robot_max_frame_bytes, line.latency_budget_ms) == (
        policy.max_fps, policy.max_frame_bytes, spec)  # fmt: skip


@pytest.mark.parametrize("name", ["latency_budget_ms", "robot_max_fps", "robot_max_frame_bytes"])
def test_a_line_update_has_the_bounds_of_a_new_line(name: str) -> None:
    assert _bounds(LineUpdate.model_fields[name]) == _bounds(LineCreate.model_fields[name])
    assert LineUpdate.model_fields[name].default is None
