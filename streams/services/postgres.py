"""PostgreSQL 15 from the Debian binaries as a project-owned cluster on its own port and data dir.

``initdb`` refuses to run as root, so when the launcher runs as root (CI does) every server
command runs as the ``postgres`` system user that the Debian package creates; the data folder is
then owned by that user. Local (Unix-socket) connections use ``trust`` and the socket lives in a
folder only the cluster's owner can enter; TCP connections need a password (scram-sha-256).

Roles: ``pg_writer_user`` owns the ``xchg`` schema and writes; ``pg_analyst_user`` may only read
(SELECT through default privileges, and ``default_transaction_read_only``).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from streams.services.errors import ServiceError
from streams.settings import Settings

SYSTEM_USER = "postgres"
SUPERUSER = "postgres"


class PostgresCluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bin = settings.pg_bin_dir
        self.home = self._home()
        self.data = self.home / "data"
        self.socket_dir = self.home / "socket"
        self.log_file = self.home / "postgres.log"

    # -- layout -----------------------------------------------------------------------------------
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _home(self) -> Path:
        preferred = self.settings.runtime_dir / "postgres"
        if not self._as_root() or _reachable_by(preferred, SYSTEM_USER):
            return preferred
        # The postgres user cannot reach the checkout (a private parent folder): keep the cluster
        # in a folder of its own, named after the checkout so two checkouts never share one.
        digest = hashlib.sha256(str(self.settings.runtime_dir.resolve()).encode()).hexdigest()[:10]
        return Path("/var/lib/postgresql") / f"xchg-{digest}"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        exe = self.bin / tool
        if not exe.exists():
            raise ServiceError(
                f"{exe} not found: install PostgreSQL 15 (Debian: apt-get install -y postgresql-15) "
                "or set EXCHANGE_PG_BIN_DIR"
            )
        argv = [str(exe), *args]
        if self._as_root():
            argv = ["runuser", "-u", SYSTEM_USER, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ServiceError(f"postgres: {tool} failed: {detail[-1] if detail else result.returncode}")
        return result

    def _prepare_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        if self._as_root():
            entry = pwd.getpwnam(SYSTEM_USER)
            for path in (self.home, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    # -- lifecycle --------------------------------------------------------------------------------
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialised():
            return False
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def up(self) -> None:
        self._prepare_dirs()
        if not self.initialised():
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth-local=trust",
                      "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale")
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    "\n# xchg: project-owned cluster\n"
                    f"port = {self.settings.pg_port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.socket_dir}'\n"
                    "shared_buffers = 256MB\n"
                    "max_connections = 100\n"
                    "log_min_duration_statement = 500\n"
                )
        if not self.running():
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60",
                      "-o", f"-p {self.settings.pg_port}", "start")
        self.bootstrap_roles()

    def down(self, mode: str = "fast") -> bool:
        if not self.running():
            return False
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        return True

    def reset(self) -> None:
        if self.running():
            raise ServiceError("stop PostgreSQL first (`xchg infra down`)")
        shutil.rmtree(self.home, ignore_errors=True)

    # -- access -----------------------------------------------------------------------------------
    def admin_conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.settings.pg_port} user={SUPERUSER} dbname={dbname}"

    def version(self) -> str | None:
        try:
            with psycopg.connect(self.admin_conninfo(), connect_timeout=3) as conn:
                row = conn.execute("show server_version").fetchone()
        except psycopg.Error:
            return None
        return str(row[0]) if row else None

    def bootstrap_roles(self) -> None:
        """Create the database and the writer and analyst roles; safe to run any number of times."""
        s = self.settings
        writer, analyst = s.pg_writer_user, s.pg_analyst_user
        with psycopg.connect(self.admin_conninfo(), autocommit=True) as conn:
            for role, password in ((writer, s.pg_writer_password), (analyst, s.pg_analyst_password)):
                exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
                verb = "alter" if exists else "create"
                conn.execute(sql.SQL(verb + " role {} login password {}").format(
                    sql.Identifier(role), sql.Literal(password.get_secret_value())))
            conn.execute(sql.SQL("alter role {} set default_transaction_read_only = on").format(
                sql.Identifier(analyst)))
            if not conn.execute("select 1 from pg_database where datname = %s", (s.pg_database,)).fetchone():
                conn.execute(sql.SQL("create database {} owner {}").format(
                    sql.Identifier(s.pg_database), sql.Identifier(writer)))
        with psycopg.connect(self.admin_conninfo(s.pg_database), autocommit=True) as conn:
            conn.execute("revoke create on schema public from public")
            conn.execute(sql.SQL("create schema if not exists xchg authorization {}").format(sql.Identifier(writer)))
            conn.execute(sql.SQL("grant usage on schema xchg to {}").format(sql.Identifier(analyst)))
            conn.execute(sql.SQL("grant select on all tables in schema xchg to {}").format(sql.Identifier(analyst)))
            conn.execute(sql.SQL("alter default privileges for role {} in schema xchg grant select on tables to {}")
                         .format(sql.Identifier(writer), sql.Identifier(analyst)))
            conn.execute(sql.SQL("alter role {} set search_path = xchg, public").format(sql.Identifier(writer)))
            conn.execute(sql.SQL("alter role {} set search_path = xchg, public").format(sql.Identifier(analyst)))


def _reachable_by(path: Path, user: str) -> bool:
    """Whether ``user`` can traverse every existing ancestor of ``path`` (needed to own a data dir)."""
    entry = pwd.getpwnam(user)
    probe = path
    while not probe.exists():
        probe = probe.parent
    for folder in [probe, *probe.parents]:
        st = folder.stat()
        if st.st_uid == entry.pw_uid:
            mode_ok = bool(st.st_mode & 0o100)
        elif st.st_gid == entry.pw_gid:
            mode_ok = bool(st.st_mode & 0o010)
        else:
            mode_ok = bool(st.st_mode & 0o001)
        if not mode_ok:
            return False
    return True
