"""Per-connection decisions: which subscriptions a connection holds, and its request rate.

Pure: the clock is an argument (monotonic seconds), so every decision is testable without a
server. The ``limits`` package was considered for the rate limit; a sliding one-second window of
a connection's own request times is smaller, needs no shared storage (each connection is owned by
one event loop) and takes the clock as an argument, which ``limits``' storages do not.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from connectors.websocket.protocol import PUBLIC_CHANNELS, SubscriptionKey

FLOOD_FACTOR = 5  # past this many times the rate within one second, the connection is closed


class RateVerdict(Enum):
    ALLOW = "allow"
    LIMITED = "limited"  # answer rate_limited, do not act on the request
    FLOOD = "flood"  # close the connection (4029)


class RequestRate:
    """At most ``per_second`` allowed requests in any window of one second; the requests refused
    count too, so that a flood is detected (``FLOOD_FACTOR`` times ``per_second`` in one second)."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._allowed: deque[float] = deque()
        self._all: deque[float] = deque()

    def check(self, now: float) -> RateVerdict:
        for times in (self._allowed, self._all):
            while times and times[0] <= now - 1.0:
                times.popleft()
        self._all.append(now)
        if len(self._all) > FLOOD_FACTOR * self.per_second:
            return RateVerdict.FLOOD
        if len(self._allowed) >= self.per_second:
            return RateVerdict.LIMITED
        self._allowed.append(now)
        return RateVerdict.ALLOW


class Subscriptions:
    """The subscriptions of one connection: key → book depth (None: whole book or not a book).
    Invariant: at most ``limit`` keys."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.keys: dict[SubscriptionKey, int | None] = {}

    def add(self, key: SubscriptionKey, depth: int | None) -> str | None:
        """None when added, else the error code (already_subscribed, too_many_subscriptions)."""
        if key in self.keys:
            return "already_subscribed"
        if len(self.keys) >= self.limit:
            return "too_many_subscriptions"
        self.keys[key] = depth
        return None

    def remove(self, key: SubscriptionKey) -> str | None:
        if self.keys.pop(key, "missing") == "missing":
            return "not_subscribed"
        return None

    def private_keys(self) -> list[SubscriptionKey]:
        return [k for k in self.keys if k.channel not in PUBLIC_CHANNELS]

    def public_markets(self) -> list[str]:
        """Markets with at least one public subscription, sorted (the heartbeat's keys)."""
        return sorted({k.market for k in self.keys if k.market is not None})

    def __len__(self) -> int:
        return len(self.keys)


class ConnectionsPerAddress:
    """Open connections per client address; ``admit`` refuses past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self.open.get(address, 0)
        if count >= self.limit:
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.open.get(address, 0) - 1
        if count > 0:
            self.open[address] = count
        else:
            self.open.pop(address, None)
