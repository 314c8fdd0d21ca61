// The live page: one MarketFeed (feed.js) for the market in ?market= (default BTC-USD), a book,
// a trade tape, a 1m candle chart (lightweight-charts) and the connection state. Integer units
// are shown with the market's decimals from GET /v1/markets; window.xchgPage exposes the state
// for tests.
"use strict";

const params = new URLSearchParams(location.search);
const MARKET = params.get("market") || "BTC-USD";
const LEVELS = 15, TAPE = 25;
const page = window.xchgPage = { market: MARKET, state: "connecting", bookSeq: null, bestBid: null, bestAsk: null,
                                 lastTradeId: null, lastTradePrice: null, resyncs: 0, candles: 0 };
let decimals = { price: 0, qty: 0 };
const $ = (id) => document.getElementById(id);

function units(value, places) {
  if (value === null || value === undefined) return "-";
  if (!places) return String(value);
  const negative = value < 0, digits = String(Math.abs(value)).padStart(places + 1, "0");
  return (negative ? "-" : "") + digits.slice(0, -places) + "." + digits.slice(-places);
}
const price = (v) => units(v, decimals.price), qty = (v) => units(v, decimals.qty);

function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }

function renderBook(book, stale) {
  const bids = book.bestBids(LEVELS), asks = book.bestAsks(LEVELS), body = $("book").tBodies[0];
  body.replaceChildren();
  for (let i = 0; i < Math.max(bids.length, asks.length); i++) {
    const tr = document.createElement("tr"), b = bids[i], a = asks[i];
    tr.append(cell(b ? qty(b[1]) : ""), cell(b ? price(b[0]) : "", "bid"), cell(a ? price(a[0]) : "", "ask"),
              cell(a ? qty(a[1]) : ""));
    body.append(tr);
  }
  page.bookSeq = book.bookSeq;
  page.bestBid = bids.length ? bids[0][0] : null;
  page.bestAsk = asks.length ? asks[0][0] : null;
  page.stale = stale;
  $("book-seq").textContent = String(book.bookSeq) + (stale ? " (stale)" : "");
  $("best-bid").textContent = price(page.bestBid); $("best-bid").dataset.units = page.bestBid ?? "";
  $("best-ask").textContent = price(page.bestAsk); $("best-ask").dataset.units = page.bestAsk ?? "";
  document.body.classList.toggle("stale", stale);
}

function renderTrade(t) {
  const tr = document.createElement("tr");
  tr.append(cell(String(t.trade_id)), cell(t.side, t.side), cell(price(t.price)), cell(qty(t.qty)));
  const body = $("trades").tBodies[0];
  body.prepend(tr);
  while (body.rows.length > TAPE) body.deleteRow(-1);
  page.lastTradeId = t.trade_id; page.lastTradePrice = t.price;
  $("last-trade").textContent = price(t.price);
  $("last-trade").dataset.units = t.price; $("last-trade").dataset.tradeId = t.trade_id;
}

function setState(state) {
  page.state = state;
  const el = $("state");
  el.textContent = state; el.className = `state ${state}`; el.dataset.state = state;
}

const chart = LightweightCharts.createChart($("chart"), {
  layout: { background: { color: "#10141a" }, textColor: "#d8dee9" },
  grid: { vertLines: { color: "#1e2530" }, horzLines: { color: "#1e2530" } },
  timeScale: { timeVisible: true, secondsVisible: false }, autoSize: true,
});
const series = chart.addSeries(LightweightCharts.CandlestickSeries, {});
const bars = new Map();

function bar(c) {
  const scale = 10 ** decimals.price;  // display only: the book and trades stay integers
  return { time: Math.floor(c.window_start / 1000), open: c.open / scale, high: c.high / scale,
           low: c.low / scale, close: c.close / scale };
}
function renderCandle(c) {
  const b = bar(c), known = bars.has(b.time), last = bars.size ? Math.max(...bars.keys()) : -1;
  bars.set(b.time, b);
  if (b.time >= last) series.update(b);
  else if (!known) series.setData([...bars.values()].sort((x, y) => x.time - y.time));
  page.candles = bars.size;
}

async function start() {
  const select = $("market");
  try {
    const answer = await fetch("/v1/markets", { cache: "no-store" });
    const body = await answer.json();
    for (const m of body.markets) {
      const option = new Option(m.market, m.market, m.market === MARKET, m.market === MARKET);
      select.append(option);
      if (m.market === MARKET) decimals = { price: m.price_decimals, qty: m.qty_decimals };
    }
    const candles = await (await fetch(`/v1/candles/${encodeURIComponent(MARKET)}?interval=1m`)).json();
    for (const c of candles.candles || []) bars.set(bar(c).time, bar(c));
    series.setData([...bars.values()].sort((x, y) => x.time - y.time));
    page.candles = bars.size;
  } catch (e) { /* the feed's own retries take over */ }
  select.onchange = () => { location.search = `?market=${encodeURIComponent(select.value)}`; };
  new XchgFeed.MarketFeed(location.origin, MARKET, (kind, data) => {
    if (kind === "book") renderBook(data.book, data.stale);
    else if (kind === "trade") renderTrade(data);
    else if (kind === "state") setState(data.state);
    else if (kind === "resync") page.resyncs += 1;
    else if (kind === "candle") renderCandle(data);
    else if (kind === "status") $("status").textContent = `market ${data.state}`;
    else if (kind === "ticker") {
      $("change-24h").textContent = price(data.change_24h);
      $("volume-24h").textContent = qty(data.volume_24h);
      if (page.lastTradeId === null && data.last !== null) {
        $("last-trade").textContent = price(data.last);
        $("last-trade").dataset.units = data.last; $("last-trade").dataset.tradeId = data.last_trade_id;
        page.lastTradePrice = data.last; page.lastTradeIdFromTicker = data.last_trade_id;
      }
    }
  });
}
start();
