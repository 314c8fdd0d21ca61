"""Conformance scenarios and JSON command logs: decimal strings in, engine commands out.

A scenario file (``tests/conformance/README.md``) is one JSON object with ``name``, ``market``,
``commands`` and ``expect``; other top-level keys (e.g. ``description``) are ignored. Prices and
quantities are decimal strings; this module turns them into the integer units of a ``MarketSpec``:

- Per file, ``price_decimals`` is the most decimal places of the tick size and of every price in
  the file (commands and expectations), and ``qty_decimals`` the most of the lot size, min qty,
  max qty and every quantity. So every amount is an exact integer number of units, and an off-tick
  or off-lot amount reaches the engine as such and gets its coded reject (``invalid_tick``/``invalid_lot``).
- The market's optional bounds (docs/matching-rules.md, rules 11 and 12), each absent or null for
  none: ``max_qty`` (base asset), ``max_notional`` (quote asset, price x qty, which must fit
  ``price_decimals + qty_decimals`` places), ``collar_pct`` (a percentage) and
  ``collar_interval_s`` (integer seconds, default 60; only meaningful with ``collar_pct``).
- Commands without an ``order_id`` (``cancel_all``, ``set_state``) — and in fact all commands
  that carry no ``command_id`` — get the synthesized command id ``"<source>#<n>"`` (n from 1).
- Outcomes are compared as integers in those units, i.e. as numbers ("1" equals "1.000").

Everything here is pure except ``load_scenario`` (reads one file).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from streams.domain.commands import (
    Command,
    MarketState,
    OrderType,
    Side,
    STPMode,
    TimeInForce,
)
from streams.domain.events import Event, OrderRejected, Trade
from streams.domain.market import MarketSpec, UnitError, decimals_of, from_units, to_units
from streams.engine import Engine
from streams.errors import OperatorError
from streams.runtime.records import IDENTIFIER_MAX_CHARS, RecordError, command_from_record
from streams.runtime.records import NS as RECORD_NAMESPACE

PRICE_FIELDS = ("price",)
QTY_FIELDS = ("qty",)
COMMAND_TYPES = ("place", "cancel", "amend", "cancel_all", "set_state")


class ScenarioError(OperatorError, ValueError):
    """A scenario, market spec or command cannot be understood (message says where and why)."""


@dataclass(frozen=True, slots=True)
class Units:
    """Decimal places of one price unit and one quantity unit."""

    price_decimals: int
    qty_decimals: int

    def price(self, amount: Any, where: str = "price") -> int:
        return _units(amount, self.price_decimals, where)

    def qty(self, amount: Any, where: str = "qty") -> int:
        return _units(amount, self.qty_decimals, where)

    def price_str(self, units: int) -> str:
        return _fixed(units, self.price_decimals)

    def qty_str(self, units: int) -> str:
        return _fixed(units, self.qty_decimals)


def _decimal(amount: Any, where: str) -> Decimal:
    if isinstance(amount, bool) or not isinstance(amount, str | int | float):
        raise ScenarioError(f"{where}: expected a decimal string, got {amount!r}")
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ScenarioError(f"{where}: {amount!r} is not a decimal number") from None
    if not value.is_finite():
        raise ScenarioError(f"{where}: {amount!r} is not a finite number")
    return value


def _units(amount: Any, decimals: int, where: str) -> int:
    try:
        return to_units(_decimal(amount, where), decimals)
    except UnitError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _fixed(units: int, decimals: int) -> str:
    return format(from_units(units, decimals), "f")


def _plain(units: int, decimals: int) -> str:
    """Shortest decimal string of an amount ("1.500" → "1.5", "100.00" → "100")."""
    value = from_units(units, decimals)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _scan(obj: Any, keys: Sequence[str], out: list[Any]) -> None:
    """Collect every value stored under one of ``keys`` anywhere inside ``obj``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys and v is not None and not isinstance(v, dict | list):
                out.append(v)
            else:
                _scan(v, keys, out)
    elif isinstance(obj, list):
        for v in obj:
            _scan(v, keys, out)


def choose_units(market: dict[str, Any], *documents: Any) -> Units:
    """Decimal places that represent the market's sizes and every amount in ``documents`` exactly."""
    prices: list[Any] = [market.get("tick_size")]
    qtys: list[Any] = [market.get("lot_size"), market.get("min_qty"), market.get("max_qty")]
    for doc in documents:
        _scan(doc, PRICE_FIELDS, prices)
        _scan(doc, QTY_FIELDS, qtys)

    def most(values: Iterable[Any], what: str) -> int:
        return max((decimals_of(_decimal(v, what)) for v in values if v is not None), default=0)

    return Units(most(prices, "price"), most(qtys, "quantity"))


def _percentage(raw: dict[str, Any], key: str) -> tuple[int | None, int]:
    """An optional percentage of the market object as an exact fraction (``None``: not set)."""
    pct = raw.get(key)
    return MarketSpec.band_fraction(None if pct is None else _decimal(pct, f"market.{key}"))


def parse_market(raw: Any, units: Units) -> MarketSpec:
    """A scenario ``market`` object as a ``MarketSpec`` in ``units``."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"market must be a JSON object, got {raw!r}")
    for key in ("market", "tick_size", "lot_size"):
        if key not in raw:
            raise ScenarioError(f"market: missing {key!r}")
    lot = units.qty(raw["lot_size"], "market.lot_size")
    min_qty = units.qty(raw["min_qty"], "market.min_qty") if raw.get("min_qty") is not None else lot
    band_num, band_den = _percentage(raw, "price_band_pct")
    max_qty = units.qty(raw["max_qty"], "market.max_qty") if raw.get("max_qty") is not None else None
    max_notional = (
        _units(raw["max_notional"], units.price_decimals + units.qty_decimals, "market.max_notional")
        if raw.get("max_notional") is not None
        else None
    )
    collar_num, collar_den = _percentage(raw, "collar_pct")
    interval = 60 if raw.get("collar_interval_s") is None else raw["collar_interval_s"]
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise ScenarioError(f"market.collar_interval_s: expected an integer (seconds), got {interval!r}")
    try:
        return MarketSpec(
            market=str(raw["market"]),
            tick=units.price(raw["tick_size"], "market.tick_size"),
            lot=lot,
            min_qty=min_qty,
            band_num=band_num,
            band_den=band_den,
            max_qty=max_qty,
            max_notional=max_notional,
            collar_num=collar_num,
            collar_den=collar_den,
            collar_interval_ms=interval * 1000,
        )
    except ValueError as exc:
        raise ScenarioError(f"market: {exc}") from None


def _field(raw: dict[str, Any], key: str, where: str) -> Any:
    if key not in raw or raw[key] is None:
        raise ScenarioError(f"{where}: missing {key!r}")
    return raw[key]


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    value = _field(raw, key, where)
    if not isinstance(value, str):
        raise ScenarioError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _enum(kind: Any, value: Any, where: str) -> Any:
    try:
        return kind.from_wire(str(value))
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def parse_command(raw: Any, units: Units, where: str) -> Command:
    """One command in the scenario format (decimal strings, defaults for the optional fields) as
    an engine command. The scenario is turned into the ``orders.commands`` record it stands for
    and that record is read by the one command parser (``runtime.records.command_from_record``),
    so a scenario is held to the contract the engine's input is (identifier bounds included)."""
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a command must be a JSON object, got {raw!r}")
    kind = raw.get("cmd")
    if kind not in COMMAND_TYPES:
        raise ScenarioError(
            f"{where}: unknown command type {kind!r} (expected one of: {', '.join(COMMAND_TYPES)})"
        )
    ts = _field(raw, "ts", where)
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise ScenarioError(f"{where}: ts must be an integer (milliseconds), got {ts!r}")
    cid = raw.get("command_id")
    # Without an id of its own a command is named by where it was read (its tail, within bounds).
    command_id = cid if isinstance(cid, str) else where[-IDENTIFIER_MAX_CHARS:]
    body: dict[str, Any]
    if kind == "place":
        order_type = _enum(OrderType, raw.get("type", "limit"), where)
        is_limit = order_type is OrderType.LIMIT
        name, body = "PlaceOrder", {
            "order_id": _text(raw, "order_id", where), "account": _text(raw, "account", where),
            "side": _enum(Side, _field(raw, "side", where), where).wire, "order_type": order_type.wire,
            "price": units.price(_field(raw, "price", where), f"{where}: price") if is_limit else 0,
            "qty": units.qty(_field(raw, "qty", where), f"{where}: qty"),
            "tif": _enum(TimeInForce, raw.get("tif") or ("GTC" if is_limit else "IOC"), where).wire,
            "post_only": bool(raw.get("post_only", False)),
            "stp": _enum(STPMode, raw.get("stp") or "expire_maker", where).wire,
        }
    elif kind == "cancel":
        name, body = "CancelOrder", {"order_id": _text(raw, "order_id", where), "account": _text(raw, "account", where)}
    elif kind == "amend":
        new_qty, new_price = raw.get("qty"), raw.get("price")
        name, body = "AmendOrder", {
            "order_id": _text(raw, "order_id", where), "account": _text(raw, "account", where),
            "qty": None if new_qty is None else units.qty(new_qty, f"{where}: qty"),
            "price": None if new_price is None else units.price(new_price, f"{where}: price"),
        }
    elif kind == "cancel_all":
        name, body = "CancelAll", {"account": _text(raw, "account", where)}
    else:
        name, body = "SetMarketState", {"state": _enum(MarketState, _field(raw, "state", where), where).wire}
    record = {"command_id": command_id, "market": "", "body": (RECORD_NAMESPACE + name, body)}
    try:
        return command_from_record(record, ts)[1]
    except RecordError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the conformance format compares, in integer units."""

    trades: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    bids: list[dict[str, Any]]
    asks: list[dict[str, Any]]

    def render(self, units: Units) -> dict[str, Any]:
        """The outcome in the scenario's ``expect`` shape, amounts as shortest decimal strings."""
        p, q = units.price_decimals, units.qty_decimals

        def levels(side: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [
                {
                    "price": _plain(lv["price"], p),
                    "orders": [{"order_id": o["order_id"], "qty": _plain(o["qty"], q)} for o in lv["orders"]],
                }
                for lv in side
            ]

        return {
            "trades": [
                {
                    "maker_order_id": t["maker_order_id"],
                    "taker_order_id": t["taker_order_id"],
                    "price": _plain(t["price"], p),
                    "qty": _plain(t["qty"], q),
                }
                for t in self.trades
            ],
            "rejects": [dict(r) for r in self.rejects],
            "book": {"bids": levels(self.bids), "asks": levels(self.asks)},
        }


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    source: str
    spec: MarketSpec
    units: Units
    commands: list[Command]
    expect: Outcome
    raw_expect: dict[str, Any] = field(default_factory=dict)


def _expected(raw: Any, units: Units, where: str) -> Outcome:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expect must be a JSON object")
    try:
        trades = [
            {
                "maker_order_id": str(t["maker_order_id"]),
                "taker_order_id": str(t["taker_order_id"]),
                "price": units.price(t["price"], f"{where}.trades[{i}].price"),
                "qty": units.qty(t["qty"], f"{where}.trades[{i}].qty"),
            }
            for i, t in enumerate(raw.get("trades", []))
        ]
        rejects = [
            {"order_id": str(r["order_id"]), "reason": str(r["reason"])} for r in raw.get("rejects", [])
        ]
        book = raw.get("book", {})

        def side(name: str) -> list[dict[str, Any]]:
            return [
                {
                    "price": units.price(lv["price"], f"{where}.book.{name}[{i}].price"),
                    "orders": [
                        {
                            "order_id": str(o["order_id"]),
                            "qty": units.qty(o["qty"], f"{where}.book.{name}[{i}].qty"),
                        }
                        for o in lv["orders"]
                    ],
                }
                for i, lv in enumerate(book.get(name, []))
            ]

        return Outcome(trades, rejects, side("bids"), side("asks"))
    except (KeyError, TypeError) as exc:
        raise ScenarioError(f"{where}: malformed expectation ({exc!r})") from None


def parse_scenario(doc: Any, source: str) -> Scenario:
    """A scenario document (already JSON-decoded) as engine inputs and the expected outcome."""
    if not isinstance(doc, dict):
        raise ScenarioError(f"{source}: a scenario must be a JSON object")
    for key in ("market", "commands"):
        if key not in doc:
            raise ScenarioError(f"{source}: missing {key!r}")
    if not isinstance(doc["commands"], list):
        raise ScenarioError(f"{source}: commands must be a list")
    expect = doc.get("expect", {})
    units = choose_units(doc["market"], doc["commands"], expect)
    spec = parse_market(doc["market"], units)
    commands = [parse_command(c, units, f"{source}#{i + 1}") for i, c in enumerate(doc["commands"])]
    return Scenario(
        name=str(doc.get("name", source)),
        source=source,
        spec=spec,
        units=units,
        commands=commands,
        expect=_expected(expect, units, f"{source}: expect"),
        raw_expect=expect if isinstance(expect, dict) else {},
    )


def load_scenario(path: Path) -> Scenario:
    """Read and parse one scenario file; ``ScenarioError`` with a one-line reason otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return parse_scenario(doc, path.name)


def run_commands(
    spec: MarketSpec, commands: Iterable[Command], check: bool = True
) -> tuple[Engine, list[Event]]:
    """Feed ``commands`` to a fresh engine (checking invariants after each if ``check``)."""
    engine = Engine(spec)
    events: list[Event] = []
    for cmd in commands:
        events.extend(engine.apply(cmd))
        if check:
            engine.check_invariants()
    return engine, events


def outcome_of(engine: Engine, events: Iterable[Event]) -> Outcome:
    """The comparable outcome of a run: trades and rejects in order, and the final book."""
    trades: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for ev in events:
        if isinstance(ev, Trade):
            trades.append(
                {
                    "maker_order_id": ev.maker_order_id,
                    "taker_order_id": ev.taker_order_id,
                    "price": ev.price,
                    "qty": ev.qty,
                }
            )
        elif isinstance(ev, OrderRejected):
            rejects.append({"order_id": ev.order_id, "reason": ev.reason.wire})

    def side(s: Side) -> list[dict[str, Any]]:
        return [
            {"price": price, "orders": [{"order_id": oid, "qty": qty} for oid, qty in orders]}
            for price, orders in engine.book_orders(s)
        ]

    return Outcome(trades, rejects, side(Side.BUY), side(Side.SELL))


@dataclass(frozen=True, slots=True)
class Result:
    scenario: Scenario
    actual: Outcome
    diff: list[str]

    @property
    def passed(self) -> bool:
        return not self.diff


def diff_outcomes(expected: Outcome, actual: Outcome, units: Units) -> list[str]:
    """Unified diff (expected → actual) of two outcomes; empty when they agree as numbers."""
    if expected == actual:
        return []
    want = json.dumps(expected.render(units), indent=1).splitlines()
    got = json.dumps(actual.render(units), indent=1).splitlines()
    lines = list(difflib.unified_diff(want, got, "expected", "actual", lineterm="", n=3))
    return lines or ["(outcomes differ but render identically)"]


def run_scenario(scenario: Scenario) -> Result:
    """Run a scenario through a fresh engine and compare with its expectation."""
    engine, events = run_commands(scenario.spec, scenario.commands)
    actual = outcome_of(engine, events)
    return Result(scenario, actual, diff_outcomes(scenario.expect, actual, scenario.units))


def scenario_files(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, plus every ``*.json`` in named directories (sorted)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file()))
        else:
            out.append(path)
    return out
