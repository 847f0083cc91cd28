"""The hysteresis that keeps a steady load from flipping the replica count."""

from __future__ import annotations

from edge_node.autoscaling import desired_replicas


def test_scales_up_as_soon_as_work_exceeds_replicas() -> None:
    assert desired_replicas(1, 1.01, 0.7) == 2
    assert desired_replicas(2, 5.5, 0.7) == 6


def test_holds_between_the_thresholds() -> None:
    # 1.5 replicas of work on 2 or on 3 replicas: removing one would leave too little headroom.
    assert desired_replicas(2, 1.5, 0.7) == 2
    assert desired_replicas(3, 1.5, 0.7) == 3


def test_scales_down_only_when_clearly_idle() -> None:
    assert desired_replicas(3, 1.3, 0.7) == 2  # two replicas would run at 65% of target
    assert desired_replicas(4, 0.2, 0.7) == 1
    assert desired_replicas(1, 0.0, 0.7) == 1


def test_a_load_between_two_counts_does_not_oscillate() -> None:
    running = 1
    changes = 0
    for work in [1.45, 1.55, 1.4, 1.6, 1.5, 1.35, 1.65] * 20:
        wanted = desired_replicas(running, work, 0.7)
        changes += wanted != running
        running = wanted
    assert changes == 1 and running == 2
