"""Who may write a database as a sink: PostgreSQL session advisory locks plus a fencing epoch.

Invariants:

- A sink named N writes only on a connection that holds the shared *database* lock
  (``LOCK_CLASS``, 0) and the exclusive *name* lock (``LOCK_CLASS``, ``name_key(N)``). So two
  instances of one sink name never write at once (the second is refused at start, one line).
- ``xchg db rebuild`` holds the database lock exclusively for its whole run (reset, its own sink,
  verification), so it excludes every sink of the database, of any name, and every sink excludes
  it: a rebuild never deletes rows or resets positions under a live sink.
- Session locks die with their connection: a SIGKILLed holder never blocks its successor.
- Each new holder bumps the name's epoch in ``sink_leases`` (a rebuild bumps every name's). A
  holder that lost its connection takes its locks back only if its epoch is unchanged; otherwise
  someone else held them meanwhile (a rebuild reset the positions, or another instance wrote),
  its in-memory positions are stale, and it stops with ``SinkFenced`` instead of writing.
- A lock held by an abandoned connection of this very process (the server has not noticed yet
  that the connection died) is recognised by its ``application_name`` and terminated, so a sink
  coming back from a network failure does not refuse itself.

``name_key``, ``refusal`` and ``own_sessions`` are pure; ``SinkLease`` is the I/O.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg

from connectors.timescale.errors import SinkFenced, SinkLocked

LOCK_CLASS = 0x786B736E  # "xksn": the two-key advisory lock space of the sink (the migrations use one-key locks)
DATABASE_KEY = 0


def name_key(name: str) -> int:
    """The second lock key of a sink name: stable across processes and versions, never 0."""
    return zlib.crc32(name.encode()) % 0x7FFFFFFF + 1


@dataclass(frozen=True)
class Holder:
    """A session holding one of the sink's advisory locks."""

    pid: int
    application_name: str
    client: str
    since: datetime | None
    key: int
    exclusive: bool
    consumer: str | None  # the sink name it leases, when known


def own_sessions(holders: Sequence[Holder], application_name: str) -> list[int]:
    """Backends holding a lock under this process's own ``application_name``: connections of
    this process that died without the server noticing yet, safe to terminate."""
    return sorted({h.pid for h in holders if h.application_name == application_name})


def _who(h: Holder) -> str:
    since = f" since {h.since.isoformat(timespec='seconds')}" if h.since else ""
    return f"session pid {h.pid} '{h.application_name}' from {h.client}{since}"


def refusal(name: str, role: Literal["sink", "rebuild"], holders: Sequence[Holder]) -> str:
    """The one-line reason a lock of ``name`` / the database was not granted, naming the holders."""
    if role == "rebuild":
        sinks = [h for h in holders if h.key != DATABASE_KEY or not h.exclusive]
        others = sinks or list(holders)
        names = sorted({h.consumer for h in others if h.consumer})
        shown = ", ".join(_who(h) for h in others[:3]) or "a session that has just ended"
        return (f"a sink is running on this database ({'sink ' + ', '.join(names) + ': ' if names else ''}{shown}): "
                "stop it before `xchg db rebuild`, which deletes rows and resets the stored positions under it")
    rebuilds = [h for h in holders if h.key == DATABASE_KEY and h.exclusive]
    if rebuilds:
        return (f"sink {name} cannot start: `xchg db rebuild` is running on this database ({_who(rebuilds[0])}); "
                "start the sink once it has finished")
    same = [h for h in holders if h.key == name_key(name)]
    shown = _who(same[0]) if same else "a session that has just ended"
    return (f"sink {name} is already running on this database ({shown}): one instance per sink name; "
            "stop it, or give this one another EXCHANGE_SINK_NAME")


class SinkLease:
    """The locks of one sink name (``role="sink"``) or of a rebuild (``role="rebuild"``, the
    database lock exclusively), on a connection of their own that the holder writes through.

    ``connection()`` returns the live connection, reconnecting and re-locking after a failure
    (``SinkLocked`` when someone else holds the locks, ``SinkFenced`` when someone else held them
    since); ``drop()`` forgets a broken connection; ``release()`` gives the locks up."""

    def __init__(self, dsn: str, name: str, role: Literal["sink", "rebuild"] = "sink", exclusive: bool = False,
                 statement_timeout_ms: int = 10_000, takeover_timeout_s: float = 15.0) -> None:
        self.dsn, self.name, self.role = dsn, name, role
        self.exclusive = exclusive or role == "rebuild"
        self.statement_timeout_ms = statement_timeout_ms
        self.takeover_timeout_s = takeover_timeout_s
        # Unique to this process (and this lease): how its own abandoned sessions are recognised.
        self.application_name = f"xchg-{role} {os.getpid()}@{socket.gethostname()[:24]} {uuid.uuid4().hex[:6]}"[:63]
        self.conn: psycopg.Connection[Any] | None = None
        self.epoch: int | None = None

    def connection(self) -> psycopg.Connection[Any]:
        conn = self.conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.drop()
        conn = psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=3, keepalives=1, keepalives_idle=5, keepalives_interval=2,
            keepalives_count=2, application_name=self.application_name,
            options=f"-c statement_timeout={self.statement_timeout_ms}")
        try:
            self._lock(conn)
            if self.epoch is None:
                self.epoch = self._bump(conn)
            else:
                self._check_epoch(conn)
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        return conn

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):  # a broken connection: nothing left to release
                conn.close()

    def release(self) -> None:
        """Give the locks up (closing the session releases them)."""
        self.drop()

    # -- locking ------------------------------------------------------------------------------------
    def _try(self, conn: psycopg.Connection[Any]) -> bool:
        if self.exclusive:
            row = conn.execute("select pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, DATABASE_KEY)).fetchone()
            return bool(row and row[0])
        row = conn.execute("select pg_try_advisory_lock_shared(%s, %s)", (LOCK_CLASS, DATABASE_KEY)).fetchone()
        if not (row and row[0]):
            return False
        row = conn.execute("select pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, name_key(self.name))).fetchone()
        if row and row[0]:
            return True
        conn.execute("select pg_advisory_unlock_shared(%s, %s)", (LOCK_CLASS, DATABASE_KEY))
        return False

    def _lock(self, conn: psycopg.Connection[Any]) -> None:
        deadline = time.monotonic() + self.takeover_timeout_s
        while not self._try(conn):
            holders = self._holders(conn)
            ghosts = own_sessions(holders, self.application_name)
            if not ghosts or time.monotonic() > deadline:
                raise SinkLocked(refusal(self.name, self.role, holders))
            for pid in ghosts:
                conn.execute("select pg_terminate_backend(%s)", (pid,))
            time.sleep(0.1)  # the terminated backend releases its locks as it exits

    @staticmethod
    def _holders(conn: psycopg.Connection[Any]) -> list[Holder]:
        return [Holder(*r) for r in conn.execute(
            "select l.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'), a.backend_start,"
            "       l.objid::int8, l.mode = 'ExclusiveLock', s.consumer"
            " from pg_locks l left join pg_stat_activity a on a.pid = l.pid"
            " left join sink_leases s on s.holder = a.application_name"
            " where l.locktype = 'advisory' and l.classid::int8 = %s and l.objsubid = 2 and l.granted"
            "   and l.pid <> pg_backend_pid()"
            "   and l.database = (select oid from pg_database where datname = current_database())"
            " order by a.backend_start", (LOCK_CLASS,))]

    def _bump(self, conn: psycopg.Connection[Any]) -> int:
        with conn.transaction():
            if self.role == "rebuild":  # every sink of the database that was cut off is stale now
                conn.execute("update sink_leases set epoch = epoch + 1")
            row = conn.execute(
                "insert into sink_leases (consumer, epoch, holder) values (%s, 1, %s) on conflict (consumer)"
                " do update set epoch = sink_leases.epoch + 1, holder = excluded.holder, acquired_at = now()"
                " returning epoch", (self.name, self.application_name)).fetchone()
        assert row is not None
        return int(row[0])

    def _check_epoch(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("select epoch from sink_leases where consumer = %s", (self.name,)).fetchone()
        now = int(row[0]) if row else None
        if now != self.epoch:
            raise SinkFenced(
                f"sink {self.name} lost its database connection and meanwhile another process held its lock "
                f"(epoch {now}, this process had {self.epoch}: a rebuild or another instance ran), so what this "
                "process holds in memory is stale: it stops; start it again to resume from the database")
