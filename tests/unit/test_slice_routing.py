"""A placed slice: model deployments and the ingress agree on which node gets which share of the calls."""

from __future__ import annotations

from collections import Counter

from contracts.slice_spec import SliceSpec
from edge_node.serving import _interleave, _pins


def test_pins_have_one_order_whatever_the_node_ids() -> None:
    spec = SliceSpec(name="s", tenant="t", lines=["l"], placement={"lineside_node_2": 2, "lineside_node_10": 1})
    assert _pins(spec) == [("lineside_node_10", 1), ("lineside_node_2", 2)]


def test_calls_rotate_by_weight_and_spread() -> None:
    order = _interleave([("a", 2), ("b", 1)])
    assert order == ["a", "b", "a"]
    assert Counter(_interleave([("x", 3), ("y", 1), ("z", 2)])) == {"x": 3, "y": 1, "z": 2}
