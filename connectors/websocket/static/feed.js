// The protocol's client rules in the browser (docs/websocket-protocol.md), the same as the Python
// client's (connectors/websocket/clientcore.py and client.py):
// - the local book is valid from a snapshot on, while every update chains (prev_book_seq equals
//   the book's book_seq) and its CRC32 checksum matches; otherwise resubscribe and rebuild it
//   from the next snapshot, ignoring book messages until the new subscription's "subscribed";
// - a heartbeat whose book_seq is above the book's means a lost message: resubscribe;
// - silence longer than the heartbeat timeout means a dead connection: reconnect with capped,
//   fully jittered exponential backoff, and poll the REST endpoints meanwhile (stale book);
// - trades are delivered once each, in trade_id order; a gap is filled from GET /v1/trades.
// Prices and quantities are integers (JavaScript numbers are exact below 2^53).
"use strict";

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 (ISO-HDLC, as zlib.crc32) of an ASCII string, unsigned. */
function crc32(text) {
  let crc = 0xffffffff;
  for (let i = 0; i < text.length; i++) crc = CRC_TABLE[(crc ^ text.charCodeAt(i)) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const CHECKSUM_LEVELS = 10;

/** The protocol's checksum of a book: the best 10 asks ascending, then the best 10 bids descending. */
function bookChecksum(bidsBestFirst, asksBestFirst) {
  let text = "";
  for (const [p, q] of asksBestFirst.slice(0, CHECKSUM_LEVELS)) text += `${p}${q}`;
  for (const [p, q] of bidsBestFirst.slice(0, CHECKSUM_LEVELS)) text += `${p}${q}`;
  return crc32(text);
}

function isInt(v) { return typeof v === "number" && Number.isInteger(v) && v >= 0; }

class LocalBook {
  constructor(market) { this.market = market; this.invalidate(); }
  invalidate() { this.bids = new Map(); this.asks = new Map(); this.bookSeq = null; }
  get valid() { return this.bookSeq !== null; }
  bestBids(n) { return [...this.bids.entries()].sort((a, b) => b[0] - a[0]).slice(0, n); }
  bestAsks(n) { return [...this.asks.entries()].sort((a, b) => a[0] - b[0]).slice(0, n); }
  checksum() { return bookChecksum(this.bestBids(CHECKSUM_LEVELS), this.bestAsks(CHECKSUM_LEVELS)); }

  /** Apply a book message (or a REST snapshot body with snapshot=true): "applied", "gap",
   *  "checksum_mismatch", "no_snapshot" or "malformed"; anything but "applied" invalidates. */
  apply(m) {
    const levels = [m.bids, m.asks];
    if (!isInt(m.book_seq) || !isInt(m.checksum) || !levels.every((side) => Array.isArray(side) &&
        side.every((l) => Array.isArray(l) && l.length === 2 && isInt(l[0]) && isInt(l[1])))) {
      this.invalidate();
      return "malformed";
    }
    if (!m.snapshot) {
      if (!this.valid) return "no_snapshot";
      if (m.prev_book_seq !== this.bookSeq) { this.invalidate(); return "gap"; }
    } else {
      this.bids = new Map(); this.asks = new Map();
    }
    for (const [side, changes] of [[this.bids, m.bids], [this.asks, m.asks]]) {
      for (const [p, q] of changes) { if (q === 0) side.delete(p); else side.set(p, q); }
    }
    if (this.checksum() !== m.checksum) { this.invalidate(); return "checksum_mismatch"; }
    this.bookSeq = m.book_seq;
    return "applied";
  }
}

function backoffDelay(attempt, baseMs, capMs) {
  return Math.random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}

/** One market's feed: calls onUpdate(kind, data) with kind book|trade|ticker|candle|status|state|resync. */
class MarketFeed {
  constructor(baseUrl, market, onUpdate, options = {}) {
    this.http = baseUrl.replace(/\/$/, "");
    this.wsUrl = this.http.replace(/^http/, "ws") + "/v1/ws";
    this.market = market;
    this.onUpdate = onUpdate;
    this.o = { heartbeatTimeoutMs: 3000, backoffBaseMs: 100, backoffCapMs: 5000, pollAfterMs: 1000,
               pollIntervalMs: 500, candleInterval: "1m", ...options };
    this.book = new LocalBook(market);
    this.lastTradeId = null;
    this.state = "connecting";
    this.attempt = 0;
    this.nextId = 0;
    this.downSince = null;
    this.stopped = false;
    this.connect();
  }

  setState(state, reason) {
    if (state === this.state) return;
    this.state = state;
    this.onUpdate("state", { state, reason });
  }

  send(op, channel) {
    const id = ++this.nextId;
    const body = { op, id, channel, market: this.market };
    if (channel === "candles") body.interval = this.o.candleInterval;
    this.ws.send(JSON.stringify(body));
    return id;
  }

  connect() {
    if (this.stopped) return;
    let ws;
    try { ws = new WebSocket(this.wsUrl); } catch (e) { this.down(String(e)); return; }
    this.ws = ws;
    this.pending = new Map();
    this.bookRequest = null;
    this.bookConfirmed = false;
    this.resyncs = 0;
    this.notReady = 0;
    this.book.invalidate();
    ws.onopen = () => {
      for (const channel of ["book", "trades", "ticker", "status", "candles"]) {
        const id = this.send("subscribe", channel);
        this.pending.set(id, channel);
        if (channel === "book") this.bookRequest = id;
      }
      this.touch();
    };
    ws.onmessage = (event) => { this.touch(); this.onMessage(JSON.parse(event.data)); };
    ws.onclose = (event) => { if (this.ws === ws) this.down(`closed ${event.code} ${event.reason}`); };
    ws.onerror = () => {};
  }

  touch() {
    clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(() => this.ws && this.ws.close(4000, "silent connection"),
                                   this.o.heartbeatTimeoutMs);
  }

  down(reason) {
    clearTimeout(this.silenceTimer);
    this.ws = null;
    this.book.invalidate();
    if (this.downSince === null) this.downSince = Date.now();
    if (this.state === "live" || this.state === "connecting") this.setState("reconnecting", reason);
    const delay = backoffDelay(this.attempt++, this.o.backoffBaseMs, this.o.backoffCapMs);
    clearTimeout(this.pollTimer);
    this.pollTimer = setTimeout(() => this.poll(), Math.max(0, this.downSince + this.o.pollAfterMs - Date.now()));
    setTimeout(() => this.connect(), delay);
  }

  resync(reason, ws) {
    this.resyncs += 1;
    this.onUpdate("resync", { reason, bookSeq: this.book.bookSeq });
    if (this.resyncs > 5) { ws.close(4000, "resyncing in a loop"); return; }
    this.book.invalidate();
    this.send("unsubscribe", "book");
    this.bookRequest = this.send("subscribe", "book");
    this.pending.set(this.bookRequest, "book");
    this.bookConfirmed = false;
  }

  live() {
    this.attempt = 0;
    this.downSince = null;
    clearTimeout(this.pollTimer);
    this.setState("live", "streaming");
  }

  async onMessage(m) {
    const ws = this.ws;
    switch (m.type) {
      case "book": {
        if (!this.bookConfirmed || m.market !== this.market) return;
        const verdict = this.book.apply(m);
        if (verdict === "applied") {
          if (this.state !== "live") this.live();
          this.onUpdate("book", { book: this.book, stale: false, snapshot: m.snapshot });
        } else {
          this.resync(verdict, ws);
        }
        return;
      }
      case "trade": return this.onTrade(m, "ws");
      case "heartbeat": {
        const seq = m.book_seq && m.book_seq[this.market];
        if (this.bookConfirmed && this.book.valid && isInt(seq) && seq > this.book.bookSeq) this.resync("heartbeat", ws);
        return;
      }
      case "subscribed": {
        const channel = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (channel === "book") this.bookConfirmed = true;
        if (channel === "trades" && this.lastTradeId !== null) await this.backfill(null);
        return;
      }
      case "not_ready": {
        const channel = this.pending.get(m.id);
        if (channel === undefined) return;
        this.pending.delete(m.id);
        if (++this.notReady > 2) { ws.close(4000, "not ready"); return; }
        setTimeout(() => {
          if (this.ws !== ws) return;
          const id = this.send("subscribe", channel);
          this.pending.set(id, channel);
          if (channel === "book") this.bookRequest = id;
        }, Math.min(2000, m.retry_after_ms || 500));
        return;
      }
      case "ticker": this.onUpdate("ticker", m); return;
      case "candle": this.onUpdate("candle", m); return;
      case "status": this.onUpdate("status", m); return;
      default: return;
    }
  }

  async onTrade(m, source) {
    if (this.lastTradeId !== null && m.trade_id <= this.lastTradeId) return;  // a duplicate
    if (this.lastTradeId !== null && m.trade_id > this.lastTradeId + 1 && source === "ws") await this.backfill(m.trade_id);
    if (this.lastTradeId !== null && m.trade_id <= this.lastTradeId) return;
    this.lastTradeId = m.trade_id;
    this.onUpdate("trade", { ...m, source });
  }

  async getJson(path) {
    try {
      const answer = await fetch(this.http + path, { cache: "no-store" });
      return answer.ok ? await answer.json() : null;
    } catch (e) { return null; }
  }

  async backfill(before) {
    const body = await this.getJson(`/v1/trades/${encodeURIComponent(this.market)}?since_trade_id=${this.lastTradeId}`);
    if (!body || !Array.isArray(body.trades)) return;
    for (const t of body.trades) {
      if (before !== null && t.trade_id >= before) break;
      if (t.trade_id === this.lastTradeId + 1) { this.lastTradeId = t.trade_id; this.onUpdate("trade", { ...t, source: "rest" }); }
    }
  }

  async poll() {
    if (this.state === "live" || this.stopped) return;
    const market = encodeURIComponent(this.market);
    const [book, tickers] = await Promise.all([this.getJson(`/v1/book/${market}`),
                                               this.getJson(`/v1/ticker?market=${market}`)]);
    if (this.state === "live") return;  // the socket came back meanwhile: its snapshot wins
    if (book && this.book.apply({ ...book, snapshot: true }) === "applied") {
      this.setState("polling-stale", "the WebSocket is down: books from REST");
      this.onUpdate("book", { book: this.book, stale: true, snapshot: true });
    }
    if (tickers && tickers.tickers && tickers.tickers[0]) {
      const ticker = tickers.tickers[0];
      if (this.lastTradeId === null && isInt(ticker.last_trade_id)) this.lastTradeId = ticker.last_trade_id;
      this.onUpdate("ticker", ticker);
    }
    if (this.lastTradeId !== null) await this.backfill(null);
    if (this.state !== "live") this.pollTimer = setTimeout(() => this.poll(), this.o.pollIntervalMs);
  }
}

window.XchgFeed = { crc32, bookChecksum, LocalBook, MarketFeed, backoffDelay };
