"""Local services the project starts itself: Kafka (KRaft, from Maven jars), PostgreSQL (Debian
binaries, a project-owned cluster) and anvil (from npm). Each module owns one service; ``stack``
composes them for ``xchg infra up|down|status|logs``. Nothing here is used when the matching
endpoint is configured externally (``EXCHANGE_KAFKA_BOOTSTRAP`` and friends)."""
