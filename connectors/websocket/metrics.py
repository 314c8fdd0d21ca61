"""Prometheus metrics of a gateway worker (documented in ``infra/prometheus/METRICS.md``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("xchg_ws_connections", "Open WebSocket client connections")
MESSAGES_SENT = Counter("xchg_ws_messages_sent_total", "Messages written to clients", ["channel"])
BYTES_SENT = Counter("xchg_ws_bytes_sent_total", "Payload bytes written to clients", ["channel"])
SLOW_CONSUMERS = Counter("xchg_ws_slow_consumer_disconnects_total", "Connections closed 4008 (send queue overflow)")
CLOSED_BY_POLICY = Counter("xchg_ws_policy_disconnects_total", "Connections closed for abuse", ["reason"])
ERRORS = Counter("xchg_ws_errors_total", "Error messages answered to requests", ["code"])
SEND_QUEUE_FRAMES = Gauge("xchg_ws_send_queue_frames", "Frames queued and not yet written, all connections")
SEND_QUEUE_MAX_BYTES = Gauge("xchg_ws_send_queue_max_bytes", "Largest pending send queue of one connection")
WRITE_FRAMES = Histogram("xchg_ws_write_frames", "Frames coalesced into one socket write",
                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
TRADE_LATENCY = Histogram("xchg_ws_trade_latency_seconds", "From a trade's record time to its write to a client",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
UNSYNCED_MARKETS = Gauge("xchg_ws_unsynced_markets", "Markets whose book is not in sync (not_ready)")
