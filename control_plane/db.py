"""Database engine, migrations and the per-request session.

SQLite (the embedded default) runs in WAL mode with a busy timeout so the API
and background loops can write concurrently; PostgreSQL is used as is. The
database file is created 0600 before SQLite opens it (SQLite gives its -wal and
-shm files the database file's mode), whatever the umask. The
schema is owned by Alembic (``control_plane/migrations``): ``migrate`` brings
any database to the latest revision and runs on every start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

log = logging.getLogger(__name__)
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin on every start

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20, pool_timeout_s: float = 30.0) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and foreign keys; PostgreSQL a connection pool
    of ``pool_size`` (+ ``max_overflow`` under load; a request waits ``pool_timeout_s`` for one)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_file(Path(path), companions=("-wal", "-shm", "-journal"))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow,
                         pool_timeout=pool_timeout_s)  # fmt: skip


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) 0700, and make it 0700 if it exists: it holds only our data."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def private_file(path: Path, companions: tuple[str, ...] = ()) -> Path:
    """Create ``path`` empty and 0600 if missing (its new parents 0700); make it and its companions 0600."""
    missing = [p for p in path.parents if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in companions)):
        if file.exists():
            file.chmod(0o600)
    return path


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest schema (idempotent)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    log.info("database schema is at the newest revision (%s)", engine.url.render_as_string(hide_password=True))


def sessions(engine: Engine) -> Iterator[Session]:
    """One session per request; committed by the route, rolled back on error."""
    with Session(engine) as session:
        yield session
