-- Plain PostgreSQL: trades and the event journal as daily declarative partitions created ahead
-- of time; retention by dropping whole partitions. ensure_daily_partitions is idempotent; the sink
-- calls it as days roll over.

-- Trades: one row per trade, idempotency key (market, trade_id, ts): the event time is part of
-- the key so a partitioned table (or hypertable) can enforce it.
create table if not exists trades (
    market          text   not null,
    trade_id        bigint not null,
    ts              timestamptz not null,
    seq             bigint not null,
    price           bigint not null,
    qty             bigint not null,
    maker_order_id  text   not null,
    maker_account   text   not null,
    taker_order_id  text   not null,
    taker_account   text   not null,
    taker_side      text   not null check (taker_side in ('buy', 'sell')),
    primary key (market, trade_id, ts)
) partition by range (ts);

-- The engine journal (order events), key (market, seq, ts).
create table if not exists order_events (
    market          text   not null,
    seq             bigint not null,
    ts              timestamptz not null,
    command_id      text   not null,
    event_type      text   not null,
    order_id        text,
    account         text,
    payload         jsonb  not null,
    primary key (market, seq, ts)
) partition by range (ts);


create or replace function ensure_daily_partitions(parent regclass, first_day date, days int)
returns int language plpgsql as $$
declare
    day date;
    created int := 0;
    child text;
begin
    for i in 0 .. days - 1 loop
        day := first_day + i;
        child := format('%s_p%s', parent::text, to_char(day, 'YYYYMMDD'));
        if to_regclass(child) is null then
            execute format('create table %I partition of %s for values from (%L) to (%L)',
                           child, parent, day::timestamptz, (day + 1)::timestamptz);
            created := created + 1;
        end if;
    end loop;
    return created;
end $$;

create or replace function drop_partitions_before(parent regclass, cutoff date)
returns int language plpgsql as $$
declare
    part record;
    dropped int := 0;
begin
    for part in
        select c.oid::regclass as child, to_date(right(c.relname, 8), 'YYYYMMDD') as day
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = parent and c.relname ~ '_p[0-9]{8}$'
    loop
        if part.day < cutoff then
            execute format('drop table %s', part.child);
            dropped := dropped + 1;
        end if;
    end loop;
    return dropped;
end $$;

-- A default partition catches rows outside the created range instead of failing the sink.
create table if not exists trades_default partition of trades default;
create table if not exists order_events_default partition of order_events default;

select ensure_daily_partitions('trades', current_date - 1, 9);
select ensure_daily_partitions('order_events', current_date - 1, 9);
