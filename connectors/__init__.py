"""Adapters from the committed topics to the outside world: the PostgreSQL/TimescaleDB sink,
settlement on an EVM chain and the WebSocket market-data gateway."""
