-- Analytics tables of the sink (plain PostgreSQL): candles from md.candles, L2 book snapshots,
-- the sink's book state, and the sequence anomalies it detected. Amounts are integers in market
-- units (see 001_core.sql); decimals appear only in the analyst views (011).

-- OHLCV candles as published by the market-data processor, upserted by (market, interval, start).
-- Not partitioned: one row per market, interval and window (1 440 one-minute rows a day per market).
create table if not exists candles (
    market          text        not null,
    interval        text        not null check (interval in ('1m', '1h', '1d')),
    window_start    timestamptz not null,
    open            bigint      not null,
    high            bigint      not null,
    low             bigint      not null,
    close           bigint      not null,
    volume          bigint      not null,
    quote_volume    numeric(38, 0) not null,
    trade_count     bigint      not null,
    first_trade_id  bigint      not null,
    last_trade_id   bigint      not null,
    final           boolean     not null,
    updated_at      timestamptz not null default now(),
    primary key (market, interval, window_start)
);

-- L2 book snapshots taken by the sink from md.book every book_snapshot interval of event time.
create table if not exists book_snapshots (
    market          text        not null,
    ts              timestamptz not null,
    book_seq        bigint      not null,
    bids            jsonb       not null,   -- [[price, qty], ...] best first, integer units
    asks            jsonb       not null,
    primary key (market, book_seq, ts)
) partition by range (ts);
create table if not exists book_snapshots_default partition of book_snapshots default;
select ensure_daily_partitions('book_snapshots', current_date - 1, 9);

-- The sink's current L2 book per market, stored with the offsets (restart resumes from it).
create table if not exists sink_book_state (
    consumer        text   not null,
    market          text   not null,
    book_seq        bigint not null,
    last_snapshot_bucket bigint not null,
    bids            jsonb  not null,
    asks            jsonb  not null,
    primary key (consumer, market)
);

-- Gaps and duplicates the sink detected in its input (reported, also in logs and metrics).
create table if not exists sink_anomalies (
    id              bigserial primary key,
    consumer        text   not null,
    topic           text   not null,
    market          text   not null,
    kind            text   not null check (kind in ('gap', 'duplicate', 'book_break')),
    expected        bigint,
    got             bigint not null,
    kafka_partition int    not null,
    kafka_offset    bigint not null,
    detected_at     timestamptz not null default now()
);

create index if not exists trades_taker_account on trades (taker_account, ts);
create index if not exists trades_maker_account on trades (maker_account, ts);
