"""``lineside bench economics`` on a short stretch of its month: what a reader of its figures relies on.

The full month takes about a minute; these runs take the first days and the first factories (the seed
plant always first), so the figures differ from BENCHMARKS.md's but must mean the same: every option of
the seed plant priced in exact minor units, savings that follow from those amounts, and an SLO share
counted from what the scheduler placed, not written down.
"""

from __future__ import annotations

from bench.economics import load, measure

KEYS = (
    "seed_plant_monthly", "seed_plant_saving_vs_dedicated", "seed_plant_saving_vs_gpu_hours",
    "median_saving_vs_dedicated", "slo_met_share", "bank_utilization_in_windows", "operator_margin",
    "contributor_credits",
)  # fmt: skip


def test_the_seed_plant_is_priced_three_ways_in_exact_money() -> None:
    result = measure(days=4, factories=4)  # Wednesday to Saturday: shifts, nights and a weekend day

    assert all(key in result for key in KEYS)
    options = result["seed_plant_monthly"]
    assert set(options) == {"lineside", "dedicated_server", "gpu_hours"}
    for amount in options.values():
        assert type(amount["minor"]) is int
        assert amount["currency"] == "EUR"
    # Renting a share by the hour costs the seed plant less than owning or renting whole GPUs for its peak.
    lineside, dedicated, gpu_hours = (options[k]["minor"] for k in ("lineside", "dedicated_server", "gpu_hours"))
    assert 0 < lineside < dedicated
    assert lineside < gpu_hours
    assert result["seed_plant_saving_vs_dedicated"] == round(1 - lineside / dedicated, 4)
    assert result["seed_plant_saving_vs_gpu_hours"] == round(1 - lineside / gpu_hours, 4)
    # The bill is what rating charged: the operator's revenue, less what contributors were credited.
    charged = sum(f["lineside"]["minor"] for f in result["per_factory"])
    credits = result["contributor_credits"]["total"]["minor"]
    assert result["operator"]["charged"]["minor"] == charged
    assert result["operator"]["revenue_after_credits"]["minor"] == charged - credits
    assert credits > 0  # bank slices ran on the lab's node at night
    assert result["operator_margin"]["minor"] == charged - credits - result["operator"]["cost"]["minor"]
    assert 0 < result["bank_utilization_in_windows"] <= 1
    assert result["ledger_balanced"] is True
    assert result["slo_met_share"] == 1.0


def test_the_slo_share_counts_hours_the_scheduler_could_not_place() -> None:
    assumptions = load()
    # A factory that allows its frames only on nodes it owns, and owns none: none of its hours can be met.
    assumptions["factories"][1]["residency"] = "own_nodes"
    result = measure(days=2, factories=3, assumptions=assumptions)

    missed = [hour for hour in result["slo_missed"] if hour.startswith(assumptions["factories"][1]["slug"])]
    assert missed
    assert result["slo_missed"] == missed
    assert 0 < result["slo_met_share"] < 1
