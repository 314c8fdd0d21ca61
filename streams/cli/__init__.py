"""The ``xchg`` command line: one entry point for every operation.

Each command group lives in its own module of this package and is mounted here. Commands never
print a traceback for an expected failure: they raise ``typer.Exit`` after a one-line error
(see ``streams.cli.errors``).
"""

from __future__ import annotations

import typer

from streams.cli import (
    bench,
    db,
    demo,
    engine,
    infra,
    loadgen,
    market,
    marketdata,
    matching,
    settle,
    sink,
    ticker,
    topics,
    verify,
    ws,
)

app = typer.Typer(
    name="xchg",
    help="Kafka-streaming exchange pipeline: matching, sinks, settlement and operations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(infra.app, name="infra")
app.add_typer(topics.app, name="topics")
app.add_typer(db.app, name="db")
engine.app.command("run")(matching.run)
app.add_typer(engine.app, name="engine")
app.add_typer(market.app, name="market")
app.add_typer(verify.app, name="verify")
app.command("loadgen")(loadgen.loadgen)
app.command("demo")(demo.demo)
app.add_typer(marketdata.app, name="marketdata")
app.add_typer(ticker.app, name="ticker")
app.add_typer(sink.app, name="sink")
app.add_typer(settle.app, name="settle")
app.add_typer(bench.app, name="bench")
app.add_typer(ws.app, name="ws")
