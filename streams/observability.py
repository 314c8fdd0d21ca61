"""Logging and metrics shared by every service process.

Logs: structlog, JSON lines on stderr for services (``EXCHANGE_LOG_FORMAT=console`` for people).
Metrics: prometheus-client, served on ``EXCHANGE_METRICS_PORT`` when it is not 0. Metric names
follow ``infra/prometheus/METRICS.md``.
"""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

_configured = False


def configure_logging(level: str = "INFO") -> None:
    global _configured
    if _configured:
        return
    renderer: structlog.typing.Processor
    from streams.settings import SettingsError, load_settings

    try:
        log_format = load_settings().log_format
    except SettingsError:
        log_format = "json"  # the malformed setting is reported by the command, in one line
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    configure_logging()
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def serve_metrics(port: int) -> None:
    if port:
        start_http_server(port)


COMMANDS = Counter("xchg_commands_total", "Commands consumed by the matching engine", ["partition"])
TRADES = Counter("xchg_trades_total", "Trades executed", ["market"])
REJECTS = Counter("xchg_rejects_total", "Commands rejected, by reason", ["reason"])
DEAD_LETTERS = Counter("xchg_dead_letters_total", "Input records sent to the dead-letter topic", ["reason"])
ORDER_LATENCY = Histogram(
    "xchg_order_latency_seconds", "Command log-append time to its transaction's commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
TXN_SECONDS = Histogram("xchg_engine_commit_seconds", "Duration of one batch transaction commit")
RECOVERY_SECONDS = Histogram("xchg_engine_recovery_seconds", "Partition recovery duration",
                             buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120))
OWNED_PARTITIONS = Gauge("xchg_engine_partitions", "Input partitions owned by this instance")

SETTLEMENT_BATCHES = Counter("xchg_settlement_batches_total", "Settlement batches entering a state",
                             ["market", "state"])
SETTLEMENT_GAS_USED = Histogram(
    "xchg_settlement_gas_used", "Gas used by each included settlement batch transaction", ["market"],
    buckets=(100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000),
)
SETTLEMENT_GAS_PRICE = Gauge("xchg_settlement_gas_price_wei",
                             "Effective gas price of the last included settlement transaction", ["market"])
DB_QUERY_SECONDS = Histogram("xchg_db_query_seconds", "Duration of each database statement or COPY", ["operation"],
                             buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
SINK_CIRCUIT = Gauge("xchg_sink_circuit_state", "Database circuit of the sink: 0 closed, 1 open, 2 half-open")
SINK_ROWS = Counter("xchg_sink_rows_total", "Rows written by the sink", ["table"])
SINK_ANOMALIES = Counter("xchg_sink_anomalies_total", "Sequence gaps and duplicates seen by the sink", ["topic", "kind"])
