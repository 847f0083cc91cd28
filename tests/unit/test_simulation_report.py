import pytest

from edge_node.ingress import frame_id_of
from robots.simulate import SimulationReport


def test_frame_ids_from_correlation_data() -> None:
    assert frame_id_of(None) is None
    assert frame_id_of(b"frame-42") == "frame-42"
    assert frame_id_of(b"\xff\xfe") == "fffe"


def test_report_percentiles_accuracy_and_gaps() -> None:
    report = SimulationReport(robots=2, target_fps=10, elapsed_s=2.0, sent=5, results=4, errors=1, correct=3)
    report.latencies_ms = [10.0, 20.0, 30.0, 40.0]
    report.answered_at = [100.0, 100.5, 103.5, 104.0, 104.2]
    summary = report.summary()
    assert summary["throughput_fps"] == 2.5
    assert summary["p50_ms"] == pytest.approx(25.0)
    assert summary["accuracy"] == 0.75
    assert "latencies_ms" not in summary
    assert report.longest_gap_s() == pytest.approx(3.0)
    assert report.longest_gap_s(after=103.9) == pytest.approx(0.2)


def test_a_pool_of_one_surface_family_holds_only_that_familys_parts() -> None:
    """`--family printed`: every part the robots send is the generator's printed part, good or not."""
    from models import synth
    from robots.simulate import render_pool

    pool = render_pool(6, workers=1, family="printed")
    expected = [synth.generate(2026, i, family="printed") for i in range(6)]
    assert pool == [(s.label, s.data) for s in expected]
    assert {s.family for s in expected} == {"printed"}
    assert pool != render_pool(6, workers=1)  # the generator's own mix of families otherwise


def test_the_summary_holds_figures_not_a_value_per_frame() -> None:
    """``sent_at`` (a time per verdict) once went into the summary that ``robots simulate --json`` and the
    chaos tests print: every send time of the run in one JSON line (scenario 6 at 5 minutes printed 2,521)."""
    report = SimulationReport(robots=1, target_fps=1.0, elapsed_s=2.0, sent=2, results=2)
    report.latencies_ms, report.sent_at, report.answered_at = [10.0, 20.0], [1.0, 2.0], [1.01, 2.02]
    report.slice_ms, report.model_call_ms = [5.0, 6.0], [3.0, 4.0]
    summary = report.summary()
    assert not any(isinstance(v, list) for v in summary.values()), summary
    assert summary["p50_ms"] == 15.0 and summary["sent"] == 2
