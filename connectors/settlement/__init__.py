"""Settlement on an EVM L2: the batcher turns trades into settlement batches (exactly once, on
Kafka), the submitter sends them to the contract and follows them to finality, the reconciler
checks the chain against the trades."""
