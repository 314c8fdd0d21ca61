"""The contracts themselves: files, names, docs, integer-only types, fingerprints, topic table."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema

from streams.serde.catalog import SCHEMA_DIR, SchemaCatalog, SchemaCatalogError, crc64_avro, expand
from streams.serde.topics import TOPICS, UnknownTopicError, topic

# -- an independent CRC-64-AVRO, straight from the Avro specification ---------------------------

_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp & 0xFFFFFFFFFFFFFFFF)
    return table


_FP_TABLE = _table()


def spec_fingerprint64(data: bytes) -> int:
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load()


def _walk_types(node: Any) -> Iterator[Any]:
    """Every type node of a JSON schema (strings, dicts, unions)."""
    yield node
    if isinstance(node, list):
        for branch in node:
            yield from _walk_types(branch)
    elif isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, dict | list):
            yield from _walk_types(kind)
        for fld in node.get("fields", ()):
            yield from _walk_types(fld["type"])
        if "items" in node:
            yield from _walk_types(node["items"])
        if "values" in node:
            yield from _walk_types(node["values"])


def _all_schema_files() -> list[Path]:
    return sorted(SCHEMA_DIR.glob("*.avsc")) + sorted((SCHEMA_DIR / "history").glob("*/v*.avsc"))


def _records(schema: Any) -> Iterator[dict[str, Any]]:
    for node in _walk_types(schema):
        if isinstance(node, dict) and node.get("type") == "record":
            yield node


# -- tests ---------------------------------------------------------------------------------------


def test_spec_fingerprint_vector() -> None:
    # Known value from the Avro specification's test suite: fingerprint64('"null"').
    assert spec_fingerprint64(b'"null"') == 7195948357588979594
    assert crc64_avro('"null"') == struct.pack("<Q", 7195948357588979594)


def test_every_file_is_one_named_type_in_the_namespace() -> None:
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        schema = json.loads(path.read_text())
        assert schema["type"] in ("record", "enum", "fixed"), path
        assert schema["namespace"] == "xchg.v1", path
        assert path.name == f"xchg.v1.{schema['name']}.avsc", path


def test_integer_only_no_float_or_double_anywhere() -> None:
    offenders = []
    for path in _all_schema_files():
        for node in _walk_types(json.loads(path.read_text())):
            kind = node if isinstance(node, str) else node.get("type") if isinstance(node, dict) else None
            if kind in ("float", "double"):
                offenders.append(str(path.relative_to(SCHEMA_DIR)))
    assert offenders == [], f"float/double in {sorted(set(offenders))}: money and quantities are integers"


def test_every_type_and_field_is_documented() -> None:
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        schema = json.loads(path.read_text())
        assert schema.get("doc", "").strip(), f"{path.name}: no doc"
        for rec in _records(schema):
            for fld in rec["fields"]:
                assert fld.get("doc", "").strip(), f"{path.name}: field {fld['name']} has no doc"


def test_money_fields_document_their_units() -> None:
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        for rec in _records(json.loads(path.read_text())):
            for fld in rec["fields"]:
                if fld["name"] in ("price", "open", "high", "low", "close"):
                    assert "price units" in fld["doc"], f"{path.name}.{fld['name']}"
                if fld["name"] in ("qty", "volume", "remaining"):
                    assert "quantity units" in fld["doc"], f"{path.name}.{fld['name']}"
                if fld["name"] in ("ts", "event_ts", "window_start"):
                    assert "milliseconds" in fld["doc"], f"{path.name}.{fld['name']}"


def test_optional_fields_are_null_first_with_null_default() -> None:
    for path in _all_schema_files():
        for rec in _records(json.loads(path.read_text())):
            for fld in rec["fields"]:
                if isinstance(fld["type"], list) and "null" in fld["type"]:
                    assert fld["type"][0] == "null", f"{path.name}.{fld['name']}"
                    assert "default" in fld and fld["default"] is None, f"{path.name}.{fld['name']}"


def test_catalog_fingerprints_match_the_spec_algorithm(catalog: SchemaCatalog) -> None:
    for name in catalog.top_level:
        sv = catalog.current(name)
        expected = struct.pack("<Q", spec_fingerprint64(sv.canonical.encode()))
        assert sv.fingerprint == expected, name
        assert catalog.by_fingerprint(expected) is sv


def test_expanded_schemas_are_self_contained(catalog: SchemaCatalog) -> None:
    for name in catalog.top_level:
        schema = catalog.current(name).schema
        parse_schema(json.loads(json.dumps(schema)), named_schemas={})  # no outside names needed
        assert '"doc"' in catalog.current(name).schema_json


def test_topic_table_names_existing_records(catalog: SchemaCatalog) -> None:
    assert set(TOPICS) == {
        "orders.commands",
        "orders.events",
        "trades",
        "md.book",
        "md.candles",
        "md.ticker",
        "engine.snapshots",
        "engine.hashes",
        "settlement.batches",
        "settlement.status",
        "dlq.orders.commands",
        "dlq.sink",
        "dlq.marketdata",
    }
    assert TOPICS["dlq.orders.commands"].value_record is None
    records = {t.value_record for t in TOPICS.values()} - {None}
    assert records == set(catalog.top_level)
    assert topic("trades").value_record == "xchg.v1.Trade"
    assert topic("orders.events").subject == "orders.events-value"
    with pytest.raises(UnknownTopicError):
        topic("nope")


def test_every_top_level_record_is_released(catalog: SchemaCatalog) -> None:
    for name in catalog.top_level:
        assert catalog.history(name), f"{name}: no schemas/history/{name}/v1.avsc"
        assert (SCHEMA_DIR / "history" / name / "v1.avsc").is_file()
    assert catalog.unreleased() == (), (
        f"schemas changed since their last release: {catalog.unreleased()}; "
        "run `python -m streams.serde release` and commit the new history files"
    )


def test_command_and_event_unions_cover_the_domain(catalog: SchemaCatalog) -> None:
    def branches(record: str) -> list[str]:
        body = next(f for f in catalog.current(record).schema["fields"] if f["name"] == "body")
        return [b["name"] for b in body["type"]]

    assert branches("xchg.v1.OrderCommand") == [
        "PlaceOrder",
        "CancelOrder",
        "AmendOrder",
        "CancelAll",
        "SetMarketState",
    ]
    assert branches("xchg.v1.OrderEvent") == [
        "OrderAccepted",
        "OrderRejected",
        "OrderAmended",
        "TradeExecuted",
        "OrderFilled",
        "OrderCancelled",
        "OrderExpired",
        "CancelAllDone",
        "MarketStateChanged",
    ]


# -- loader errors -------------------------------------------------------------------------------


def _src(name: str, fields: list[dict[str, Any]]) -> tuple[str, str]:
    schema = {"type": "record", "name": name, "namespace": "t", "fields": fields}
    return f"t.{name}.avsc", json.dumps(schema)


def test_loader_resolves_references_across_files() -> None:
    sources = dict(
        [
            _src("Top", [{"name": "a", "type": "t.Leaf"}, {"name": "b", "type": "Leaf"}]),
            _src("Leaf", [{"name": "x", "type": "long"}]),
        ]
    )
    cat = SchemaCatalog.from_sources(sources, top_level=["t.Top"])
    schema = cat.current("t.Top").schema
    assert schema["fields"][0]["type"]["name"] == "Leaf"  # inlined at first use
    assert schema["fields"][1]["type"] == "t.Leaf"  # referenced afterwards


def test_loader_rejects_dangling_reference() -> None:
    with pytest.raises(SchemaCatalogError, match="unknown type"):
        SchemaCatalog.from_sources(
            dict([_src("Top", [{"name": "a", "type": "t.Missing"}])]), top_level=["t.Top"]
        )


def test_loader_rejects_misnamed_file_and_duplicates() -> None:
    name, text = _src("Top", [{"name": "a", "type": "long"}])
    with pytest.raises(SchemaCatalogError, match="must be named"):
        SchemaCatalog.from_sources({"Top.avsc": text}, top_level=[])
    nested = {
        "type": "record",
        "name": "Other",
        "namespace": "t",
        "fields": [{"name": "x", "type": {"type": "record", "name": "Top", "fields": []}}],
    }
    with pytest.raises(SchemaCatalogError, match="already defined"):
        SchemaCatalog.from_sources({name: text, "t.Other.avsc": json.dumps(nested)}, top_level=[])


def test_expand_keeps_docs_and_defaults() -> None:
    defs = {
        "t.E": {"type": "enum", "name": "E", "namespace": "t", "symbols": ["a"], "doc": "an enum"},
        "t.R": {
            "type": "record",
            "name": "R",
            "namespace": "t",
            "fields": [{"name": "e", "type": ["null", "E"], "default": None, "doc": "d"}],
        },
    }
    out = expand("t.R", defs)
    assert out["fields"][0] == {
        "name": "e",
        "type": ["null", {"type": "enum", "name": "E", "namespace": "t", "symbols": ["a"], "doc": "an enum"}],
        "default": None,
        "doc": "d",
    }
