"""Generated Avro code against fastavro, the reference: same bytes out, same values back, on random
records of every schema the codec compiles; and the codec's error reasons on broken input."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams.serde.codec import Codec, DecodeError, EncodeError
from streams.serde.compiled import compile_schema
from streams.serde.topics import ORDERS_EVENTS, TRADES

CODEC = Codec()
COMPILED = {topic: tc for topic, tc in CODEC._topics.items() if tc.compiled is not None}
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Random valid values of a parsed schema, in the shapes the codec reads and writes."""
    if isinstance(schema, str):
        primitive = {
            "null": st.none(), "boolean": st.booleans(), "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1), "string": st.text(max_size=12),
            "bytes": st.binary(max_size=12),
        }
        return primitive[schema] if schema in primitive else values(named[schema], named)
    if isinstance(schema, list):
        records = [b for b in schema if (isinstance(b, dict) and b["type"] == "record")
                   or (isinstance(b, str) and isinstance(named.get(b), dict) and named[b]["type"] == "record")]
        options = []
        for branch in schema:
            strategy = values(branch, named)
            if len(records) > 1 and branch in records:
                name = branch["name"] if isinstance(branch, dict) else branch
                strategy = strategy.map(lambda v, n=name: (n, v))
            options.append(strategy)
        return st.one_of(options)
    kind = schema["type"]
    if kind in ("record", "enum", "fixed"):
        named.setdefault(schema["name"], schema)
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: values(f["type"], named) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    if kind == "array":
        return st.lists(values(schema["items"], named), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=6), values(schema["values"], named), max_size=3)
    return values(kind, named)


def fastavro_bytes(parsed: Any, record: Any) -> bytes:
    buf = BytesIO()
    schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def fastavro_value(parsed: Any, body: bytes) -> Any:
    return schemaless_reader(BytesIO(body), parsed, None, return_record_name=True,
                             return_record_name_override=True)


def test_every_schema_without_logical_types_is_compiled() -> None:
    # Candles and settlement records carry decimals (a logical type): they stay on fastavro.
    assert set(COMPILED) >= {"orders.commands", "orders.events", "trades", "md.book", "engine.snapshots",
                             "engine.hashes"}
    assert CODEC._topics["md.candles"].compiled is None


@pytest.mark.parametrize("topic", sorted(COMPILED))
def test_same_bytes_and_values_as_fastavro(topic: str) -> None:
    tc = COMPILED[topic]

    @PROPERTY
    @given(record=values(tc.parsed, {}))
    def check(record: Any) -> None:
        reference = fastavro_bytes(tc.parsed, record)
        encoded = CODEC.encode(topic, record)
        assert encoded == tc.header + reference
        assert tc.compiled is not None
        assert tc.compiled.encode(record, b"") == reference  # the generated path, not a fallback
        value, end = tc.compiled.decode(reference, 0)
        assert end == len(reference)
        assert value == fastavro_value(tc.parsed, reference)
        assert CODEC.decode(topic, encoded) == value

    check()


@pytest.mark.parametrize("topic", sorted(COMPILED))
def test_every_strict_prefix_is_truncated(topic: str) -> None:
    tc = COMPILED[topic]

    @PROPERTY
    @given(record=values(tc.parsed, {}), data=st.data())
    def check(record: Any, data: st.DataObject) -> None:
        encoded = CODEC.encode(topic, record)
        cut = data.draw(st.integers(len(tc.header), len(encoded) - 1))
        with pytest.raises(DecodeError) as info:
            CODEC.decode(topic, encoded[:cut])
        assert info.value.reason == "truncated"
        with pytest.raises(DecodeError) as info:
            CODEC.decode(topic, encoded + b"\x00")
        assert info.value.reason == "trailing_bytes"

    check()


@PROPERTY
@given(body=st.binary(max_size=80))
def test_garbage_is_a_decode_error_or_what_fastavro_reads(body: bytes) -> None:
    for topic in (ORDERS_EVENTS, TRADES):
        tc = COMPILED[topic]
        try:
            value = CODEC.decode(topic, tc.header + body)
        except DecodeError:
            continue
        assert value == fastavro_value(tc.parsed, body)


def test_bad_indexes_and_lengths_are_malformed() -> None:
    tc = COMPILED[TRADES]
    # market: a negative string length (zigzag 0x01 = -1).
    with pytest.raises(DecodeError) as info:
        CODEC.decode(TRADES, tc.header + b"\x01")
    assert info.value.reason == "malformed"
    tc = COMPILED[ORDERS_EVENTS]
    # A valid envelope whose body union index (zigzag 0x7e = 63) names no branch.
    envelope = b"\x02A" + b"\x02\x02" + b"\x02c" + b"\x00\x00" + b"\x7e"
    with pytest.raises(DecodeError) as info:
        CODEC.decode(ORDERS_EVENTS, tc.header + envelope)
    assert info.value.reason == "malformed"


def test_values_fastavro_rejects_are_encode_errors() -> None:
    trade = {"market": "BTC-USD", "trade_id": 2**63, "seq": 1, "ts": 1, "price": 1, "qty": 1,
             "maker_order_id": "m", "maker_account": "a", "taker_order_id": "t", "taker_account": "b",
             "taker_side": "buy", "command_id": "c", "input_partition": 0, "input_offset": 0}
    with pytest.raises(EncodeError):
        CODEC.encode(TRADES, trade)  # beyond 64 bits
    with pytest.raises(EncodeError):
        CODEC.encode(TRADES, {**trade, "trade_id": 1, "taker_side": "BUY"})  # not a symbol
    with pytest.raises(EncodeError):
        CODEC.encode(TRADES, {k: v for k, v in trade.items() if k != "qty"})  # missing field


def test_shapes_the_generated_code_does_not_take_fall_back_to_fastavro() -> None:
    schema = parse_schema({"type": "record", "name": "t.Shapes", "fields": [
        {"name": "u", "type": ["null", "string", "long", {"type": "record", "name": "t.A", "fields": []},
                               {"type": "record", "name": "t.B", "fields": [{"name": "x", "type": "long"}]}]},
        {"name": "d", "type": "long", "default": 7},
    ]}, named_schemas={})
    compiled = compile_schema(schema)
    assert compiled is not None
    assert compiled.encode({"u": ("t.B", {"x": 5})}, b"") == fastavro_bytes(schema, {"u": ("t.B", {"x": 5})})
    assert compiled.encode({"u": None}, b"") == fastavro_bytes(schema, {"u": None, "d": 7})  # default
    # A bare dict in a union of two records: fastavro picks the branch by validation; we defer to it.
    from streams.serde.compiled import Fallback

    with pytest.raises(Fallback):
        compiled.encode({"u": {"x": 5}}, b"")
    assert compile_schema(parse_schema({"type": "record", "name": "t.F", "fields": [
        {"name": "f", "type": "double"}]}, named_schemas={})) is None


SMALL = parse_schema({"type": "record", "name": "t.Small", "fields": [
    {"name": "flag", "type": "boolean"},
    {"name": "side", "type": {"type": "enum", "name": "t.S", "symbols": ["a", "b", "c"]}},
    {"name": "n", "type": "long"},
    {"name": "opt", "type": ["null", "string"]},
    {"name": "xs", "type": {"type": "array", "items": "int"}},
]}, named_schemas={})


@PROPERTY
@given(body=st.binary(max_size=16))
@example(body=b"\x02\x02\x00\x00\x00")  # flag byte 2: true
@example(body=b"\x00\x06\x00\x00\x00")  # enum index 3 of 3
@example(body=b"\x00\x00\x00\x04\x00")  # union index 2 of 2
def test_any_bytes_read_as_fastavro_reads_them(body: bytes) -> None:
    """Random input to a small schema: the generated decoder fails where fastavro fails, and
    otherwise reads the same value (any non-zero byte is true, as in fastavro)."""
    compiled = compile_schema(SMALL)
    assert compiled is not None
    fo = BytesIO(body)
    try:
        expected: Any = schemaless_reader(fo, SMALL, None)
    except Exception:  # fastavro signals bad input with many exception types
        expected = None
    try:
        value, end = compiled.decode(body, 0)
    except (IndexError, ValueError):
        value = end = None
    assert value == expected
    if value is not None:
        assert end == fo.tell()


@PROPERTY
@given(data=st.data())
def test_row_reader_returns_the_fields_decode_returns(data: st.DataObject) -> None:
    tc = COMPILED[TRADES]
    record = data.draw(values(tc.parsed, {}))
    fields = ("market", "trade_id", "ts", "taker_side")
    read = CODEC.row_reader(TRADES, fields, {"ts": lambda ms: ms * 2})
    encoded = CODEC.encode(TRADES, record)
    assert read(encoded) == (record["market"], record["trade_id"], record["ts"] * 2, record["taker_side"])
    cut = data.draw(st.integers(len(tc.header), len(encoded) - 1))
    with pytest.raises(DecodeError) as info:
        read(encoded[:cut])
    assert info.value.reason == "truncated"


def test_row_reader_takes_other_framings_through_decode() -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    registry = SchemaRegistryClient.new_client({"url": "mock://row-reader"})
    confluent = Codec(schema_registry_client=registry)
    trade = {"market": "BTC-USD", "trade_id": 7, "seq": 21, "ts": 5, "price": 100, "qty": 2,
             "maker_order_id": "m", "maker_account": "a", "taker_order_id": "t", "taker_account": "b",
             "taker_side": "sell", "command_id": "c", "input_partition": 0, "input_offset": 3}
    read = confluent.row_reader(TRADES, ("trade_id", "taker_side"))
    assert read(confluent.encode(TRADES, trade)) == (7, "sell")  # Confluent framing: the generic path
    assert read(CODEC.encode(TRADES, trade)) == (7, "sell")  # single-object: the generated path
    with pytest.raises(DecodeError):
        read(b"")
    with pytest.raises(KeyError):
        CODEC.row_reader(TRADES, ("no_such_field",))
