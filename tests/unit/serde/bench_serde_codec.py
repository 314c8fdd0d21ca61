"""Codec speed per record: ``.venv/bin/python tests/unit/serde/bench_serde_codec.py`` (not a test).

For one realistic value of each topic, prints the best mean µs per ``Codec.encode`` and
``Codec.decode`` over 15 interleaved rounds of 5000 calls, in single-object framing, Confluent
framing (in-memory ``mock://`` registry, id cached after the first call) and single-object with
``strict=True``; and, as the floor, bare ``fastavro.schemaless_writer``/``schemaless_reader`` on
the same pre-parsed schema (no framing). The best of many rounds filters out a busy machine.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from fastavro import schemaless_reader, schemaless_writer
from serde_samples import BATCH, BOOK_DELTA, CANDLE, PLACE, STATE_HASH, TRADE, TRADE_EXECUTED

from streams.serde.codec import Codec
from streams.serde.topics import TOPICS

CASES = [
    ("orders.commands", PLACE),
    ("orders.events", TRADE_EXECUTED),
    ("trades", TRADE),
    ("md.book", BOOK_DELTA),
    ("md.candles", CANDLE),
    ("engine.hashes", STATE_HASH),
    ("settlement.batches", BATCH),
]
ROUNDS, CALLS = 15, 5000


def best_us(fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            best[name] = min(best[name], timeit.timeit(fn, number=CALLS) / CALLS * 1e6)
    return best


def main() -> None:
    codecs = {
        "single-object": Codec(),
        "confluent": Codec(schema_registry_url="mock://bench"),
        "strict": Codec(strict=True),
    }
    print(
        f"{'topic':20} {'bytes':>5}  " + "  ".join(f"{n + ' enc/dec µs':>24}" for n in (*codecs, "fastavro"))
    )
    for topic, record in CASES:
        parsed = codecs["single-object"].catalog.current(TOPICS[topic].value_record or "").parsed
        fns: dict[str, Callable[[], Any]] = {}
        for label, codec in codecs.items():
            data = codec.encode(topic, record)
            assert codec.decode(topic, data) == record
            fns[f"{label}/enc"] = partial(codec.encode, topic, record)
            fns[f"{label}/dec"] = partial(codec.decode, topic, data)

        def raw_enc(p: Any = parsed, r: Any = record) -> bytes:
            buf = BytesIO()
            schemaless_writer(buf, p, r)
            return buf.getvalue()

        body = raw_enc()
        fns["fastavro/enc"] = raw_enc

        def raw_dec(p: Any = parsed, b: bytes = body) -> Any:
            return schemaless_reader(
                BytesIO(b), p, None, return_record_name=True, return_record_name_override=True
            )

        fns["fastavro/dec"] = raw_dec
        best = best_us(fns)
        size = len(codecs["single-object"].encode(topic, record))
        cells = [f"{best[n + '/enc']:10.2f} / {best[n + '/dec']:10.2f}" for n in (*codecs, "fastavro")]
        print(f"{topic:20} {size:5}  " + "  ".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
