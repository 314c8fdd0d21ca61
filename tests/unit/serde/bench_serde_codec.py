"""Codec speed per record: ``.venv/bin/python tests/unit/serde/bench_serde_codec.py`` (not a test).

Prints the best-of-5 mean µs per encode and per decode for one realistic value of each topic, in
both framings (Confluent through the in-memory ``mock://`` registry, ids cached after first use).
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from serde_samples import BATCH, BOOK_DELTA, CANDLE, PLACE, STATE_HASH, TRADE, TRADE_EXECUTED

from streams.serde.codec import Codec

CASES = [
    ("orders.commands", PLACE),
    ("orders.events", TRADE_EXECUTED),
    ("trades", TRADE),
    ("md.book", BOOK_DELTA),
    ("md.candles", CANDLE),
    ("engine.hashes", STATE_HASH),
    ("settlement.batches", BATCH),
]


def per_call_us(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    codecs = {
        "single-object": Codec(),
        "confluent": Codec(schema_registry_url="mock://bench"),
        "single-object strict": Codec(strict=True),
    }
    print(f"{'topic':20} {'framing':21} {'bytes':>5} {'encode µs':>10} {'decode µs':>10}")
    for topic, record in CASES:
        for label, codec in codecs.items():
            data = codec.encode(topic, record)
            assert codec.decode(topic, data) == record
            enc = per_call_us(lambda c=codec, t=topic, r=record: c.encode(t, r), 20_000)
            dec = per_call_us(lambda c=codec, t=topic, d=data: c.decode(t, d), 20_000)
            print(f"{topic:20} {label:21} {len(data):5} {enc:10.2f} {dec:10.2f}")


if __name__ == "__main__":
    main()
