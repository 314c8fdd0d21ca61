"""One ``orders.commands`` partition's engines: the deterministic unit of ownership and recovery.

``PartitionState.process`` is the single function that turns one input record into engine
events, used both by the live processor and by recovery's silent replay, so the two can never
disagree. Its result depends only on the record (value bytes, offset, log-append timestamp) and
the state: decoding failures and unknown markets become dead letters (no state change); business
rejections are engine events.

Invariants:
- ``next_offset`` is the offset of the first input record not yet reflected in the state.
- ``commands`` counts records consumed (dead letters included) since the partition began.
- A snapshot (``EngineSnapshot``) captures exactly ``(next_offset, commands, every engine)`` at a
  command boundary; ``state_hash`` covers all of it.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any

from streams.domain.commands import Command
from streams.domain.events import Event
from streams.engine.errors import SnapshotError
from streams.engine.matcher import Engine
from streams.markets import MarketRegistry
from streams.runtime.failures import StateMismatch
from streams.runtime.records import RecordError, command_from_record
from streams.serde.codec import Codec, DecodeError
from streams.serde.topics import ORDERS_COMMANDS

# Once documented as "every market" (a global halt), which one record cannot be: it lands in one
# partition and cannot be ordered against the other partitions' orders. It has its own reason
# so that a producer still sending it learns what to do instead.
WILDCARD_MARKET = "*"
WILDCARD_DETAIL = ("market '*' is not supported: halt every market with one SetMarketState per market "
                   "(xchg market halt --all), each ordered with that market's orders")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str


@dataclass(slots=True)
class Processed:
    """What one input record did: events of one market, or a dead letter."""

    offset: int
    market: str | None = None
    command: Command | None = None
    events: list[Event] = field(default_factory=list)
    dead: DeadLetter | None = None


class PartitionState:
    def __init__(self, partition: int, registry: MarketRegistry, codec: Codec) -> None:
        self.partition = partition
        self.registry = registry
        self.codec = codec
        self.engines: dict[str, Engine] = {}
        self.next_offset = 0
        self.commands = 0

    def engine(self, market: str) -> Engine:
        engine = self.engines.get(market)
        if engine is None:
            engine = self.engines[market] = Engine(self.registry.get(market).spec())
        return engine

    def process(self, offset: int, value: bytes | None, timestamp: int) -> Processed:
        """Apply one input record. Never raises for bad input; raises only on invariant breaches."""
        self.next_offset = offset + 1
        self.commands += 1
        if value is None:
            return Processed(offset, dead=DeadLetter("empty", "record has no value"))
        try:
            record = self.codec.decode(ORDERS_COMMANDS, value)
            market, command = command_from_record(record, timestamp)
        except DecodeError as error:
            return Processed(offset, dead=DeadLetter(error.reason, str(error)))
        except RecordError as error:
            return Processed(offset, dead=DeadLetter(error.reason, str(error)))
        except (KeyError, ValueError) as error:
            return Processed(offset, dead=DeadLetter("invalid_command", str(error)))
        if market not in self.registry:
            if market == WILDCARD_MARKET:
                return Processed(offset, market=market, dead=DeadLetter("market_wildcard", WILDCARD_DETAIL))
            return Processed(offset, market=market, dead=DeadLetter("unknown_market", f"market {market!r}"))
        events = self.engine(market).apply(command)
        return Processed(offset, market, command, events)

    # -- snapshots --------------------------------------------------------------------------------
    def state_hash(self) -> str:
        digest = hashlib.sha256(f"{self.partition}:{self.next_offset}:{self.commands}".encode())
        for market in sorted(self.engines):
            digest.update(f"|{market}:{self.engines[market].state_hash()}".encode())
        return digest.hexdigest()

    def snapshot_record(self) -> dict[str, Any]:
        """The ``engine.snapshots`` value; engine states are zlib-compressed canonical bytes."""
        markets = []
        digest = hashlib.sha256(f"{self.partition}:{self.next_offset}:{self.commands}".encode())
        for market in sorted(self.engines):
            engine = self.engines[market]
            raw = engine.snapshot()
            market_hash = hashlib.sha256(raw).hexdigest()
            digest.update(f"|{market}:{market_hash}".encode())
            markets.append({"market": market, "seq": engine.seq, "trade_id": engine.trade_id,
                            "state_hash": market_hash, "state": zlib.compress(raw, 1)})
        return {"partition": self.partition, "next_offset": self.next_offset, "commands": self.commands,
                "markets": markets, "state_hash": digest.hexdigest()}

    @classmethod
    def from_snapshot(cls, record: dict[str, Any], registry: MarketRegistry, codec: Codec) -> PartitionState:
        state = cls(record["partition"], registry, codec)
        state.next_offset = record["next_offset"]
        state.commands = record["commands"]
        for entry in record["markets"]:
            where = (f"snapshot of partition {state.partition} at offset {state.next_offset}, "
                     f"market {entry['market']}")
            try:
                raw = zlib.decompress(entry["state"])
            except zlib.error as error:
                raise StateMismatch(f"{where}: state does not decompress ({error})") from None
            # The state hash is the sha256 of the canonical bytes, and restore() checks that the
            # bytes are canonical: hashing the bytes here is the same check without re-encoding.
            actual = hashlib.sha256(raw).hexdigest()
            if actual != entry["state_hash"]:
                raise StateMismatch(f"{where}: recorded hash {entry['state_hash']}, recomputed {actual}")
            try:
                state.engines[entry["market"]] = Engine.restore(registry.get(entry["market"]).spec(), raw)
            except SnapshotError as error:
                raise StateMismatch(f"{where}: {error}") from None
        actual = state.state_hash()
        if actual != record["state_hash"]:
            raise StateMismatch(f"snapshot of partition {state.partition} at offset {state.next_offset}: "
                                f"recorded hash {record['state_hash']}, recomputed {actual}")
        return state
