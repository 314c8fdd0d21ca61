"""Operator-facing commands against the real services: idempotent infra, topics, clear errors,
and the kill switch travelling through the log like any order."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streams.domain.commands import MarketState, OrderType, Place, SetState, Side
from streams.domain.events import MarketStateChanged, OrderAccepted, OrderRejected, RejectCode
from streams.markets import MarketRegistry
from streams.processors.matching import MatchingConfig, MatchingProcessor
from streams.runtime.clients import make_producer
from streams.runtime.reader import read_range, standalone_consumer, watermarks
from streams.runtime.records import command_to_record, event_from_record
from streams.runtime.topic_admin import load_topic_file
from streams.runtime.verify import read_topic
from streams.serde.codec import Codec
from streams.serde.topics import DLQ_ORDERS_COMMANDS, ORDERS_COMMANDS, ORDERS_EVENTS
from streams.settings import PROJECT_ROOT, load_settings
from tests.pipeline import fresh_namespace
from tests.services import Endpoint

pytestmark = pytest.mark.integration


def xchg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env={**os.environ, **(env or {})}, timeout=300, check=False)


def test_infra_up_twice_and_status(kafka: Endpoint, postgres: Endpoint, chain: Endpoint) -> None:
    if "local" not in {kafka.mode, postgres.mode, chain.mode}:
        pytest.skip("services are external or containers: the local launcher is not in use")
    for _ in range(2):
        result = xchg("infra", "up")
        assert result.returncode == 0, result.stderr
    status = xchg("infra", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    text = " ".join(status.stdout.split())
    assert "Kafka 4.1." in text
    assert "PostgreSQL 15." in text
    assert "chain id 31337" in text


def test_anvil_down_then_up_leaves_a_working_node(chain: Endpoint) -> None:
    if chain.mode != "local":
        pytest.skip("anvil is not the local process")
    from streams.services.chain import Anvil

    anvil = Anvil(load_settings())
    assert xchg("infra", "down", "anvil").returncode == 0
    assert anvil.chain_id() is None
    assert xchg("infra", "up", "anvil").returncode == 0
    assert anvil.chain_id() == 31337


def test_topics_apply_twice_changes_nothing(kafka_bootstrap: str, unique: str) -> None:
    env = {"EXCHANGE_KAFKA_BOOTSTRAP": kafka_bootstrap, "EXCHANGE_TOPIC_PREFIX": f"ops-{unique}."}
    count = len(load_topic_file(load_settings().topics_file))
    first = xchg("topics", "apply", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == count
    second = xchg("topics", "apply", env=env)
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and "altered" not in second.stdout
    assert f"unchanged {count} topic(s)" in second.stdout
    plan = xchg("topics", "plan", env=env)
    assert plan.returncode == 0


@pytest.mark.parametrize(("env", "needle"), [
    ({"EXCHANGE_PG_PORT": "not-a-port"}, "EXCHANGE_PG_PORT"),
    ({"EXCHANGE_KAFKA_HEAP": "lots"}, "EXCHANGE_KAFKA_HEAP"),
    ({"EXCHANGE_KAFKA_JIT": "c3"}, "EXCHANGE_KAFKA_JIT"),
    ({"EXCHANGE_MARKETS_FILE": "/nonexistent/markets.yaml"}, "market file"),
])
def test_malformed_configuration_is_one_line(env: dict[str, str], needle: str) -> None:
    result = xchg("market", "halt", "BTC-USD", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_missing_java_names_the_fix(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "EXCHANGE_RUNTIME_DIR": str(tmp_path / "run"),
           "EXCHANGE_KAFKA_PORT": str(_free_port()), "EXCHANGE_KAFKA_CONTROLLER_PORT": str(_free_port())}
    result = xchg("infra", "up", "kafka", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found on PATH" in lines[0] and "install" in lines[0], result.stderr


def test_kill_switch_is_ordered_with_orders(kafka_bootstrap: str, unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"ks-{unique}")
    env = {"EXCHANGE_KAFKA_BOOTSTRAP": kafka_bootstrap, "EXCHANGE_TOPIC_PREFIX": ns.prefix}
    codec = Codec()
    producer = make_producer(kafka_bootstrap)
    registry = MarketRegistry.load(load_settings().markets_file)
    spec = registry.get("BTC-USD").spec()

    def place(order_id: str) -> None:
        cmd = Place(f"c-{order_id}", 0, order_id, "acct1", Side.BUY, OrderType.LIMIT, 100 * spec.tick, spec.min_qty)
        producer.produce(ns(ORDERS_COMMANDS), codec.encode(ORDERS_COMMANDS, command_to_record("BTC-USD", cmd)),
                         b"BTC-USD")
        assert producer.flush(30) == 0

    place("before-halt")
    assert xchg("market", "halt", "--all", env=env).returncode == 0
    place("while-halted")
    assert xchg("market", "resume", "BTC-USD", env=env).returncode == 0
    place("after-resume")
    assert xchg("market", "cancel-all", "BTC-USD", "--account", "acct1", env=env).returncode == 0

    processor = MatchingProcessor(MatchingConfig(
        bootstrap=kafka_bootstrap, group_id=f"ks-{unique}", instance_id="ks", transactional_prefix=f"ks-{unique}",
        idle_exit_s=2.0, namespace=ns), registry, codec)
    processor.run()

    consumer = standalone_consumer(kafka_bootstrap)
    events = []
    for partition in range(4):
        low, high = watermarks(consumer, ns(ORDERS_EVENTS), partition)
        events += [codec.decode(ORDERS_EVENTS, m.value())
                   for m in read_range(consumer, ns(ORDERS_EVENTS), partition, low, high)]
    consumer.close()
    halted = {e["market"] for e in events
              if isinstance(event_from_record(e), MarketStateChanged)
              and event_from_record(e).state is MarketState.HALTED}  # type: ignore[union-attr]
    assert halted == set(registry.symbols())
    btc = [event_from_record(e) for e in events if e["market"] == "BTC-USD"]
    outcome = {e.order_id: e for e in btc if isinstance(e, (OrderAccepted, OrderRejected))}
    assert isinstance(outcome["before-halt"], OrderAccepted)
    assert isinstance(outcome["while-halted"], OrderRejected)
    assert outcome["while-halted"].reason is RejectCode.MARKET_HALTED
    assert isinstance(outcome["after-resume"], OrderAccepted)
    cancelled = [e for e in btc if type(e).__name__ == "OrderCancelled"]
    assert {e.order_id for e in cancelled} == {"before-halt", "after-resume"}  # type: ignore[attr-defined]


def test_a_global_halt_rejects_the_next_order_of_every_market(kafka_bootstrap: str, unique: str) -> None:
    """The one form of a global halt is a command per market (``halt --all``); the ``"*"`` market
    once described by the schemas is refused by the CLI and dead-lettered with its own reason."""
    ns = fresh_namespace(kafka_bootstrap, f"gh-{unique}")
    env = {"EXCHANGE_KAFKA_BOOTSTRAP": kafka_bootstrap, "EXCHANGE_TOPIC_PREFIX": ns.prefix}
    codec = Codec()
    producer = make_producer(kafka_bootstrap)
    registry = MarketRegistry.load(load_settings().markets_file)

    refused = xchg("market", "halt", "*", env=env)
    assert refused.returncode == 1 and "--all" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    wildcard = command_to_record("*", SetState("admin-wildcard", 0, MarketState.HALTED))
    producer.produce(ns(ORDERS_COMMANDS), codec.encode(ORDERS_COMMANDS, wildcard), b"*")
    assert producer.flush(30) == 0
    assert xchg("market", "halt", "--all", env=env).returncode == 0
    for market in registry:
        spec = market.spec()
        cmd = Place(f"c-{market.symbol}", 0, f"after-halt-{market.symbol}", "acct1", Side.BUY, OrderType.LIMIT,
                    100 * spec.tick, spec.min_qty)
        producer.produce(ns(ORDERS_COMMANDS), codec.encode(ORDERS_COMMANDS, command_to_record(market.symbol, cmd)),
                         market.symbol.encode())
    assert producer.flush(30) == 0

    MatchingProcessor(MatchingConfig(
        bootstrap=kafka_bootstrap, group_id=f"gh-{unique}", instance_id="gh", transactional_prefix=f"gh-{unique}",
        idle_exit_s=2.0, namespace=ns), registry, codec).run()

    consumer = standalone_consumer(kafka_bootstrap)
    try:
        events = [event_from_record(codec.decode(ORDERS_EVENTS, m.value())) for m in read_topic(consumer, ns(ORDERS_EVENTS))]
        dead = [dict(m.headers() or []) for m in read_topic(consumer, ns(DLQ_ORDERS_COMMANDS))]
    finally:
        consumer.close()
    rejected = {e.order_id: e.reason for e in events if isinstance(e, OrderRejected)}
    assert rejected == {f"after-halt-{m.symbol}": RejectCode.MARKET_HALTED for m in registry}
    assert not any(isinstance(e, OrderAccepted) for e in events)
    assert [h["xchg.error.reason"] for h in dead] == [b"market_wildcard"]


def test_verify_replay_rebuilds_a_partition_and_names_a_missing_one(kafka_bootstrap: str, unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"vr-{unique}")
    env = {"EXCHANGE_KAFKA_BOOTSTRAP": kafka_bootstrap, "EXCHANGE_TOPIC_PREFIX": ns.prefix}
    codec = Codec()
    producer = make_producer(kafka_bootstrap)
    spec = MarketRegistry.load(load_settings().markets_file).get("BTC-USD").spec()
    for i in range(3):
        cmd = Place(f"c-{i}", 0, f"o-{i}", "acct1", Side.BUY, OrderType.LIMIT, (100 + i) * spec.tick, spec.min_qty)
        producer.produce(ns(ORDERS_COMMANDS), codec.encode(ORDERS_COMMANDS, command_to_record("BTC-USD", cmd)),
                         b"BTC-USD", partition=2)
    assert producer.flush(30) == 0

    replayed = xchg("verify", "replay", "--partition", "2", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert "partition 2: replayed 3 commands" in replayed.stdout
    assert "BTC-USD: seq 3" in replayed.stdout

    missing = xchg("verify", "replay", "--partition", "9", env=env)
    assert missing.returncode == 1
    assert "has 4 partition(s) (0..3); there is no partition 9" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_verify_replay_says_when_nothing_was_checked(kafka_bootstrap: str, unique: str) -> None:
    ns = fresh_namespace(kafka_bootstrap, f"vn-{unique}")
    env = {"EXCHANGE_KAFKA_BOOTSTRAP": kafka_bootstrap, "EXCHANGE_TOPIC_PREFIX": ns.prefix}
    empty = xchg("verify", "replay", "--partition", "1", env=env)
    assert empty.returncode == 0, empty.stderr
    assert "no market has commands in it" in empty.stdout and "nothing was checked" in empty.stdout
    assert "0 mismatches" not in empty.stdout


def test_topics_plan_shows_policies_and_fails_only_on_drift_apply_cannot_fix(kafka_bootstrap: str,
                                                                              unique: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = f"plan-{unique}."
    env = {"EXCHANGE_KAFKA_BOOTSTRAP": kafka_bootstrap, "EXCHANGE_TOPIC_PREFIX": prefix}
    fixable = xchg("topics", "plan", env=env)  # nothing exists yet: apply would create it all
    assert fixable.returncode == 0, fixable.stderr
    assert "would create" in fixable.stdout and "90 d" in fixable.stdout and "compact" in fixable.stdout
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(f"{prefix}trades", 2, 1)])[f"{prefix}trades"].result(30)
    drift = xchg("topics", "plan", env=env)  # 2 partitions instead of 4: apply cannot fix that
    assert drift.returncode == 2, drift.stdout
    assert "DRIFT" in drift.stdout and f"{prefix}trades" in drift.stdout
