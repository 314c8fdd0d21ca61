"""Process settings: one frozen object per process, read from ``EXCHANGE_*`` environment variables.

Every port, data directory and endpoint of the pipeline is a field here, so two checkouts can run
side by side by changing the environment alone. Secrets are ``SecretStr`` and print as ``**********``.
Malformed values fail at start-up with a one-line message naming the variable (see
``load_settings``), never with a traceback.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.errors import OperatorError
from streams.runtime.namespace import Namespace

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class SettingsError(OperatorError, ValueError):
    """Configuration that cannot be used; the message names the variable and the fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXCHANGE_", frozen=True, extra="ignore")

    # Where the project keeps PIDs, logs and service data (git-ignored).
    runtime_dir: Path = Field(default=PROJECT_ROOT / ".run")
    topics_file: Path = Field(default=PROJECT_ROOT / "infra" / "kafka" / "topics.yaml")
    markets_file: Path = Field(default=PROJECT_ROOT / "infra" / "markets.yaml")

    # Kafka. An explicit bootstrap list means "use that cluster, start nothing".
    kafka_bootstrap: str | None = None
    kafka_port: int = Field(default=19092, ge=1024, le=65000)
    kafka_controller_port: int = Field(default=19093, ge=1024, le=65000)
    kafka_heap: str = "3g"  # ZGC's headroom: ~250 MB live, cycles every ~25 s under load
    # Broker JIT: C1 only (quick to compile, code somewhat slower) or the JVM's tiered C1+C2.
    # C2 compiling the broker's hot paths took CPU from everything else on 2 cores for minutes
    # after each start (see streams/services/kafka.py); a long-lived broker host wants "tiered".
    kafka_jit: Literal["c1", "tiered"] = "c1"
    schema_registry_url: str | None = None
    # Prefix of every topic name (a namespace): benchmarks and tests use their own beside a live one.
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")

    # PostgreSQL. An explicit database_url means "use that server, start nothing".
    database_url: SecretStr | None = None
    pg_port: int = Field(default=15432, ge=1024, le=65535)
    pg_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    pg_database: str = "xchg"
    pg_writer_user: str = "xchg_writer"
    pg_writer_password: SecretStr = SecretStr("xchg-writer-dev")
    pg_analyst_user: str = "xchg_analyst"
    pg_analyst_password: SecretStr = SecretStr("xchg-analyst-dev")

    # Chain (anvil). An explicit rpc_url means "use that node, start nothing".
    rpc_url: str | None = None
    anvil_port: int = Field(default=18545, ge=1024, le=65535)
    chain_id: int = Field(default=31337, gt=0)

    # Matching processor (xchg engine run); CLI options override these per process.
    # Client identities: unset = derived from the namespace (see ``client_identity``), so that two
    # namespaces on one cluster never share a group, a static member id or a transactional id.
    engine_group: str | None = None  # default <prefix>xchg-engine
    engine_instance_id: str | None = None  # default <prefix>engine-1
    engine_transactional_prefix: str | None = None  # default <prefix>xchg-engine
    engine_batch_size: int = Field(default=2000, gt=0)
    engine_linger_ms: int = Field(default=5, ge=0)
    engine_snapshot_every: int = Field(default=25_000, gt=0)
    # State hashes alone, between snapshots: what a recovery's replay is checked against.
    engine_hash_every: int = Field(default=5_000, gt=0)
    # After this many md.book deltas of a market, its next md.book record is a full L2 snapshot
    # (counted, never timed): a consumer starting from the end never reads further back than that.
    engine_book_snapshot_every: int = Field(default=10_000, gt=0)
    engine_session_timeout_ms: int = Field(default=10_000, ge=3000)

    # Settlement (xchg settle ...): batching, fees, finality, fee bumps (connectors/settlement).
    settlement_assets_file: Path = Field(default=PROJECT_ROOT / "infra" / "assets.yaml")
    settlement_batch_trades: int = Field(default=1000, gt=0)
    settlement_batch_max_age_ms: int = Field(default=60_000, gt=0)
    settlement_max_deltas: int = Field(default=400, ge=5)
    settlement_taker_fee_bps: int = Field(default=10, ge=0, lt=10_000)
    settlement_fee_account: str = "fees"
    settlement_min_depth: int = Field(default=12, ge=1)
    settlement_replace_after_blocks: int = Field(default=3, ge=1)
    settlement_max_fee_wei: int = Field(default=500 * 10**9, gt=0)
    # Operator key; unset = the dev key derived for the namespace (local chains only).
    settlement_operator_key: SecretStr | None = None
    # Deployment record (addresses); unset = <runtime_dir>/settlement/deployment-<namespace>.json.
    settlement_deployment_file: Path | None = None

    # Analytics sink (xchg sink timescale) and market data (xchg marketdata run).
    # Key of the sink's offsets in kafka_offsets and its consumer group (one sink instance per
    # name); unset = <prefix>xchg-sink.
    sink_name: str | None = None
    sink_batch_size: int = Field(default=20_000, gt=0)
    sink_linger_ms: int = Field(default=200, ge=0)
    book_snapshot_interval_s: int = Field(default=60, gt=0)  # L2 snapshots every N seconds of event time
    retention_days: int = Field(default=90, gt=0)  # plain path: partitions older than this are dropped

    # WebSocket market-data gateway (xchg ws serve): docs/websocket-protocol.md.
    ws_host: str = "127.0.0.1"
    ws_port: int = Field(default=18080, ge=1, le=65535)
    ws_workers: int = Field(default=1, ge=1, le=64)
    # HMAC key of the private-channel tokens; the default is for local development only.
    ws_token_secret: SecretStr = SecretStr("xchg-ws-dev-secret")
    ws_token_max_ttl_s: int = Field(default=86_400, gt=0)
    ws_send_queue_bytes: int = Field(default=1 << 20, ge=4096)  # per connection, then close 4008
    # SO_SNDBUF of each client socket (0: the kernel's autotuning, up to tcp_wmem's maximum): bounds
    # what a stalled client holds in the kernel before its send queue fills and it is cut.
    ws_socket_send_buffer: int = Field(default=0, ge=0)
    ws_max_connections_per_ip: int = Field(default=2000, gt=0)  # per worker
    ws_max_subscriptions: int = Field(default=50, gt=0)
    ws_subscribe_rate: int = Field(default=20, gt=0)  # requests per second per connection
    ws_max_message_bytes: int = Field(default=4096, ge=256)
    ws_ping_interval_s: float = Field(default=10.0, gt=0)
    ws_ping_timeout_s: float = Field(default=10.0, gt=0)
    ws_heartbeat_ms: int = Field(default=1000, gt=0)
    ws_tick_ms: int = Field(default=50, gt=0)  # one coalesced write per connection per tick
    ws_recent_trades: int = Field(default=1000, gt=0)  # per market, for GET /v1/trades
    ws_candle_history: int = Field(default=1440, gt=0)  # per market and interval
    ws_lookback_s: int = Field(default=86_400, gt=0)  # trades and candles read back at start
    ws_scan_chunk: int = Field(default=2000, gt=0)  # records per backward read at start
    ws_status_scan_records: int = Field(default=1_000_000, gt=0)  # per orders.events partition

    # Prometheus endpoint of the process (0 = none).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Logs: JSON lines on stderr (services) or "console" (people at a terminal).
    log_format: Literal["json", "console"] = "json"
    # Test hooks (streams.runtime.crashpoints), "name[:n]": SIGKILL / raise the n-th time
    # execution reaches that named point. Empty: disarmed.
    crash_point: str = ""
    fault_point: str = ""

    @field_validator("kafka_heap")
    @classmethod
    def _heap_has_unit(cls, value: str) -> str:
        if not value[:-1].isdigit() or value[-1].lower() not in "mg":
            raise ValueError("must look like 512m or 1g")
        return value

    @property
    def bootstrap_servers(self) -> str:
        """The one bootstrap list every command uses: the configured servers, or every broker of
        the project's local cluster (as many as ``xchg infra up`` started, not only the first)."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        from streams.services.kafka import KafkaCluster

        return KafkaCluster(self).bootstrap_servers()

    @property
    def namespace(self) -> Namespace:
        return Namespace(self.topic_prefix)

    def client_identity(self, explicit: str | None, base: str) -> str:
        """A Kafka client identity (group, static member id, transactional id prefix, sink name):
        the configured value, or ``base`` inside the namespace. Every identity of every command
        is derived here, so two namespaces with default settings never fence each other."""
        return explicit if explicit else self.namespace(base)

    @property
    def engine_group_id(self) -> str:
        return self.client_identity(self.engine_group, "xchg-engine")

    @property
    def engine_instance(self) -> str:
        return self.client_identity(self.engine_instance_id, "engine-1")

    @property
    def engine_transactional_id_prefix(self) -> str:
        return self.client_identity(self.engine_transactional_prefix, "xchg-engine")

    @property
    def sink_identity(self) -> str:
        return self.client_identity(self.sink_name, "xchg-sink")

    @property
    def local_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def local_postgres(self) -> bool:
        return self.database_url is None

    @property
    def local_chain(self) -> bool:
        return self.rpc_url is None

    @property
    def chain_rpc_url(self) -> str:
        return self.rpc_url or f"http://127.0.0.1:{self.anvil_port}"

    def writer_dsn(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return (
            f"postgresql://{self.pg_writer_user}:{self.pg_writer_password.get_secret_value()}"
            f"@127.0.0.1:{self.pg_port}/{self.pg_database}"
        )

    def analyst_dsn(self) -> str:
        return (
            f"postgresql://{self.pg_analyst_user}:{self.pg_analyst_password.get_secret_value()}"
            f"@127.0.0.1:{self.pg_port}/{self.pg_database}"
        )


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "settings"
    return f"EXCHANGE_{field.upper()}: {first['msg']} (got {first.get('input')!r})"


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    """The process-wide settings; raises ``SettingsError`` with a one-line message when malformed."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
