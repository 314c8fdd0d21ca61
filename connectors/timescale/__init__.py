"""The analytics sink: trades, order events, candles and L2 snapshots from the topics into
PostgreSQL (TimescaleDB when present), idempotent under replays, with migrations and rebuilds."""
