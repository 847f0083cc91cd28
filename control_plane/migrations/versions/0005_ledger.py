"""ledger: accounts, journal transactions and entries, and the database's own ledger invariants

The models describe the tables; what a model cannot say is added here as triggers:
- both databases refuse UPDATE and DELETE of journal transactions and entries (a correction is a
  reversing transaction);
- PostgreSQL checks at commit (a DEFERRABLE INITIALLY DEFERRED constraint trigger) that each journal
  transaction an INSERT touched sums to zero per currency. SQLite has no deferred triggers, so there
  ``control_plane.ledger_store.check_balanced`` runs the same SUM before the commit.
Autogenerate does not compare triggers. A later SQLite batch migration that rebuilds these tables must
create the triggers again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JOURNAL = ("journaltransaction", "journalentry")

PG_FUNCTIONS = [
    """
    CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'ledger rows in % are never changed or deleted; post a reversing transaction',
            TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
    END $$
    """,
    """
    CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE off record;
    BEGIN
        SELECT currency, SUM(amount_minor) AS total INTO off FROM journalentry
            WHERE transaction_id = NEW.transaction_id GROUP BY currency HAVING SUM(amount_minor) <> 0 LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'journal transaction % does not balance: off by % minor units of %',
                NEW.transaction_id, off.total, off.currency USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
]


def _create_tables() -> None:
    op.create_table(
        "account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.Column("credit_limit_minor", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_account_tenant_id", "account", ["tenant_id"], unique=False)
    op.create_table(
        "journaltransaction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("memo", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("reverses_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["reverses_id"], ["journaltransaction.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_journaltransaction_idempotency_key", "journaltransaction", ["idempotency_key"], unique=True)
    op.create_table(
        "journalentry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.ForeignKeyConstraint(["transaction_id"], ["journaltransaction.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_journalentry_account_id", "journalentry", ["account_id"], unique=False)
    op.create_index("ix_journalentry_transaction_id", "journalentry", ["transaction_id"], unique=False)


def upgrade() -> None:
    _create_tables()
    if op.get_bind().dialect.name == "postgresql":
        for function in PG_FUNCTIONS:
            op.execute(function)
        for table in JOURNAL:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
            )
        op.execute(
            "CREATE CONSTRAINT TRIGGER journalentry_balanced AFTER INSERT ON journalentry "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced()"
        )
    else:
        for table in JOURNAL:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} BEGIN "
                    f"SELECT RAISE(ABORT, 'ledger rows in {table} are never changed or deleted; "
                    "post a reversing transaction'); END"
                )


def downgrade() -> None:
    # Dropping a table drops its triggers; the PostgreSQL functions go after them.
    op.drop_index("ix_journalentry_transaction_id", table_name="journalentry")
    op.drop_index("ix_journalentry_account_id", table_name="journalentry")
    op.drop_table("journalentry")
    op.drop_index("ix_journaltransaction_idempotency_key", table_name="journaltransaction")
    op.drop_table("journaltransaction")
    op.drop_index("ix_account_tenant_id", table_name="account")
    op.drop_table("account")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION ledger_check_balanced()")
        op.execute("DROP FUNCTION ledger_refuse_change()")
