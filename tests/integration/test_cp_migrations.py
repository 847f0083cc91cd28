"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command

from control_plane import db


def test_migrations_match_the_models(database_url: str) -> None:
    engine = db.make_engine(database_url)
    db.migrate(engine)
    db.migrate(engine)  # idempotent
    config = db.alembic_config(database_url)
    command.check(config)  # raises if autogenerate would write any operation
    engine.dispose()
