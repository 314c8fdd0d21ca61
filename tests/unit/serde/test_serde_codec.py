"""Codec: round trips in both framings, exact header bytes, typed errors, old-writer data."""

from __future__ import annotations

import copy
import json
import random
import struct
from decimal import Decimal
from io import BytesIO
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import schemaless_writer
from serde_samples import BATCH, CANDLE, PLACE, SAMPLES, STATE_HASH, TRADE, TRADE_EXECUTED
from test_serde_catalog import spec_fingerprint64

from streams.serde.catalog import SchemaCatalog, SchemaVersion
from streams.serde.codec import (
    DECODE_REASONS,
    Codec,
    DecodeError,
    EncodeError,
    RegistryError,
)
from streams.serde.topics import TOPICS, UnknownTopicError

CASES = [(topic, i, rec) for topic, recs in SAMPLES.items() for i, rec in enumerate(recs)]
IDS = [f"{topic}#{i}" for topic, i, _ in CASES]


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load()


@pytest.fixture(scope="module")
def codec(catalog: SchemaCatalog) -> Codec:
    return Codec(catalog)


@pytest.fixture
def registry() -> Any:
    # SchemaRegistryClient(...) itself speaks HTTP only; new_client() maps mock:// to the in-memory
    # MockSchemaRegistryClient (what the Codec does for a mock:// URL).
    return SchemaRegistryClient.new_client({"url": "mock://serde-tests"})


def test_samples_cover_every_topic_and_every_union_branch(catalog: SchemaCatalog) -> None:
    assert set(SAMPLES) == {name for name, t in TOPICS.items() if t.value_record}
    for topic, record in [
        ("orders.commands", "xchg.v1.OrderCommand"),
        ("orders.events", "xchg.v1.OrderEvent"),
    ]:
        body = next(f for f in catalog.current(record).schema["fields"] if f["name"] == "body")
        branches = {f"xchg.v1.{b['name']}" for b in body["type"]}
        assert {r["body"][0] for r in SAMPLES[topic]} == branches


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "i", "record"), CASES, ids=IDS)
def test_round_trip_single_object(codec: Codec, topic: str, i: int, record: dict[str, Any]) -> None:
    data = codec.encode(topic, record)
    assert data[:2] == b"\xc3\x01"
    assert codec.decode(topic, data) == record


@pytest.mark.parametrize(("topic", "i", "record"), CASES, ids=IDS)
def test_round_trip_confluent(
    catalog: SchemaCatalog, registry: Any, topic: str, i: int, record: dict[str, Any]
) -> None:
    producer = Codec(catalog, schema_registry_client=registry)
    consumer = Codec(catalog, schema_registry_client=registry)  # fresh id cache: fetches by id
    data = producer.encode(topic, record)
    assert producer.framing == "confluent"
    assert data[0] == 0
    assert consumer.decode(topic, data) == record
    assert producer.decode(topic, data) == record


def test_confluent_via_url_and_subject_naming(catalog: SchemaCatalog) -> None:
    codec = Codec(catalog, schema_registry_url="mock://serde-url")
    data = codec.encode("trades", TRADE)
    schema_id = struct.unpack(">I", data[1:5])[0]
    client = codec.schema_registry_client
    assert client is not None
    assert type(client).__name__ == "MockSchemaRegistryClient"
    latest = client.get_latest_version("trades-value")
    assert latest.schema_id == schema_id == codec.schema_id("trades")
    assert json.loads(latest.schema.schema_str)["name"] == "Trade"
    assert codec.decode("trades", data) == TRADE


def test_register_all(catalog: SchemaCatalog, registry: Any) -> None:
    ids = Codec(catalog, schema_registry_client=registry).register_all()
    assert set(ids) == {name for name, t in TOPICS.items() if t.value_record}
    assert set(registry.get_subjects()) == {f"{t}-value" for t in ids}


def test_registry_codec_still_reads_single_object(
    codec: Codec, catalog: SchemaCatalog, registry: Any
) -> None:
    data = codec.encode("trades", TRADE)
    assert Codec(catalog, schema_registry_client=registry).decode("trades", data) == TRADE


# -- exact framing bytes -------------------------------------------------------------------------


def test_single_object_header_is_the_spec_layout(codec: Codec, catalog: SchemaCatalog) -> None:
    for topic, row in TOPICS.items():
        if row.value_record is None:
            continue
        data = codec.encode(topic, SAMPLES[topic][0])
        canonical = catalog.current(row.value_record).canonical
        assert data[:2] == bytes([0xC3, 0x01])
        assert data[2:10] == struct.pack("<Q", spec_fingerprint64(canonical.encode("utf-8")))
        body = BytesIO()
        schemaless_writer(body, catalog.current(row.value_record).parsed, SAMPLES[topic][0])
        assert data[10:] == body.getvalue()


def test_confluent_header_is_magic_zero_and_big_endian_id(catalog: SchemaCatalog, registry: Any) -> None:
    # Burn a few ids so that the id under test is not 1.
    for k in range(3):
        registry.register_schema(
            f"other-{k}", Schema(json.dumps({"type": "fixed", "name": f"F{k}", "size": 1}))
        )
    codec = Codec(catalog, schema_registry_client=registry)
    data = codec.encode("engine.hashes", STATE_HASH)
    schema_id = codec.schema_id("engine.hashes")
    assert schema_id > 1
    assert data[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    body = BytesIO()
    schemaless_writer(body, catalog.current("xchg.v1.StateHash").parsed, STATE_HASH)
    assert data[5:] == body.getvalue()


# -- decode errors -------------------------------------------------------------------------------


def _reason(codec: Codec, topic: str, data: bytes) -> str:
    with pytest.raises(DecodeError) as err:
        codec.decode(topic, data)
    assert err.value.reason in DECODE_REASONS
    return err.value.reason


def test_decode_garbage(codec: Codec) -> None:
    assert _reason(codec, "orders.commands", b"") == "empty"
    with pytest.raises(DecodeError, match="empty"):
        codec.decode("engine.snapshots", None)  # a compacted topic's tombstone
    assert _reason(codec, "orders.commands", b"hello world, not avro") == "unknown_framing"
    assert _reason(codec, "orders.commands", b"\xc3") == "truncated_header"
    assert _reason(codec, "orders.commands", b"\xc3\x01\x01\x02") == "truncated_header"
    assert _reason(codec, "orders.commands", b"\x00\x00\x00\x00\x01\x02") == "no_registry"


def test_decode_unknown_fingerprint_and_wrong_record(codec: Codec) -> None:
    assert _reason(codec, "orders.commands", b"\xc3\x01" + b"\x11" * 8 + b"\x00") == "unknown_fingerprint"
    trade = codec.encode("trades", TRADE)
    assert _reason(codec, "orders.events", trade) == "wrong_record"


@pytest.mark.parametrize(
    ("topic", "record"),
    [("orders.commands", PLACE), ("orders.events", TRADE_EXECUTED), ("settlement.batches", BATCH)],
)
def test_decode_every_truncation_is_a_decode_error(codec: Codec, topic: str, record: dict[str, Any]) -> None:
    data = codec.encode(topic, record)
    for cut in range(len(data)):
        reason = _reason(codec, topic, data[:cut])
        if cut >= 10:
            assert reason == "truncated", cut


def test_decode_trailing_bytes(codec: Codec) -> None:
    data = codec.encode("trades", TRADE)
    assert _reason(codec, "trades", data + b"\x00") == "trailing_bytes"


def test_decode_malformed_body(codec: Codec) -> None:
    data = bytearray(codec.encode("orders.commands", PLACE))
    header = bytes(data[:10])
    # command_id "c-1" then market: replace the union index with 9 (zigzag 18), out of range.
    body = b"\x06c-1" + b"\x0eBTC-USD" + b"\x12" + b"\x00" * 8
    assert _reason(codec, "orders.commands", header + body) == "malformed"
    bad_utf8 = header + b"\x04\xff\xfe" + body[4:]
    assert _reason(codec, "orders.commands", bad_utf8) == "malformed"


def test_decode_fuzz_only_raises_decode_error(codec: Codec) -> None:
    rng = random.Random(7)
    header = codec.encode("orders.events", TRADE_EXECUTED)[:10]
    for _ in range(3000):
        junk = rng.randbytes(rng.randint(0, 60))
        for data in (junk, header + junk):
            try:
                codec.decode("orders.events", data)
            except DecodeError as exc:
                assert exc.reason in DECODE_REASONS


def test_decode_unknown_schema_id(catalog: SchemaCatalog, registry: Any) -> None:
    codec = Codec(catalog, schema_registry_client=registry)
    assert _reason(codec, "trades", b"\x00\x00\x00\x03\xe7" + b"\x02") == "unknown_schema_id"
    assert _reason(codec, "trades", b"\x00\x00\x01") == "truncated_header"


def test_decode_schema_id_of_another_record(catalog: SchemaCatalog, registry: Any) -> None:
    codec = Codec(catalog, schema_registry_client=registry)
    data = codec.encode("engine.hashes", STATE_HASH)
    assert _reason(codec, "trades", data) == "wrong_record"


def test_registry_outage_is_not_a_decode_error(catalog: SchemaCatalog) -> None:
    class Down:
        def get_schema(self, schema_id: int) -> Any:
            raise ConnectionError("registry unreachable")

        def register_schema(self, subject: str, schema: Any) -> int:
            raise ConnectionError("registry unreachable")

    codec = Codec(catalog, schema_registry_client=Down())
    with pytest.raises(RegistryError):
        codec.decode("trades", b"\x00\x00\x00\x00\x07\x00")
    with pytest.raises(RegistryError):
        codec.encode("trades", TRADE)


# -- encode errors and topics --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "record"),
    [
        ("trades", {k: v for k, v in TRADE.items() if k != "price"}),
        ("trades", {**TRADE, "price": "97123.50"}),
        ("trades", {**TRADE, "qty": 2**63}),
        ("trades", {**TRADE, "taker_side": "BUY"}),
        ("orders.commands", {**PLACE, "body": ("xchg.v1.Nope", {})}),
        ("settlement.batches", {**BATCH, "batch_hash": b"\x00" * 31}),
        (
            "settlement.batches",
            {**BATCH, "deltas": [{"account": "a", "asset": "B", "amount": Decimal(10**38)}]},
        ),
        ("md.candles", {**CANDLE, "quote_volume": Decimal("1.5")}),
    ],
)
def test_encode_errors_are_typed(codec: Codec, topic: str, record: dict[str, Any]) -> None:
    with pytest.raises(EncodeError):
        codec.encode(topic, record)


def test_strict_rejects_a_float_for_a_long(catalog: SchemaCatalog) -> None:
    with pytest.raises(EncodeError):
        Codec(catalog, strict=True).encode("trades", {**TRADE, "price": 9712350.0})
    assert (
        Codec(catalog, strict=True).decode("trades", Codec(catalog, strict=True).encode("trades", TRADE))
        == TRADE
    )


def test_unknown_and_schemaless_topics(codec: Codec) -> None:
    with pytest.raises(UnknownTopicError, match="unknown topic"):
        codec.encode("nope", TRADE)
    with pytest.raises(UnknownTopicError, match="raw bytes"):
        codec.decode("dlq.orders.commands", b"\x00")


# -- old writers -----------------------------------------------------------------------------------


def _evolved(catalog: SchemaCatalog) -> tuple[SchemaCatalog, dict[str, Any]]:
    """A catalog whose Trade gained an optional field; the released v1 is today's Trade."""
    defs = copy.deepcopy(dict(catalog.definitions))
    defs["xchg.v1.Trade"]["fields"].append(
        {"name": "fee", "type": ["null", "long"], "default": None, "doc": "taker fee, quote units"}
    )
    v1 = catalog.current("xchg.v1.Trade").schema
    return SchemaCatalog(defs, {"xchg.v1.Trade": {"v1": v1}}), v1


def test_reads_data_of_a_released_older_version(catalog: SchemaCatalog) -> None:
    evolved, v1 = _evolved(catalog)
    old_writer = SchemaVersion.build("xchg.v1.Trade", "v1", v1)
    assert old_writer.fingerprint != evolved.current("xchg.v1.Trade").fingerprint
    buf = BytesIO()
    buf.write(b"\xc3\x01" + old_writer.fingerprint)
    schemaless_writer(buf, old_writer.parsed, TRADE)
    assert Codec(evolved).decode("trades", buf.getvalue()) == {**TRADE, "fee": None}
    # and new data still round-trips
    new = Codec(evolved)
    assert new.decode("trades", new.encode("trades", {**TRADE, "fee": 12})) == {**TRADE, "fee": 12}


def test_reads_confluent_data_of_an_older_writer(catalog: SchemaCatalog, registry: Any) -> None:
    evolved, v1 = _evolved(catalog)
    old_id = registry.register_schema("trades-value", Schema(json.dumps(v1), "AVRO"))
    buf = BytesIO()
    buf.write(b"\x00" + old_id.to_bytes(4, "big"))
    schemaless_writer(buf, catalog.current("xchg.v1.Trade").parsed, TRADE)
    assert Codec(evolved, schema_registry_client=registry).decode("trades", buf.getvalue()) == {
        **TRADE,
        "fee": None,
    }
