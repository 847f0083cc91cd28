"""The soak's figures (``bench.soak``): replica churn leaves out the minute after a fault; drift compares
the first window's mean with the last's, per process."""

from __future__ import annotations

import pytest

from bench.soak import replica_changes, summarize_drift

pytestmark = pytest.mark.unit


def test_replica_changes_after_a_fault_are_the_faults_not_churn() -> None:
    counts = [(0.0, 1), (10.0, 2), (20.0, 2), (100.0, 1), (110.0, 2), (300.0, 3)]
    assert replica_changes(counts, faults=[]) == 4
    assert replica_changes(counts, faults=[90.0]) == 2  # 100 s and 110 s are within 60 s of the fault
    assert replica_changes(counts, faults=[90.0, 5.0, 250.0]) == 0
    assert replica_changes([], faults=[]) == 0


def test_drift_is_the_last_windows_mean_against_the_firsts() -> None:
    rss = [(float(t), 100) for t in range(0, 60, 10)] + [(float(t), 150) for t in range(60, 120, 10)]
    fds = [(float(t), 20) for t in range(0, 120, 10)]
    drift = summarize_drift({"ingress": {"rss_kib": rss, "fds": fds}}, start=0, end=120, window_s=30)
    assert drift == {"ingress": {"rss_drift_pct": 50.0, "fd_drift_pct": 0.0, "rss_mib_last": round(150 / 1024, 1)}}
    assert summarize_drift({"gcs": {"rss_kib": [], "fds": []}}, 0, 120, 30)["gcs"]["rss_drift_pct"] is None
