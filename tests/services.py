"""How the test session reaches Kafka, PostgreSQL and an EVM node, in one of three modes:

1. external: ``EXCHANGE_KAFKA_BOOTSTRAP`` / ``EXCHANGE_DATABASE_URL`` / ``EXCHANGE_RPC_URL`` are set;
2. containers: a Docker engine answers a ping → testcontainers (Kafka with the transaction-log
   settings, ``timescale/timescaledb`` so the TimescaleDB path runs, foundry's anvil);
3. local: the project's own launchers start real processes (this machine: no Docker engine).

Each service starts once per session; one the session started is stopped at its end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

KAFKA_IMAGE = "apache/kafka:4.1.1"
TIMESCALE_IMAGE = "timescale/timescaledb:2.21.3-pg15"
ANVIL_IMAGE = "ghcr.io/foundry-rs/foundry:v1.3.5"


def docker_answers() -> bool:
    """True only when a Docker engine answers a ping (a CLI on the PATH proves nothing)."""
    if os.environ.get("XCHG_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@dataclass
class Endpoint:
    mode: str  # external | container | local
    address: str


@contextmanager
def kafka_endpoint() -> Iterator[Endpoint]:
    from streams.settings import load_settings

    settings = load_settings()
    if not settings.local_kafka:
        yield Endpoint("external", settings.bootstrap_servers)
    elif docker_answers():
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(KAFKA_IMAGE).with_kraft()
        for key, value in {
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        }.items():
            container = container.with_env(key, value)
        with container as kafka:
            yield Endpoint("container", kafka.get_bootstrap_server())
    else:
        from streams.services.kafka import KafkaCluster

        cluster = KafkaCluster(settings)
        started = not cluster.running_nodes()
        cluster.up()
        try:
            yield Endpoint("local", cluster.bootstrap_servers())
        finally:
            if started:
                cluster.down()


@contextmanager
def postgres_endpoint() -> Iterator[Endpoint]:
    from streams.settings import load_settings

    settings = load_settings()
    if not settings.local_postgres:
        yield Endpoint("external", settings.writer_dsn())
    elif docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(TIMESCALE_IMAGE, username="xchg_writer", password="xchg", dbname="xchg") as pg:
            yield Endpoint("container", pg.get_connection_url(driver=None))
    else:
        from streams.services.postgres import PostgresCluster

        cluster = PostgresCluster(settings)
        started = not cluster.running()
        cluster.up()
        try:
            yield Endpoint("local", settings.writer_dsn())
        finally:
            if started:
                cluster.down()


@contextmanager
def chain_endpoint() -> Iterator[Endpoint]:
    from streams.settings import load_settings

    settings = load_settings()
    if not settings.local_chain:
        yield Endpoint("external", settings.chain_rpc_url)
    elif docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = (DockerContainer(ANVIL_IMAGE).with_command(
            f"anvil --host 0.0.0.0 --chain-id {settings.chain_id} --slots-in-an-epoch 1")
            .with_exposed_ports(8545))
        with container as node:
            wait_for_logs(node, "Listening on")
            yield Endpoint("container", f"http://{node.get_container_host_ip()}:{node.get_exposed_port(8545)}")
    else:
        from streams.services.chain import Anvil

        anvil = Anvil(settings)
        started = not anvil.process.running()
        anvil.up()
        try:
            yield Endpoint("local", settings.chain_rpc_url)
        finally:
            if started:
                anvil.down()

