"""Property tests of the pure batcher: determinism, partition of the log, conservation, fees."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.settlement.batcher import (
    ZERO32,
    Batch,
    BatchConfig,
    Batcher,
    Chain,
    TradeIn,
    form_batches,
    trade_deltas,
)
from connectors.settlement.economics import MarketUnits, account_address
from streams.serde.codec import Codec
from streams.serde.topics import SETTLEMENT_BATCHES

UNITS = {
    "BTC-USD": MarketUnits("BTC-USD", "BTC", "USD", 10**12, 1),
    "ETH-BTC": MarketUnits("ETH-BTC", "ETH", "BTC", 10**13, 10**7),
}
TOKENS = {"BTC": "0x" + "11" * 20, "ETH": "0x" + "22" * 20, "USD": "0x" + "33" * 20}
CHAIN = Chain(account_address, TOKENS)
ACCOUNTS = [f"acct{i:03d}" for i in range(8)]


@st.composite
def trade_logs(draw: st.DrawFn) -> list[TradeIn]:
    n = draw(st.integers(0, 120))
    next_id = {m: 1 for m in UNITS}
    ts = {m: 1_700_000_000_000 for m in UNITS}
    out = []
    for _ in range(n):
        m = draw(st.sampled_from(sorted(UNITS)))
        ts[m] += draw(st.integers(0, 400))
        maker, taker = draw(st.sampled_from(ACCOUNTS)), draw(st.sampled_from(ACCOUNTS))
        out.append(TradeIn(m, next_id[m], ts[m], draw(st.integers(1, 10**9)), draw(st.integers(1, 10**7)),
                           maker, taker, draw(st.sampled_from(["buy", "sell"]))))
        next_id[m] += 1
    return out


configs = st.builds(BatchConfig, max_trades=st.integers(1, 30), max_age_ms=st.integers(1, 3000),
                    max_deltas=st.integers(5, 20), taker_fee_bps=st.integers(0, 100), fee_account=st.just("fees"))


def by_market(batches: list[Batch]) -> dict[str, list[Batch]]:
    out: dict[str, list[Batch]] = defaultdict(list)
    for b in batches:
        out[b.market].append(b)
    return out


@settings(max_examples=35, deadline=None)
@given(trade_logs(), configs)
def test_replay_reforms_identical_batches(trades: list[TradeIn], config: BatchConfig) -> None:
    first = form_batches(trades, config, UNITS, CHAIN)
    second = form_batches(list(trades), config, UNITS, CHAIN)
    assert first == second
    # Re-delivered trades (a consumer rewind) change nothing.
    batcher = Batcher(config, UNITS, CHAIN)
    out: list[Batch] = []
    for t in trades + trades[: len(trades) // 2]:
        out.extend(batcher.add(t))
    assert out + batcher.flush() == first


@settings(max_examples=35, deadline=None)
@given(trade_logs(), configs)
def test_every_trade_in_exactly_one_contiguous_chained_batch(trades: list[TradeIn], config: BatchConfig) -> None:
    batches = form_batches(trades, config, UNITS, CHAIN)
    for market, chain in by_market(batches).items():
        ids = [t.trade_id for t in trades if t.market == market]
        covered = [i for b in chain for i in range(b.first_trade_id, b.last_trade_id + 1)]
        assert covered == ids
        prev, seq = ZERO32, 0
        for b in chain:
            assert b.prev_batch_hash == prev and b.batch_seq == seq + 1
            assert 1 <= b.trade_count <= config.max_trades
            assert len(b.deltas) <= config.max_deltas
            prev, seq = b.batch_hash, b.batch_seq
    assert sum(b.trade_count for b in batches) == len(trades)


@settings(max_examples=35, deadline=None)
@given(trade_logs(), configs)
def test_deltas_net_to_zero_and_fees_go_to_fee_account(trades: list[TradeIn], config: BatchConfig) -> None:
    batches = form_batches(trades, config, UNITS, CHAIN)
    expected_fees: dict[str, int] = defaultdict(int)
    for t in trades:
        u = UNITS[t.market]
        expected_fees[u.quote] += u.quote_amount(t.price, t.qty) * config.taker_fee_bps // 10_000
    fees: dict[str, int] = defaultdict(int)
    for b in batches:
        per_asset: dict[str, int] = defaultdict(int)
        for account, asset, amount in b.deltas:
            assert amount != 0
            per_asset[asset] += amount
            if account == config.fee_account:
                fees[asset] += amount
        assert all(v == 0 for v in per_asset.values())
        assert list(b.deltas) == sorted(b.deltas)
        assert len({(a, s) for a, s, _ in b.deltas}) == len(b.deltas)
    assert {k: v for k, v in fees.items() if v} == {k: v for k, v in expected_fees.items() if v}


@settings(max_examples=25, deadline=None)
@given(trade_logs(), configs)
def test_batches_equal_sum_of_trade_moves(trades: list[TradeIn], config: BatchConfig) -> None:
    total: dict[tuple[str, str], int] = defaultdict(int)
    for t in trades:
        for a, s, v in trade_deltas(t, UNITS[t.market], config):
            total[(a, s)] += v
    netted: dict[tuple[str, str], int] = defaultdict(int)
    for b in form_batches(trades, config, UNITS, CHAIN):
        for a, s, v in b.deltas:
            netted[(a, s)] += v
    assert {k: v for k, v in total.items() if v} == {k: v for k, v in netted.items() if v}


@settings(max_examples=20, deadline=None)
@given(trade_logs(), configs, st.data())
def test_resume_after_any_batch_matches_uninterrupted(trades: list[TradeIn], config: BatchConfig,
                                                      data: st.DataObject) -> None:
    full = form_batches(trades, config, UNITS, CHAIN)
    if not full:
        return
    cut = data.draw(st.integers(0, len(full) - 1))
    from connectors.settlement.batcher import MarketCursor

    resume: dict[str, MarketCursor] = {}
    for b in full[: cut + 1]:
        resume[b.market] = MarketCursor(b.last_trade_id, b.batch_seq, b.batch_hash)
    batcher = Batcher(config, UNITS, CHAIN, resume)
    out: list[Batch] = []
    for t in trades:  # the whole log again: already batched trades are skipped as duplicates
        out.extend(batcher.add(t))
    out.extend(batcher.flush())
    assert sorted(full[cut + 1:], key=lambda b: (b.market, b.batch_seq)) == sorted(
        out, key=lambda b: (b.market, b.batch_seq))


def test_size_and_age_close_and_avro_round_trip() -> None:
    config = BatchConfig(max_trades=3, max_age_ms=1000)
    t = [TradeIn("BTC-USD", i, 1000 + (0 if i < 5 else 5000), 100, 2, "a", "b", "buy") for i in range(1, 7)]
    batches = form_batches(t, config, UNITS, CHAIN)
    assert [(b.first_trade_id, b.last_trade_id, b.close_reason) for b in batches] == [
        (1, 3, "size"), (4, 4, "age"), (5, 6, "age")]
    codec = Codec()
    for b in batches:
        assert Batch.from_record(codec.decode(SETTLEMENT_BATCHES, codec.encode(SETTLEMENT_BATCHES, b.record()))) == b


def test_gap_in_trade_ids_is_refused() -> None:
    import pytest

    from connectors.settlement.batcher import BatchInputError

    batcher = Batcher(BatchConfig(), UNITS, CHAIN)
    batcher.add(TradeIn("BTC-USD", 1, 0, 1, 1, "a", "b", "buy"))
    with pytest.raises(BatchInputError):
        batcher.add(TradeIn("BTC-USD", 3, 0, 1, 1, "a", "b", "buy"))


def test_batch_hash_matches_the_contract_test_vector() -> None:
    from eth_hash.auto import keccak

    from connectors.settlement import batcher as b

    original = b.market_id
    deltas = [("0x" + "11" * 20, "0x" + "0" * 36 + "aaaa", 5), ("0x" + "22" * 20, "0x" + "0" * 36 + "aaaa", -7),
              ("0x" + "33" * 20, "0x" + "0" * 36 + "aaaa", 2)]
    assert original("BTC-USD") == keccak(b"BTC-USD")
    got = b.batch_hash(keccak(b"prev"), "BTC-USD", 1001, 2000, keccak(b"root"), deltas)
    assert got.hex() == "ebe687c9887bbbb1ef7a12bd49d607a045b823c8573d4f7997577b9d6f356e12"
