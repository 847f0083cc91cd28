"""README examples are real commands: run the control-plane walkthrough and its money part exactly as written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge_node.broker import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str) -> str:
    """The ```sh blocks that follow ``<!-- readme-test: marker -->`` in README.md, in order, as one script."""
    blocks = re.findall(rf"<!-- readme-test: {marker} -->\n```sh\n(.*?)```", README.read_text(), re.S)
    assert blocks, f"README.md has no block marked readme-test: {marker}"
    return "\n".join(blocks)


MONEY_STARTS = "=== readme money blocks ==="


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str]:
    """The control-plane walkthrough, then the money blocks with its variables (one run: the money part
    needs the walkthrough's running slice, and starting Ray twice would double the test's time)."""
    script = f"{readme_block('control-plane')}\necho '{MONEY_STARTS}'\n{readme_block('money')}"
    tmp_path = tmp_path_factory.mktemp("readme")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CP_PORT": str(free_port()),
        "BROKER_PORT": str(free_port()),
    }
    log = tmp_path / "walkthrough.log"
    with log.open("w") as sink:  # a file, not a pipe: the background services keep their stdout open
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, start_new_session=True,
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            process.wait(timeout=400)
        finally:
            _stop_group(process.pid)
    return process.returncode, log.read_text()


def test_control_plane_walkthrough_runs_as_written(walkthrough: tuple[int, str]) -> None:
    code, output = walkthrough
    before, reached, _ = output.partition(MONEY_STARTS)
    assert reached, f"the walkthrough stopped (exit {code}):\n{before[-4000:]}"
    assert '"verdict":' in before, before[-4000:]  # mosquitto_rr printed the robot's verdict
    assert '"max_replicas":2' in before, before[-4000:]  # the scale call answered the new bounds
    assert "mosquitto_pub -h 127.0.0.1" in before  # factory IT's ready-to-run example was printed
    assert '"shortfall_cost_per_hour"' in before and '"floor_now"' in before  # the order plan and its floors
    assert '"kind":"manual"' in before  # the scale call's event, with its reason


def test_money_blocks_run_as_written(walkthrough: tuple[int, str]) -> None:
    """What each role sees: a quote to confirm, the lease bought at it, spend so far, the voucher's balance."""
    code, output = walkthrough
    _, reached, money = output.partition(MONEY_STARTS)
    assert reached and code == 0, output[-4000:]
    answers = _json_answers(money)
    quote = next(a for a in answers if isinstance(a, dict) and "examples" in a)
    assert quote["sku"] == "inspect-monthly" and quote["examples"]["month"] == "49.00 EUR" and quote["price_id"]
    lease = next(a for a in answers if isinstance(a, dict) and "running" in a)
    assert (lease["sku"], lease["price_id"], lease["running"]) == ("inspect-monthly", quote["price_id"], True)
    assert "HTTP 201" in money
    voucher = next(a for a in answers if isinstance(a, dict) and "funder" in a and "balance" in a)
    assert voucher["balance"]["formatted"] == "100.00 EUR"
    summary = [a for a in answers if isinstance(a, dict) and "forecast_month_end" in a][-1]
    assert summary["spent"]["minor"] >= 4900 and summary["budget"]["text"] == "300.00 EUR"  # the month's fee
    assert summary["funds"]["vouchers"]["text"] == "75.50 EUR"  # the voucher paid half of the fee
    catalogue = [a for a in answers if isinstance(a, list) and a and isinstance(a[0], dict) and "sku" in a[0]]
    assert len(catalogue) == 2 and {p["sku"] for p in catalogue[-1]} >= {"inspect-monthly"}  # factory IT's read
    revenue = next(a for a in answers if isinstance(a, dict) and "receivables" in a)
    sold = {p["sku"]: p["this_month"]["minor"] for p in revenue["products"]}
    assert sold["inspect-monthly"] >= 4900, revenue
    assert "inspect-monthly" in money.rpartition("tenant_id,tenant,product_sku")[2]  # the funder's CSV report


def _json_answers(text: str) -> list[Any]:
    """Every JSON object or list in ``text`` in order (curl prints answers without a newline after them)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (start := min((i for i in (text.find("{", at), text.find("[", at)) if i >= 0), default=-1)) >= 0:
        try:
            value, at = decoder.raw_decode(text, start)
            found.append(value)
        except json.JSONDecodeError:
            at = start + 1
    return found


def _stop_group(pgid: int) -> None:
    """The walkthrough leaves the control plane, broker and agent in the background: stop them."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
