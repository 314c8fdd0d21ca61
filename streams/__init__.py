"""The exchange pipeline's stream side: the domain model, the pure matching engine, the Avro
contracts, the exactly-once stream processors around them, the local services and the ``xchg``
command line."""
