"""The demo's canary: about half the robots see the fitted model, whatever their names hash to."""

from contracts.slice_spec import routes_to_candidate
from lineside.demo_rollout import canary_share


def test_canary_share_routes_about_half_of_the_robots() -> None:
    for count in (2, 3, 4, 8, 20):
        robots = [f"robot-{k:03d}" for k in range(count)]
        share = canary_share("line-1", robots)
        assert share is not None and 0 < share < 1
        routed = [r for r in robots if routes_to_candidate("line-1", r, share)]
        assert len(routed) == count // 2, (count, share, routed)


def test_one_robot_has_no_canary() -> None:
    assert canary_share("line-1", ["robot-000"]) is None
