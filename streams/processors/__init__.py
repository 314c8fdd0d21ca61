"""The stream processors: matching (the engine under exactly-once Kafka transactions) and the
derived market data (candles, ticker), each a pure fold under a thin Kafka loop."""
