"""``xchg demo``: the main job end to end on the local services, with a short summary.

1. produce a seeded order flow to ``orders.commands`` (idempotent, murmur2-keyed producer);
2. run the matching engine (exactly-once transactions) until it has consumed everything;
3. read the committed outputs back (``read_committed``) and check their sequences;
4. print commands per second, trades per second and a sample of trades;
5. candles (faust) and the database sink, then a sample OHLCV query as the analyst role;
6. settle the new trades on the local chain: batch, submit, finalize, reconcile;
7. the WebSocket gateway (``xchg ws serve``), started before the flow as a detached process that
   keeps running after the demo, so the live page and ``xchg ws watch`` follow the demo's flow.

Each run uses a new seed (the current size of the input log), so order ids never repeat across runs.
"""

from __future__ import annotations

import sys
import time
import urllib.request

import typer
from rich.console import Console
from rich.table import Table

from streams.cli.errors import fail, guarded
from streams.settings import load_settings

console = Console(highlight=False)


GATEWAY_READY_S = 60.0


def _gateway_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start_gateway() -> str | None:
    """Start ``xchg ws serve`` detached (PID file and log under ``.run/ws-gateway/``) unless it
    answers already; its URL once it answers /healthz, None when it does not."""
    from streams.services.stack import demo_gateway

    settings = load_settings()
    url = f"http://{settings.ws_host}:{settings.ws_port}"
    process = demo_gateway(settings)
    home = process.pid_file.parent
    if not _gateway_answers(url):
        if not process.running():
            process.start([sys.executable, "-m", "streams.cli", "ws", "serve"])
        deadline = time.monotonic() + GATEWAY_READY_S
        while not _gateway_answers(url):
            if time.monotonic() > deadline or not process.running():
                console.print(f"[yellow]the WebSocket gateway does not answer on {url}: see {home / 'gateway.log'}"
                              "[/yellow]")
                return None
            time.sleep(0.2)
    return url


@guarded
def demo(commands: int = typer.Option(20_000, help="commands to produce"),
         rate: float = typer.Option(0.0, help="commands per second (0 = as fast as possible)"),
         gateway: bool = typer.Option(True, "--gateway/--no-gateway",
                                      help="start the WebSocket gateway (live page, xchg ws watch)")) -> None:
    """Produce orders, match them exactly once, read the results back, print a summary."""
    from streams.loadgen import OrderFlow, produce_flow
    from streams.markets import MarketRegistry
    from streams.processors.matching import MatchingConfig, MatchingProcessor
    from streams.runtime.clients import make_producer
    from streams.runtime.reader import read_range, standalone_consumer, topic_partitions, watermarks
    from streams.runtime.verify import check_outcomes, check_streams
    from streams.serde.codec import Codec
    from streams.serde.topics import ORDERS_COMMANDS, TRADES
    from streams.services.kafka import KafkaCluster

    settings = load_settings()
    ns = settings.namespace
    bootstrap = KafkaCluster(settings).bootstrap_servers()
    registry = MarketRegistry.load(settings.markets_file)
    codec = Codec(schema_registry_url=settings.schema_registry_url)
    probe = standalone_consumer(bootstrap)
    partitions = len(topic_partitions(probe, ns(ORDERS_COMMANDS)))
    if not partitions:
        raise fail("topic orders.commands is missing: run `xchg topics apply`")
    seed = sum(watermarks(probe, ns(ORDERS_COMMANDS), p)[1] for p in range(partitions))
    trades_before = {p: watermarks(probe, ns(TRADES), p)[1] for p in range(partitions)}

    gateway_url = None
    if gateway:
        console.rule("0. WebSocket gateway (xchg ws serve)")
        gateway_url = start_gateway()
        if gateway_url:
            console.print(f"market data on {gateway_url} (live page: {gateway_url}/ ), following the flow below")

    console.rule("1. order flow → orders.commands")
    flow = OrderFlow([m.spec() for m in registry], seed)
    load = produce_flow(make_producer(bootstrap), codec, flow, commands, rate or None, ns=ns)
    console.print(f"produced {load.sent} commands in {load.seconds:.2f}s over {len(load.per_market)} markets")

    console.rule("2. matching engine (exactly-once transactions)")
    processor = MatchingProcessor(
        MatchingConfig(bootstrap=bootstrap, group_id=settings.engine_group_id, instance_id="demo",
                       transactional_prefix=settings.engine_transactional_id_prefix, idle_exit_s=3.0,
                       snapshot_every=settings.engine_snapshot_every,
                       namespace=ns),
        registry, codec)
    started = time.monotonic()
    processor.run()
    # Matching time: first to last commit (group join and the idle wait that ended the run excluded).
    first, last = processor.throughput.first_commit, processor.throughput.last_commit
    busy = max(last[0] - first[0], 1e-3) if first and last else max(time.monotonic() - started, 1e-3)
    console.print(f"processed {processor.throughput.processed} commands; {processor.throughput.processed / busy:,.0f} commands/s "
                  f"between the first and the last commit, exactly-once")

    console.rule("3. results, read back with read_committed")
    new_trades = []
    for p in range(partitions):
        high = watermarks(probe, ns(TRADES), p)[1]
        new_trades += [codec.decode(TRADES, m.value())
                       for m in read_range(probe, ns(TRADES), p, trades_before[p], high)]
    probe.close()
    console.print(f"{len(new_trades)} trades ({len(new_trades) / busy:,.0f} trades/s)")
    table = Table("market", "trade id", "price", "qty", "taker side", "maker", "taker")
    for trade in sorted(new_trades, key=lambda t: (t["market"], t["trade_id"]))[:8]:
        market = registry.get(trade["market"])
        table.add_row(trade["market"], str(trade["trade_id"]), str(market.price(trade["price"])),
                      str(market.qty(trade["qty"])), trade["taker_side"], trade["maker_order_id"],
                      trade["taker_order_id"])
    console.print(table)
    report = check_streams(bootstrap, codec, ns)
    outcomes = check_outcomes(bootstrap, codec, ns)
    console.print(f"orders.events: {report.events.seen} events, {len(report.events.gaps)} gaps, "
                  f"{report.events.duplicates} duplicates; trades: {len(report.trades.gaps)} gaps, "
                  f"{report.trades.duplicates} duplicates; commands without exactly one outcome: "
                  f"{len(outcomes.missing) + len(outcomes.duplicated)}")
    if not (report.clean and outcomes.clean):
        raise fail("the committed outputs are not exactly-once: see `xchg verify stream --outcomes`")

    console.rule("4. candles and the analytics database")
    from connectors.timescale.demo import ingest_and_report

    console.print(ingest_and_report(settings), markup=False)

    console.rule("5. settlement on the local chain")
    from connectors.settlement.demo import settle_and_report

    console.print(settle_and_report(settings), markup=False)
    if gateway_url:
        console.rule("6. live market data")
        console.print(f"WebSocket gateway: {gateway_url}  (open {gateway_url}/ in a browser, or run "
                      "`.venv/bin/xchg ws watch BTC-USD`); protocol: docs/websocket-protocol.md; it keeps "
                      "running until `make down` (`xchg infra down`)", markup=False)
    console.print("[green]demo complete[/green]")
