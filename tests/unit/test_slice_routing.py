"""A placed slice: model deployments and the ingress agree on which node gets which share of the calls."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from contracts.slice_spec import SliceSpec
from edge_node.serving import _interleave, _pins, call_model


def test_pins_have_one_order_whatever_the_node_ids() -> None:
    spec = SliceSpec(name="s", tenant="t", lines=["l"], placement={"lineside_node_2": 2, "lineside_node_10": 1})
    assert _pins(spec) == [("lineside_node_10", 1), ("lineside_node_2", 2)]


def test_calls_rotate_by_weight_and_spread() -> None:
    order = _interleave([("a", 2), ("b", 1)])
    assert order == ["a", "b", "a"]
    assert Counter(_interleave([("x", 3), ("y", 1), ("z", 2)])) == {"x": 3, "y": 1, "z": 2}


class _QueuedForGood:
    """A Serve response to a deployment that has no replicas (Serve removed it): it never resolves."""

    def __init__(self) -> None:
        self.cancelled = False
        self.waited: list[float | None] = []

    def result(self, timeout_s: float | None = None) -> list[dict[str, object]]:
        self.waited.append(timeout_s)
        if timeout_s is None:
            raise AssertionError("an unbounded wait: the batcher would hang here for good")
        raise TimeoutError(f"no answer within {timeout_s}s")

    def cancel(self) -> None:
        self.cancelled = True


def test_a_model_call_that_never_resolves_times_out_and_is_cancelled() -> None:
    """Regression: the ingress waited on a model call with no timeout, so a call to a deployment Serve had
    removed held the batcher, and the replica's shutdown, for good. Now it times out (and ``judge`` retries,
    then answers ``internal``), and the queued request is cancelled."""
    response = _QueuedForGood()
    handle = SimpleNamespace(inspect=SimpleNamespace(remote=lambda frames: response))
    with pytest.raises(TimeoutError):
        call_model(handle, [b"frame"], timeout_s=0.01)  # type: ignore[arg-type]  # a handle's call seam
    assert response.waited == [0.01]
    assert response.cancelled
