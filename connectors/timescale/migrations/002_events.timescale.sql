-- TimescaleDB: trades and the event journal as hypertables (daily chunks) with columnstore
-- compression and 90-day retention; the same columns and keys as the plain path.

create table trades (
    market text not null, trade_id bigint not null, ts timestamptz not null, seq bigint not null,
    price bigint not null, qty bigint not null, maker_order_id text not null, maker_account text not null,
    taker_order_id text not null, taker_account text not null,
    taker_side text not null check (taker_side in ('buy', 'sell')),
    primary key (market, trade_id, ts)
);
select create_hypertable('trades', by_range('ts', interval '1 day'));
alter table trades set (timescaledb.enable_columnstore = true, timescaledb.segmentby = 'market');
call add_columnstore_policy('trades', after => interval '7 days');
select add_retention_policy('trades', interval '90 days');

create table order_events (
    market text not null, seq bigint not null, ts timestamptz not null, command_id text not null,
    event_type text not null, order_id text, account text, payload jsonb not null,
    primary key (market, seq, ts)
);
select create_hypertable('order_events', by_range('ts', interval '1 day'));
alter table order_events set (timescaledb.enable_columnstore = true, timescaledb.segmentby = 'market');
call add_columnstore_policy('order_events', after => interval '7 days');
select add_retention_policy('order_events', interval '90 days');
