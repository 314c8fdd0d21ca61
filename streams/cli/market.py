"""``xchg market halt|resume|post-only|cancel-all``: the kill switch.

Admin commands travel in ``orders.commands`` under the market key, so they are ordered with the
orders they affect and replayed like them. ``--all`` sends one command per registry market.
"""

from __future__ import annotations

import uuid

import typer
from rich.console import Console

from streams.cli.errors import fail, guarded
from streams.settings import load_settings

app = typer.Typer(help="Kill switch: halt, resume, post-only and cancel-all per market.", no_args_is_help=True)
console = Console(highlight=False)


def _send(markets: list[str], make: object) -> None:
    from streams.domain.commands import Command
    from streams.runtime.clients import make_producer
    from streams.runtime.records import command_to_record
    from streams.serde.codec import Codec
    from streams.serde.topics import ORDERS_COMMANDS

    settings = load_settings()
    codec = Codec(schema_registry_url=settings.schema_registry_url)
    producer = make_producer(settings.bootstrap_servers)
    assert callable(make)
    for market in markets:
        command: Command = make(f"admin-{uuid.uuid4().hex}")
        producer.produce(settings.namespace(ORDERS_COMMANDS), codec.encode(ORDERS_COMMANDS, command_to_record(market, command)),
                         market.encode())
    remaining = producer.flush(30)
    if remaining:
        raise fail(f"{remaining} admin command(s) not acknowledged by Kafka within 30 s")
    for market in markets:
        console.print(f"sent to {market}")


def _markets(market: str | None, all_markets: bool) -> list[str]:
    from streams.markets import MarketRegistry

    registry = MarketRegistry.load(load_settings().markets_file)
    if all_markets:
        return registry.symbols()
    if market is None:
        raise fail("name a MARKET or pass --all")
    if market == "*":
        raise fail("there is no market '*': pass --all to send the command to every market")
    registry.get(market)  # unknown market → one-line error
    return [market]


def _state_command(state_name: str):  # type: ignore[no-untyped-def]
    @guarded
    def command(market: str | None = typer.Argument(None, help="market symbol, e.g. BTC-USD"),
                all_markets: bool = typer.Option(False, "--all", help="every market of the registry")) -> None:
        from streams.domain.commands import MarketState, SetState

        state = MarketState.from_wire(state_name)
        _send(_markets(market, all_markets), lambda cid: SetState(cid, 0, state))

    command.__doc__ = f"Set the market state to {state_name} (ordered with the market's orders)."
    return command


app.command("halt")(_state_command("halted"))
app.command("resume")(_state_command("active"))
app.command("post-only")(_state_command("post_only"))


@app.command("cancel-all")
@guarded
def cancel_all(market: str | None = typer.Argument(None, help="market symbol"),
               account: str = typer.Option(..., help="account whose resting orders are cancelled"),
               all_markets: bool = typer.Option(False, "--all", help="every market of the registry")) -> None:
    """Cancel every resting order of an account in a market."""
    from streams.domain.commands import CancelAll

    _send(_markets(market, all_markets), lambda cid: CancelAll(cid, 0, account))
