"""Why a stream process stops: the failures after which it must exit non-zero (for a process
manager to restart it, or an operator to act), each with a message written for the operator.

Kept free of imports so that the CLI can map them to one-line errors without loading Kafka
clients or codecs (``streams/cli/errors.py``).
"""

from __future__ import annotations

from streams.errors import StreamStopped


class ClientFatal(StreamStopped, RuntimeError):
    """A Kafka client can no longer do its work (fenced static member, fatal client error, no
    authorisation): the process must exit non-zero and be restarted, never idle on."""


class StateMismatch(StreamStopped, RuntimeError):
    """A recomputed state hash differs from a recorded one: the state is corrupt (fail fast)."""


class RecoveryError(StreamStopped, RuntimeError):
    """Recovery cannot produce a correct state (e.g. the input it needs was deleted by retention)."""


class OutputRefused(StreamStopped, RuntimeError):
    """The outputs of a command cannot be encoded or are refused by the broker. The engine
    validates every command before it changes any state, so this is an invariant breach: the
    process stops once, naming partition, offset and command id, instead of looping."""
