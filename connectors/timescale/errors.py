"""Errors of the sink and of ``xchg db rebuild`` written for the operator: each message is one line
that says what was found and what to do; the CLI prints it as ``error: ...`` and exits 1.

And which failures the sink retries: ``is_transient`` is true for a failure of the database
connection or server (``psycopg.OperationalError``/``InterfaceError``, except the data classes
``DATA_SQLSTATE_CLASSES``) and for an unacknowledged dead letter (``DeadLetterUnacknowledged``);
the sink retries those with backoff, its circuit open, and never skips the batch. A data error
(``is_data_error``) is about a value: no retry cures it, the row goes to the dead letters.
"""

from __future__ import annotations

import psycopg

from streams.errors import OperatorError


class SinkError(OperatorError, RuntimeError):
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


class DeadLetterUnacknowledged(SinkError):
    """The dead-letter topic did not acknowledge every rejected record of a batch within the flush
    timeout. The batch's transaction is rolled back (its offsets are not stored) and the batch is
    retried like a database outage (``is_transient``): a record is never dropped unrecorded."""


# SQLSTATE classes of a value the database refuses whatever the retry: 22 data exception, 23
# integrity constraint, 54 program limit exceeded (e.g. an index row too large). Class 54 is a
# psycopg OperationalError, which otherwise reads as an outage: such a row was retried for ever.
# Data failures go to the dead letters row by row; only the rest of TRANSIENT is an outage.
DATA_SQLSTATE_CLASSES = ("22", "23", "54")
DATA_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded)
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, DeadLetterUnacknowledged)


def is_data_error(error: BaseException) -> bool:
    """True for an error about a value, which no retry cures (``DATA_SQLSTATE_CLASSES``)."""
    return isinstance(error, psycopg.Error) and (error.sqlstate or "")[:2] in DATA_SQLSTATE_CLASSES


def is_transient(error: BaseException) -> bool:
    """True for a failure that a retry after a pause may cure: the database connection or server,
    or the dead-letter topic not acknowledging."""
    return isinstance(error, TRANSIENT) and not is_data_error(error)
