-- Settlement submitter state (connectors/settlement/submitter.py). One row per batch per
-- deployment (the Settlement contract address namespaces everything, so test deployments and a
-- live one share the database without touching each other's rows).

create table if not exists settlement_batches (
    deployment      text     not null,           -- Settlement contract address (checksummed)
    market          text     not null,
    batch_seq       bigint   not null,
    first_trade_id  bigint   not null,
    last_trade_id   bigint   not null,
    batch_hash      bytea    not null,
    record          bytea    not null,           -- the settlement.batches Avro value, as consumed
    state           text     not null,           -- BUILT SUBMITTED INCLUDED FINALIZED REPLACED REORGED FAILED ALERT
    bumps           int      not null default 0,
    nonce           bigint,
    tx_hash         bytea,                       -- current submission
    sent_block      bigint,                      -- chain tip when the current submission was sent
    max_fee_per_gas numeric,
    priority_fee    numeric,
    block_number    bigint,
    block_hash      bytea,
    gas_used        bigint,
    reason          text,
    updated_at      timestamptz not null default now(),
    primary key (deployment, market, batch_seq)
);

-- Every signed transaction, written before it is broadcast (write-ahead): after a crash the
-- submitter looks for a receipt of any of them and re-broadcasts the current one if none exists.
create table if not exists settlement_txs (
    tx_hash         bytea    primary key,
    deployment      text     not null,
    market          text     not null,
    batch_seq       bigint   not null,
    sender          text     not null,
    nonce           bigint   not null,
    max_fee_per_gas numeric  not null,
    priority_fee    numeric  not null,
    gas_limit       bigint   not null,
    raw             bytea    not null,
    created_at      timestamptz not null default now()
);
create index if not exists settlement_txs_batch on settlement_txs (deployment, market, batch_seq);

-- Every state transition (also emitted to settlement.status; emitted = produced and flushed).
create table if not exists settlement_transitions (
    id              bigserial primary key,
    deployment      text     not null,
    market          text     not null,
    batch_seq       bigint   not null,
    state           text     not null,
    record          bytea    not null,           -- the settlement.status Avro value
    emitted         boolean  not null default false,
    created_at      timestamptz not null default now()
);
create index if not exists settlement_transitions_pending on settlement_transitions (deployment) where not emitted;

-- Senders: one active submitter per key (advisory lock on the address) and a fencing epoch,
-- bumped by each new holder; writes of a stale holder are refused.
create table if not exists settlement_senders (
    address         text     primary key,
    epoch           bigint   not null default 0,
    next_nonce      bigint   not null default 0,
    updated_at      timestamptz not null default now()
);

-- Markets whose settlement is halted after a FAILED batch, until `xchg settle resume MARKET`.
create table if not exists settlement_halts (
    deployment      text     not null,
    market          text     not null,
    batch_seq       bigint   not null,
    reason          text     not null,
    halted_at       timestamptz not null default now(),
    primary key (deployment, market)
);
