-- Analyst-facing views, identical on both storage paths (docs/analysts.md documents every column).
-- Tables keep integers in market units; these views add decimals:
--   price_dec    = price / 10^price_decimals   (quote asset per 1 base asset, e.g. USD per BTC)
--   qty_dec      = qty   / 10^qty_decimals     (base asset, e.g. BTC)
--   quote_dec    = price * qty / 10^(price_decimals + qty_decimals)  (quote asset)
-- A market missing from the markets table gets 0 decimals (the integers are shown unscaled).

create or replace function xchg_scale(value numeric, decimals int) returns numeric
language sql immutable parallel safe as $$
    select round(value / (10::numeric ^ coalesce(decimals, 0)), coalesce(decimals, 0))
$$;

create or replace view v_trades as
select t.market, t.trade_id, t.ts, t.seq,
       t.price, t.qty,
       xchg_scale(t.price, m.price_decimals) as price_dec,
       xchg_scale(t.qty, m.qty_decimals) as qty_dec,
       xchg_scale(t.price::numeric * t.qty, m.price_decimals + m.qty_decimals) as quote_dec,
       t.taker_side, t.taker_account, t.taker_order_id, t.maker_account, t.maker_order_id,
       m.base, m.quote
from trades t left join markets m on m.symbol = t.market;

create or replace view v_fills as
select t.market, t.trade_id, t.ts, t.taker_account as account, t.taker_order_id as order_id,
       'taker'::text as liquidity, t.taker_side as side,
       t.price, t.qty, t.price_dec, t.qty_dec, t.quote_dec, t.base, t.quote
from v_trades t
union all
select t.market, t.trade_id, t.ts, t.maker_account, t.maker_order_id,
       'maker', case t.taker_side when 'buy' then 'sell' else 'buy' end,
       t.price, t.qty, t.price_dec, t.qty_dec, t.quote_dec, t.base, t.quote
from v_trades t;

create or replace view v_candles as
select c.market, c.interval, c.window_start,
       c.window_start + case c.interval when '1m' then interval '1 minute'
                                         when '1h' then interval '1 hour' else interval '1 day' end as window_end,
       c.open, c.high, c.low, c.close, c.volume, c.quote_volume,
       xchg_scale(c.open, m.price_decimals) as open_dec,
       xchg_scale(c.high, m.price_decimals) as high_dec,
       xchg_scale(c.low, m.price_decimals) as low_dec,
       xchg_scale(c.close, m.price_decimals) as close_dec,
       xchg_scale(c.volume, m.qty_decimals) as volume_dec,
       xchg_scale(c.quote_volume, m.price_decimals + m.qty_decimals) as quote_volume_dec,
       c.trade_count, c.first_trade_id, c.last_trade_id, c.final
from candles c left join markets m on m.symbol = c.market;

create or replace view v_order_events as
select e.market, e.seq, e.ts, e.command_id, e.event_type, e.order_id, e.account, e.payload
from order_events e;

create or replace view v_book_snapshots as
select b.market, b.ts, b.book_seq, b.bids, b.asks,
       xchg_scale((b.bids -> 0 ->> 0)::numeric, m.price_decimals) as best_bid_dec,
       xchg_scale((b.asks -> 0 ->> 0)::numeric, m.price_decimals) as best_ask_dec
from book_snapshots b left join markets m on m.symbol = b.market;
