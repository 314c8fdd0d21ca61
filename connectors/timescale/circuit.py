"""The sink's database circuit as a pure state machine (the sink logs and exports its transitions).

closed ──failure──► open ──retry──► half-open ──failure──► open
                                        └──success *with a round trip*──► closed

Invariant: the circuit closes only after a statement reached the database and came back. An
operation that succeeded without touching the database (a cached connection the server has not
been asked anything on yet) proves nothing about it, so it leaves an open circuit open; the sink
therefore pings before an operation whenever the circuit is not closed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = 0, 1, 2


@dataclass(frozen=True)
class Transition:
    previous: int
    state: int


class Circuit:
    """Thread-safe: the main thread (preparing) and the writer thread share one circuit."""

    def __init__(self) -> None:
        self.state = CLOSED
        self._lock = threading.Lock()

    def _move(self, state: int) -> Transition | None:
        with self._lock:
            if state == self.state:
                return None
            previous, self.state = self.state, state
            return Transition(previous, state)

    def failure(self) -> Transition | None:
        """A database operation failed (connection lost, server down, timeout)."""
        return self._move(OPEN)

    def retrying(self) -> Transition | None:
        """A retry is about to be attempted after a failure."""
        with self._lock:
            if self.state != OPEN:
                return None
            self.state = HALF_OPEN
            return Transition(OPEN, HALF_OPEN)

    def success(self, round_trip: bool) -> Transition | None:
        """An operation succeeded; ``round_trip`` says whether it is known to have reached the
        database. Only then does an open or half-open circuit close."""
        if not round_trip:
            return None
        return self._move(CLOSED)
