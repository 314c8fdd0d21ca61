"""Validation of messages the server really sent against the schemas of ``docs/asyncapi.yaml``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from streams.settings import PROJECT_ROOT

TYPE_TO_SCHEMA = {"subscribed": "Subscribed", "unsubscribed": "Subscribed", "authenticated": "Authenticated",
                  "not_ready": "NotReady", "error": "Error", "heartbeat": "Heartbeat", "book": "Book",
                  "trade": "Trade", "candle": "Candle", "ticker": "Ticker", "status": "Status", "order": "Order",
                  "fill": "Fill"}


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    with open(PROJECT_ROOT / "docs" / "asyncapi.yaml") as f:
        return yaml.safe_load(f)  # type: ignore[no-any-return]


def validator(schema_name: str) -> Draft202012Validator:
    document = _document()
    schema = {**document, "$ref": f"#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema)


def assert_conforms(messages: list[dict[str, Any]]) -> set[str]:
    """Every message validates against its type's schema; returns the types seen."""
    seen = set()
    for message in messages:
        kind = message.get("type")
        assert kind in TYPE_TO_SCHEMA, f"undocumented message type {kind!r}"
        errors = sorted(validator(TYPE_TO_SCHEMA[kind]).iter_errors(message), key=str)
        assert not errors, f"{kind} does not conform: {errors[0].message} in {message}"
        seen.add(kind)
    return seen
