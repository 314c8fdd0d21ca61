"""What runs the engine on Kafka: the partition state (``PartitionState.process``, the one entry
point from an input record to its outputs), record translation, Kafka clients and their fatal
errors, snapshots, verification of committed streams, crash points for tests."""
