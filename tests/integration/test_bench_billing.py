"""``lineside bench billing``'s small preset on PostgreSQL: what it measures must also add up.

The benchmark's figures are only worth reading if the run billed every record once: the ledger
balances, no usage key is charged twice, the charged quantity is the unique records' quantity, and
the month's invoices carry exactly the rated amounts. Times are not asserted (machines differ).
"""

from __future__ import annotations

from typer.testing import CliRunner

from bench.billing import PRESETS, measure
from bench.cli import app


def test_small_preset_bills_every_record_once_and_invoices_it(postgres_url: str) -> None:
    shape = PRESETS["small"]
    result = measure(shape, postgres_url)

    assert result["ledger_balanced"] is True
    assert result["double_billed"] == 0
    assert result["unrated_records"] == 0
    # Repeats were offered and dropped; late records arrived after the first pass and were rated by the second.
    assert result["offered_records"] > result["unique_records"] == result["stored_records"] == shape.records
    assert result["late_records"] > 0
    assert result["rate_passes"][1]["records"] == result["late_records"]
    assert result["unique_quantity_replica_s"] == result["charged_quantity_replica_s"]
    assert result["charged_quantity_replica_s"] == result["expected_quantity_replica_s"]
    # Every tenant got one invoice, and the invoices carry exactly what rating charged.
    rated = sum(run["amount_minor"].get("EUR", 0) for run in result["rate_passes"])
    assert result["invoices"] == result["invoices_issued"] == shape.tenants
    assert result["invoiced_charges"] == result["charges"]
    assert result["invoiced_subtotal_minor"] == result["charged_minor"] == rated > 0
    assert result["invoiced_total_minor"] == rated - result["invoiced_vouchers_and_credits_minor"]
    assert result["debt_minor"] > 0  # a third of the tenants ran past their small credit limit: recorded as debt
    assert result["usage_records_per_s"] > 0
    assert result["raw_insert_records_per_s"] > 0


def test_the_command_is_registered_with_its_options() -> None:
    result = CliRunner().invoke(app, ["bench", "billing", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--preset", "--tenants", "--slices", "--nodes", "--minutes", "--database-url", "--json"):
        assert option in result.output
