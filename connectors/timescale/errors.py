"""Errors of the sink and of ``xchg db rebuild`` written for the operator: each message is one line
that says what was found and what to do; the CLI prints it as ``error: ...`` and exits 1."""

from __future__ import annotations


class SinkError(RuntimeError):
    """The sink or the rebuild cannot go on; the message is for the operator (one line)."""


class StreamMismatch(SinkError):
    """The database holds rows or positions of another stream (another namespace, Kafka cluster or
    incarnation of a topic) than the one this process reads."""


class SinkLocked(SinkError):
    """Another process holds the lock this one needs (a sink of the same name, or a rebuild)."""


class SinkFenced(SinkError):
    """This process lost its lock for a while and another holder ran meanwhile: its in-memory
    positions are stale, so it must stop (a restart resumes from the database)."""


class RecordConflict(SinkError):
    """A record has the key of a stored row but other values: not a duplicate, and never skipped."""


class RebuildError(SinkError):
    """``xchg db rebuild`` refused to start or could not read what it must compare."""


class SinkStopping(SinkError):
    """A stop signal arrived while the sink was retrying a database outage: it stops at once
    instead of waiting for the database (what it had not committed is read again after a restart)."""
