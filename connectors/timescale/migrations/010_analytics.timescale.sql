-- Analytics tables of the sink (TimescaleDB): the same columns and keys as 010_analytics.plain.sql;
-- candles and book snapshots are hypertables with columnstore compression and retention.

create table candles (
    market text not null, interval text not null check (interval in ('1m', '1h', '1d')),
    window_start timestamptz not null, open bigint not null, high bigint not null, low bigint not null,
    close bigint not null, volume bigint not null, quote_volume numeric(38, 0) not null,
    trade_count bigint not null, first_trade_id bigint not null, last_trade_id bigint not null,
    final boolean not null, updated_at timestamptz not null default now(),
    primary key (market, interval, window_start)
);
select create_hypertable('candles', by_range('window_start', interval '30 days'));
alter table candles set (timescaledb.enable_columnstore = true, timescaledb.segmentby = 'market, interval');
call add_columnstore_policy('candles', after => interval '30 days');

create table book_snapshots (
    market text not null, ts timestamptz not null, book_seq bigint not null,
    bids jsonb not null, asks jsonb not null,
    primary key (market, book_seq, ts)
);
select create_hypertable('book_snapshots', by_range('ts', interval '1 day'));
alter table book_snapshots set (timescaledb.enable_columnstore = true, timescaledb.segmentby = 'market');
call add_columnstore_policy('book_snapshots', after => interval '2 days');
select add_retention_policy('book_snapshots', interval '30 days');

create table sink_book_state (
    consumer text not null, market text not null, book_seq bigint not null,
    last_snapshot_bucket bigint not null, bids jsonb not null, asks jsonb not null,
    primary key (consumer, market)
);

create table sink_anomalies (
    id bigserial primary key, consumer text not null, topic text not null, market text not null,
    kind text not null check (kind in ('gap', 'duplicate', 'book_break')),
    expected bigint, got bigint not null, kafka_partition int not null, kafka_offset bigint not null,
    detected_at timestamptz not null default now()
);

create index trades_taker_account on trades (taker_account, ts);
create index trades_maker_account on trades (maker_account, ts);

-- Further intervals for analysts, maintained by TimescaleDB from the 1-minute candles.
create materialized view candles_15m with (timescaledb.continuous) as
select market, time_bucket(interval '15 minutes', window_start) as window_start,
       first(open, window_start) as open, max(high) as high, min(low) as low,
       last(close, window_start) as close, sum(volume)::bigint as volume,
       sum(quote_volume) as quote_volume, sum(trade_count)::bigint as trade_count,
       min(first_trade_id) as first_trade_id, max(last_trade_id) as last_trade_id
from candles where interval = '1m'
group by market, time_bucket(interval '15 minutes', window_start)
with no data;
select add_continuous_aggregate_policy('candles_15m', start_offset => interval '2 days',
    end_offset => interval '1 minute', schedule_interval => interval '1 minute');
