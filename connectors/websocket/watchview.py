"""What ``xchg ws watch MARKET`` shows: the client's updates folded into one view, rendered with rich.

Pure: :meth:`WatchView.apply` takes the client's updates (``connectors.websocket.client``) in
order; :func:`render` draws the view. The book and trades stay integers; prices and quantities
are turned into decimal strings only for display, with the market's decimals.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from rich.console import Group
from rich.table import Table
from rich.text import Text

from connectors.websocket.client import (
    BookUpdate,
    ConnectionState,
    Link,
    Resync,
    Status,
    Ticker,
    Trade,
    Update,
)

LINK_LABELS = {Link.CONNECTING: ("connecting", "yellow"), Link.LIVE: ("live", "green"),
               Link.RECONNECTING: ("reconnecting", "yellow"), Link.POLLING: ("polling-stale", "red")}


@dataclass
class WatchView:
    market: str
    levels: int = 10
    trades_kept: int = 15
    book: BookUpdate | None = None
    ticker: Ticker | None = None
    status: Status | None = None
    link: Link = Link.CONNECTING
    reason: str = ""
    resyncs: int = 0
    updates: int = 0
    trades: deque[Trade] = field(default_factory=deque)

    def apply(self, update: Update) -> None:
        self.updates += 1
        if isinstance(update, BookUpdate):
            self.book = update
        elif isinstance(update, Trade):
            self.trades.appendleft(update)
            while len(self.trades) > self.trades_kept:
                self.trades.pop()
        elif isinstance(update, Ticker):
            self.ticker = update
        elif isinstance(update, Status):
            self.status = update
        elif isinstance(update, ConnectionState):
            self.link, self.reason = update.link, update.reason
        elif isinstance(update, Resync):
            self.resyncs += 1

    @property
    def label(self) -> str:
        """The connection state as the terminal shows it (live, reconnecting, polling-stale...)."""
        return LINK_LABELS[self.link][0]


Format = Callable[[int], Decimal | int | str]


def render(view: WatchView, price: Format = str, qty: Format = str) -> Group:
    label, colour = LINK_LABELS[view.link]
    book = view.book
    head = Text.assemble((f"{view.market}  ", "bold"), (label, f"bold {colour}"))
    if book is not None:
        head.append(f"   book_seq {book.book_seq}" + ("  (stale: from REST)" if book.stale else ""))
    if view.status is not None:
        head.append(f"   market {view.status.state}")
    if view.resyncs:
        head.append(f"   resyncs {view.resyncs}")
    if view.link is not Link.LIVE and view.reason:
        head.append(f"\n{view.reason}", style="dim")
    table = Table("bid qty", "bid", "ask", "ask qty", title="book", expand=False)
    bids = list(book.bids[: view.levels]) if book else []
    asks = list(book.asks[: view.levels]) if book else []
    for i in range(max(len(bids), len(asks))):
        bid = bids[i] if i < len(bids) else None
        ask = asks[i] if i < len(asks) else None
        table.add_row(str(qty(bid[1])) if bid else "", Text(str(price(bid[0])), "green") if bid else "",
                      Text(str(price(ask[0])), "red") if ask else "", str(qty(ask[1])) if ask else "")
    tape = Table("trade id", "side", "price", "qty", title="last trades")
    for trade in view.trades:
        tape.add_row(str(trade.trade_id), Text(trade.side, "green" if trade.side == "buy" else "red"),
                     str(price(trade.price)), str(qty(trade.qty)))
    ticker = view.ticker
    if ticker is None:
        tick = Text("ticker: -")
    else:
        def show(value: int | None, fmt: Format) -> str:
            return "-" if value is None else str(fmt(value))

        tick = Text(f"ticker: bid {show(ticker.bid, price)}  ask {show(ticker.ask, price)}  "
                    f"last {show(ticker.last, price)}  24h change {show(ticker.change_24h, price)}  "
                    f"24h volume {qty(ticker.volume_24h)}")
    return Group(head, tick, table, tape)
