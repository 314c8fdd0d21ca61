"""Versioned schema migrations, applied in order by ``xchg db migrate``; re-running changes nothing.

Files are ``NNN_name.sql`` (both storage paths), or ``NNN_name.plain.sql`` and
``NNN_name.timescale.sql`` (one is chosen by whether the TimescaleDB extension is available).
Each applied version is recorded in ``schema_migrations`` with the file's checksum; a changed file
of an applied version is an error (write a new migration instead). A session advisory lock makes
concurrent runs safe.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from streams.errors import OperatorError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
LOCK_KEY = 0x78636867  # "xchg"
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+?)(?:\.(plain|timescale))?\.sql$")


class MigrationError(OperatorError, RuntimeError):
    """A migration failed or an applied migration's file changed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def storage_mode(conn: psycopg.Connection) -> str:
    """``timescale`` when the extension is installed or installable, else ``plain``."""
    row = conn.execute("select 1 from pg_available_extensions where name = 'timescaledb'").fetchone()
    return "timescale" if row else "plain"


def discover(mode: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    chosen: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"unexpected migration file name {path.name}")
        version, name, variant = int(match.group(1)), match.group(2), match.group(3)
        if variant not in (None, mode):
            continue
        if version in chosen:
            raise MigrationError(f"two migrations with version {version:03d}")
        chosen[version] = Migration(version, name, path)
    return [chosen[v] for v in sorted(chosen)]


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> tuple[str, list[Migration]]:
    """Apply pending migrations; returns the storage mode and the migrations applied now."""
    applied_now: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            mode = storage_mode(conn)
            if mode == "timescale":
                conn.execute("create extension if not exists timescaledb")
            conn.execute(
                "create table if not exists schema_migrations (version int primary key, name text not null,"
                " checksum text not null, mode text not null, applied_at timestamptz not null default now())"
            )
            done = {row[0]: row[1] for row in conn.execute("select version, checksum from schema_migrations")}
            for migration in discover(mode, directory):
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.path.name} changed after it was applied; add a new one instead"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.path.read_text())  # type: ignore[call-overload,unused-ignore]
                        conn.execute(
                            "insert into schema_migrations (version, name, checksum, mode) values (%s, %s, %s, %s)",
                            (migration.version, migration.name, migration.checksum, mode),
                        )
                except psycopg.Error as error:
                    raise MigrationError(f"{migration.path.name}: {error.diag.message_primary or error}") from None
                applied_now.append(migration)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))
    return mode, applied_now
