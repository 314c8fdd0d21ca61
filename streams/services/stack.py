"""The whole local stack: Kafka, PostgreSQL and anvil, started and stopped as one (and the
WebSocket gateway ``make demo`` leaves running, stopped with them).

``up`` is idempotent (running services are left alone) and ``down`` stops only what the project
started. Services configured as external endpoints (``EXCHANGE_KAFKA_BOOTSTRAP``,
``EXCHANGE_DATABASE_URL``, ``EXCHANGE_RPC_URL``) are only checked, never started.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.services.chain import Anvil
from streams.services.kafka import KafkaCluster
from streams.services.postgres import PostgresCluster
from streams.services.process import ManagedProcess
from streams.settings import Settings

SERVICES = ("kafka", "postgres", "anvil")


@dataclass
class ServiceStatus:
    name: str
    running: bool
    detail: str


def up(settings: Settings, services: tuple[str, ...] = SERVICES, brokers: int | None = None,
       report: Callable[[str], None] = lambda _: None) -> None:
    if "kafka" in services and settings.local_kafka:
        report("kafka: starting")
        KafkaCluster(settings, brokers).up()
    if "postgres" in services and settings.local_postgres:
        report("postgres: starting")
        PostgresCluster(settings).up()
    if "anvil" in services and settings.local_chain:
        report("anvil: starting")
        Anvil(settings).up()


def demo_gateway(settings: Settings) -> ManagedProcess:
    """The detached ``xchg ws serve`` that ``xchg demo`` starts (PID file and log under
    ``<runtime dir>/ws-gateway/``)."""
    home = settings.runtime_dir / "ws-gateway"
    return ManagedProcess("ws-gateway", home / "gateway.pid", home / "gateway.log", "ws serve")


def down(settings: Settings, services: tuple[str, ...] = SERVICES) -> list[str]:
    stopped: list[str] = []
    gateway = demo_gateway(settings)
    if "kafka" in services and gateway.running() and gateway.stop():
        stopped.append("ws-gateway")  # it reads Kafka: stopped before it
    if "anvil" in services and Anvil(settings).down():
        stopped.append("anvil")
    if "postgres" in services and PostgresCluster(settings).down():
        stopped.append("postgres")
    if "kafka" in services:
        stopped.extend(KafkaCluster(settings).down())
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    out = []
    kafka = KafkaCluster(settings)
    described = kafka.describe(timeout=3.0)
    where = "external" if not settings.local_kafka else f"{kafka.brokers} broker(s)"
    out.append(ServiceStatus(
        "kafka", described is not None,
        f"Kafka {kafka.version() or '?'} (KRaft, {where}) at {kafka.bootstrap_servers()}"
        + (f", cluster {described['cluster_id']}" if described else ", not answering"),
    ))
    pg = PostgresCluster(settings)
    version = pg.version() if settings.local_postgres else _external_pg_version(settings)
    out.append(ServiceStatus(
        "postgres", version is not None,
        f"PostgreSQL {version} on port {settings.pg_port}, data {pg.data}" if version
        else "PostgreSQL not answering",
    ))
    anvil = Anvil(settings)
    chain_id = anvil.chain_id()
    out.append(ServiceStatus(
        "anvil", chain_id is not None,
        f"anvil chain id {chain_id} at {settings.chain_rpc_url}" if chain_id is not None
        else f"anvil not answering at {settings.chain_rpc_url}",
    ))
    return out


def _external_pg_version(settings: Settings) -> str | None:
    import psycopg

    try:
        with psycopg.connect(settings.writer_dsn(), connect_timeout=3) as conn:
            row = conn.execute("show server_version").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None


def log_files(settings: Settings, service: str) -> list[Path]:
    if service == "kafka":
        files = []
        for node in KafkaCluster(settings).nodes():
            files += [node.home / "logs" / "server.log", node.home / "logs" / "console.log"]
        return files
    if service == "postgres":
        return [PostgresCluster(settings).log_file]
    if service == "anvil":
        return [Anvil(settings).process.log_file]
    raise ValueError(service)
