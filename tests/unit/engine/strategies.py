"""Hypothesis strategies: small markets and dense random command streams that hit every rule.

Few accounts, few order ids and a narrow price range, so that duplicates, unknown orders, self
matches (every STP mode), crossing, partial fills, amends, cancel-all, market states and the price
band all happen often. Amounts are mostly valid, sometimes zero, negative, off-tick, off-lot or
below the minimum.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st

from streams.domain.commands import (
    Amend,
    Cancel,
    CancelAll,
    Command,
    MarketState,
    OrderType,
    Place,
    SetState,
    Side,
    STPMode,
    TimeInForce,
)
from streams.domain.market import MarketSpec

SPECS = [
    MarketSpec("T1", tick=1, lot=1, min_qty=1),
    MarketSpec("T5", tick=5, lot=2, min_qty=4, band_num=5, band_den=1),
    MarketSpec("T2", tick=2, lot=1, min_qty=1, band_num=5, band_den=2),  # 2.5 %
    MarketSpec("T10", tick=10, lot=3, min_qty=3, band_num=50, band_den=1),
    # Bounded: quantities above 5 and notionals above 450 are refused; the collar (4 %) moves
    # every 15 ms of command time, so streams cross many of its intervals.
    MarketSpec("TB", tick=1, lot=1, min_qty=1, band_num=10, band_den=1, max_qty=5, max_notional=450,
               collar_num=4, collar_den=1, collar_interval_ms=15),
]
ACCOUNTS = ["a", "b", "c"]
ORDER_IDS = [f"o{i}" for i in range(14)]

specs = st.sampled_from(SPECS)


def _price(spec: MarketSpec) -> st.SearchStrategy[int]:
    on_tick = st.integers(94, 106).map(lambda k: k * spec.tick)
    odd = st.sampled_from([0, -spec.tick, 100 * spec.tick + 1, 97 * spec.tick + 1])
    return st.one_of(on_tick, on_tick, on_tick, on_tick, on_tick, on_tick, odd)


def _qty(spec: MarketSpec) -> st.SearchStrategy[int]:
    valid = st.integers(1, 6).map(lambda k: k * max(spec.lot, spec.min_qty))
    odd = st.sampled_from([0, -spec.lot, spec.lot, spec.lot + 1, 7 * spec.lot])
    return st.one_of(valid, valid, valid, valid, valid, odd)


def _place(spec: MarketSpec) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "kind": st.just("place"),
            "order_id": st.sampled_from(ORDER_IDS),
            "account": st.sampled_from(ACCOUNTS),
            "side": st.sampled_from(list(Side)),
            "order_type": st.sampled_from([OrderType.LIMIT] * 5 + [OrderType.MARKET]),
            "price": _price(spec),
            "qty": _qty(spec),
            "tif": st.sampled_from([TimeInForce.GTC] * 4 + [TimeInForce.IOC, TimeInForce.FOK]),
            "post_only": st.sampled_from([False] * 5 + [True]),
            "stp": st.sampled_from(list(STPMode)),
        }
    )


def _command(spec: MarketSpec) -> st.SearchStrategy[dict[str, Any]]:
    cancel = st.fixed_dictionaries(
        {
            "kind": st.just("cancel"),
            "order_id": st.sampled_from(ORDER_IDS),
            "account": st.sampled_from(ACCOUNTS),
        }
    )
    amend = st.fixed_dictionaries(
        {
            "kind": st.just("amend"),
            "order_id": st.sampled_from(ORDER_IDS),
            "account": st.sampled_from(ACCOUNTS),
            "qty": st.none() | _qty(spec),
            "price": st.none() | _price(spec),
        }
    )
    cancel_all = st.fixed_dictionaries({"kind": st.just("cancel_all"), "account": st.sampled_from(ACCOUNTS)})
    set_state = st.fixed_dictionaries(
        {
            "kind": st.just("set_state"),
            "state": st.sampled_from([MarketState.ACTIVE] * 4 + [MarketState.HALTED, MarketState.POST_ONLY]),
        }
    )
    place = _place(spec)
    return st.one_of(place, place, place, place, place, place, cancel, amend, amend, cancel_all, set_state)


def build(raw: dict[str, Any], ts: int, n: int) -> Command:
    """One generated command dict as a domain command."""
    cid = f"c{n}"
    kind = raw["kind"]
    if kind == "place":
        price = raw["price"] if raw["order_type"] is OrderType.LIMIT else 0
        return Place(
            cid,
            ts,
            raw["order_id"],
            raw["account"],
            raw["side"],
            raw["order_type"],
            price,
            raw["qty"],
            raw["tif"],
            raw["post_only"],
            raw["stp"],
        )
    if kind == "cancel":
        return Cancel(cid, ts, raw["order_id"], raw["account"])
    if kind == "amend":
        return Amend(cid, ts, raw["order_id"], raw["account"], raw["qty"], raw["price"])
    if kind == "cancel_all":
        return CancelAll(cid, ts, raw["account"])
    return SetState(cid, ts, raw["state"])


def generate(spec: MarketSpec, rnd: random.Random, n: int) -> list[Command]:
    """A dense stream: mostly new orders around a drifting mid, cancels/amends of known orders."""
    tick = spec.tick
    unit = max(spec.lot, spec.min_qty)
    placed: list[tuple[str, str]] = []  # (order_id, account) of every place generated
    mid = 100
    ts = 1_000
    out: list[Command] = []
    for i in range(n):
        ts += rnd.choice([0, 1, 1, 1, 2, 5, -2])
        cid = f"c{i}"
        r = rnd.random()
        if r < 0.55 or not placed:
            oid = rnd.choice(placed)[0] if rnd.random() < 0.05 and placed else f"o{i}"
            account = rnd.choice(ACCOUNTS)
            side = rnd.choice([Side.BUY, Side.SELL])
            mid += rnd.choice([-1, 0, 0, 0, 1])
            mid = min(max(mid, 80), 120)
            offset = rnd.choice([-3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 3])
            price = (mid - offset if side is Side.BUY else mid + offset) * tick
            if rnd.random() < 0.05:
                price = rnd.choice([0, -tick, price + 1 if tick > 1 else -1])
            qty = unit * rnd.choice([1, 1, 2, 2, 3, 4, 6])
            if rnd.random() < 0.05:
                qty = rnd.choice([0, -spec.lot, spec.lot + 1, spec.lot])
            order_type = OrderType.MARKET if rnd.random() < 0.1 else OrderType.LIMIT
            tif = rnd.choice([TimeInForce.GTC] * 6 + [TimeInForce.IOC, TimeInForce.FOK])
            post_only = rnd.random() < 0.12
            stp = rnd.choice(list(STPMode))
            out.append(
                Place(
                    cid,
                    ts,
                    oid,
                    account,
                    side,
                    order_type,
                    0 if order_type is OrderType.MARKET else price,
                    qty,
                    tif,
                    post_only,
                    stp,
                )
            )
            placed.append((oid, account))
        elif r < 0.92:
            oid, account = rnd.choice(placed[-8:])
            if rnd.random() < 0.1:
                account = rnd.choice(ACCOUNTS)
            if rnd.random() < 0.05:
                oid = rnd.choice(ORDER_IDS)
            if r < 0.72:
                out.append(Cancel(cid, ts, oid, account))
            else:
                new_qty = None if rnd.random() < 0.4 else unit * rnd.choice([1, 2, 3, 5])
                new_price = (
                    None
                    if (new_qty is not None and rnd.random() < 0.5)
                    else (mid + rnd.randint(-4, 4)) * tick
                )
                if rnd.random() < 0.05:
                    new_qty = rnd.choice([0, spec.lot + 1, -1])
                out.append(Amend(cid, ts, oid, account, new_qty, new_price))
        elif r < 0.97:
            out.append(CancelAll(cid, ts, rnd.choice(ACCOUNTS)))
        else:
            state = rnd.choice([MarketState.ACTIVE] * 4 + [MarketState.HALTED, MarketState.POST_ONLY])
            out.append(SetState(cid, ts, state))
    return out


@st.composite
def command_streams(draw: st.DrawFn, max_size: int = 60) -> tuple[MarketSpec, list[Command]]:
    """A market spec and a random command stream for it (ts mostly rising, sometimes not).

    Half the examples come from Hypothesis-drawn command dicts (shrink well), half from the dense
    seeded generator ``generate`` (realistic books with many trades).
    """
    spec = draw(specs)
    if draw(st.booleans()):
        n = draw(st.integers(1, max_size))
        return spec, generate(spec, draw(st.randoms(use_true_random=False)), n)
    raws = draw(st.lists(_command(spec), min_size=1, max_size=max_size))
    deltas = draw(st.lists(st.integers(-3, 10), min_size=len(raws), max_size=len(raws)))
    ts = 1_000
    out: list[Command] = []
    for n, (raw, delta) in enumerate(zip(raws, deltas, strict=True)):
        ts += delta
        out.append(build(raw, ts, n))
    return spec, out


def command_for(spec: MarketSpec) -> st.SearchStrategy[dict[str, Any]]:
    """Single raw commands (for the stateful test, which assigns ts itself)."""
    return _command(spec)
