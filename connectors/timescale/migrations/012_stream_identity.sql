-- Which stream the database holds, who may write it, and where each journal row came from
-- (connectors/timescale/binding.py, lease.py). Plain SQL that both storage paths accept: new
-- tables, and nullable columns added to the trades and order_events tables / hypertables.

-- The stream the rows and the stored offsets belong to: one row per input topic, written by the
-- first sink into an empty database (or by `xchg db rebuild` from the beginning). A sink whose
-- Kafka cluster, namespace or topic ids differ refuses to write (the offsets in kafka_offsets
-- are positions in exactly these topics, and the tables' keys do not say which stream a row is of).
create table if not exists stream_binding (
    logical         text primary key,            -- trades, orders.events, md.candles, md.book
    topic           text not null,               -- physical name: namespace prefix + logical
    namespace       text not null,               -- the prefix ('' = no prefix)
    topic_id        text not null,               -- Kafka topic id: a recreated topic has a new one
    cluster_id      text not null,               -- Kafka cluster id
    bound_by        text not null,               -- sink name (or rebuild) that recorded it
    bound_at        timestamptz not null default now()
);

-- Fencing epoch per sink name: bumped by every new holder of the sink's lock (and for every name
-- by `xchg db rebuild`); a sink that lost its connection takes its lock back only if the epoch is
-- still the one it got, otherwise it stops.
create table if not exists sink_leases (
    consumer        text primary key,
    epoch           bigint not null,
    holder          text not null,               -- application_name of the session that took it
    acquired_at     timestamptz not null default now()
);

-- BLAKE2b-128 of the Kafka record value a row was written from: a record with the key of a
-- stored row is a duplicate only when it is byte for byte that record (null: a row written
-- before this migration; then the columns are compared).
alter table trades add column if not exists record_digest bytea;
alter table order_events add column if not exists record_digest bytea;

-- The next part expected of an md.book delta split into parts (null: the stored book is
-- consistent at book_seq), so a sink stopped between two parts resumes the split exactly.
alter table sink_book_state add column if not exists pending_part int;
