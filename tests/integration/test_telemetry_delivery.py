"""Telemetry is billed (verdict usage), so a control plane that is away must not lose it.

Before the fix the monitor subscribed at QoS 0 with a clean session: whatever an ingress reported while
the control plane restarted was gone, and those verdicts were never billed. Now the monitor's session
is persistent and acknowledges a message only after storing it, so the site broker keeps telemetry for
it, and a redelivered message is stored once.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session, select

from contracts import wire
from control_plane.models import UsageRecord
from tests.integration.cp_fixtures import ControlPlane, monitor_away
from tests.integration.test_cp_dashboard import _publish, _report
from tests.waiting import wait_until


def _verdict_records(cp: ControlPlane) -> list[UsageRecord]:
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        return list(session.exec(select(UsageRecord).where(UsageRecord.source == "verdicts")).all())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the broker's session is the subject
def test_telemetry_sent_while_the_control_plane_is_away_is_stored_once_when_it_returns(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = control_plane
    monitors: Any = cp.client.app.state.monitors  # type: ignore[attr-defined]
    # The control plane goes away (its monitor disconnects and does not come back on its own)...
    monitor_away(cp, monkeypatch)

    # ...while the ingress reports two windows of verdicts, one of them delivered twice.
    topic = wire.telemetry_topic("acme", "line-1", "t1-inspect")
    first, second = _report(30, 3, latency_ms=20), _report(12, 0, latency_ms=20)
    probe = _publish(cp, cp.a, topic, first)
    for payload in (second, second):
        probe.client.publish(topic, payload, qos=1).wait_for_publish(5)
    probe.close()
    assert _verdict_records(cp) == []

    monkeypatch.undo()  # it returns: the broker hands over what it kept for the monitor's session
    monitors.refresh()
    wait_until(lambda: len(_verdict_records(cp)) == 2, 20, "the kept telemetry to be stored")
    records = _verdict_records(cp)
    assert sorted(r.verdicts["pass"] + r.verdicts["fail"] for r in records) == [12, 30]
