"""The control plane's billing pass, run every ``billing_period_s`` (and by tests with their own clock).

In this order, each step committed on its own so one failing does not undo the others: rate every
usage record not rated yet (``billing.rate_pending``), credit contributors for the bank charges among
them (``bank.credit_contributors``), return expired vouchers' balances to their
funders (``vouchers.expire_due``), and on or after the 1st close the month before for every tenant
(``invoices.close_due``). Every step is idempotent, so a pass interrupted anywhere is finished by the next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from control_plane import bank, billing, invoices, vouchers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pass:
    charges: int
    credits: int  # contributors' credits posted from bank charges
    vouchers_expired: int
    invoices: list[int]  # invoice numbers issued


def run(session: Session, now: datetime) -> Pass:
    rated = billing.run_due(session, now)
    credited = bank.credit_contributors(session, now)
    session.commit()
    expired = vouchers.expire_due(session, now)
    session.commit()
    issued = invoices.close_due(session, now)
    session.commit()
    if expired or issued:
        log.info("billing pass: %s vouchers expired, invoices %s issued", expired, [i.number for i in issued])
    return Pass(rated.charges, credited, expired, [i.number for i in issued])
