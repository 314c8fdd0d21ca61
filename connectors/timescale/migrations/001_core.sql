-- Core tables shared by both storage paths. Amounts are integers in the market's units
-- (see infra/markets.yaml): price in 10^-price_decimals quote, qty in 10^-qty_decimals base.

create table if not exists markets (
    symbol          text primary key,
    base            text not null,
    quote           text not null,
    price_decimals  smallint not null,
    qty_decimals    smallint not null,
    tick_size       numeric not null,
    lot_size        numeric not null
);

-- Kafka offsets consumed by a sink, stored in the same transaction as the rows they produced:
-- on start a sink seeks to these, so every record lands exactly once.
create table if not exists kafka_offsets (
    consumer        text   not null,
    topic           text   not null,
    partition       int    not null,
    next_offset     bigint not null,
    updated_at      timestamptz not null default now(),
    primary key (consumer, topic, partition)
);
