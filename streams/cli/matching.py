"""``xchg engine run``: the matching processor on Kafka (mounted on the ``engine`` group)."""

from __future__ import annotations

import typer

from streams.cli.errors import fail, guarded
from streams.settings import load_settings


@guarded
def run(
    instance: str | None = typer.Option(None, help="static group member id (default EXCHANGE_ENGINE_INSTANCE_ID)"),
    batch_size: int | None = typer.Option(None, help="commands per transaction at most"),
    linger_ms: int | None = typer.Option(None, help="wait at most this long to fill a batch"),
    snapshot_every: int | None = typer.Option(
        None, help="snapshot a partition (and publish its state hashes) every N commands"),
    hash_every: int | None = typer.Option(
        None, help="publish a partition's state hashes (without a snapshot) every N commands"),
    max_runtime: float | None = typer.Option(None, help="stop after this many seconds"),
    idle_exit: float | None = typer.Option(None, help="stop after this many seconds without input"),
) -> None:
    """Consume orders.commands and match, exactly once, until SIGTERM/SIGINT."""
    from streams.markets import MarketRegistry
    from streams.observability import get_logger, serve_metrics
    from streams.processors.matching import MatchingConfig, MatchingProcessor
    from streams.runtime.clients import ClientFatal
    from streams.runtime.collector import tune_for_streaming
    from streams.serde.codec import Codec

    settings = load_settings()
    config = MatchingConfig(
        bootstrap=settings.bootstrap_servers,
        group_id=settings.engine_group_id,
        instance_id=instance or settings.engine_instance,
        transactional_prefix=settings.engine_transactional_id_prefix,
        batch_size=batch_size or settings.engine_batch_size,
        linger_ms=settings.engine_linger_ms if linger_ms is None else linger_ms,
        snapshot_every=snapshot_every or settings.engine_snapshot_every,
        hash_every=hash_every or settings.engine_hash_every,
        session_timeout_ms=settings.engine_session_timeout_ms,
        max_runtime_s=max_runtime,
        idle_exit_s=idle_exit,
        namespace=settings.namespace,
    )
    serve_metrics(settings.metrics_port)
    processor = MatchingProcessor(config, MarketRegistry.load(settings.markets_file),
                                  Codec(schema_registry_url=settings.schema_registry_url))
    get_logger("matching").info("engine starting", instance=config.instance_id, bootstrap=config.bootstrap)
    tune_for_streaming()
    try:
        processor.run()
    except ClientFatal as error:
        get_logger("matching").error("engine stopping: fatal consumer error", error=str(error))
        raise fail(f"fatal consumer error: {error}", code=error.exit_code) from None
    get_logger("matching").info("engine stopped", processed=processor.throughput.processed)
