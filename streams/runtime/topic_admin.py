"""The declarative topic file (``infra/kafka/topics.yaml``) and its idempotent application.

``plan()`` compares the file with the cluster and returns the differences (drift); ``apply()``
creates missing topics and sets differing configs, and reports what it could not change
(replication factor, a partition count of a keyed topic) instead of silently ignoring it.
Applying the same file twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.config_files import read_section
from streams.errors import OperatorError


class TopicFileError(OperatorError, ValueError):
    """The topic file is missing or invalid."""


class TopicSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    doc: str = ""
    partitions: int = Field(gt=0)
    replication_factor: int = Field(gt=0)
    min_insync_replicas: int = Field(gt=0)
    config: dict[str, str] = Field(default_factory=dict)

    def for_cluster(self, brokers: int) -> TopicSpec:
        """Clamp replication to the cluster size (a 1-broker development cluster)."""
        rf = min(self.replication_factor, brokers)
        isr = min(self.min_insync_replicas, max(1, rf - 1))
        return self.model_copy(update={"replication_factor": rf, "min_insync_replicas": isr})

    def desired_config(self) -> dict[str, str]:
        return {**self.config, "min.insync.replicas": str(self.min_insync_replicas)}


def load_topic_file(path: Path, prefix: str = "") -> list[TopicSpec]:
    """The topic specs of the file; ``prefix`` places them in a namespace (see ``Namespace``)."""
    raw = read_section(path, "topics", dict, "topic file", "EXCHANGE_TOPICS_FILE", TopicFileError)
    defaults = raw.get("defaults") or {}
    specs = []
    for name, body in raw["topics"].items():
        body = body or {}
        merged = {**defaults, **{k: v for k, v in body.items() if k != "config"}, "name": prefix + name,
                  "config": {k: str(v) for k, v in (body.get("config") or {}).items()}}
        try:
            specs.append(TopicSpec.model_validate(merged))
        except ValidationError as error:
            first = error.errors()[0]
            raise TopicFileError(f"topic file {path}: {name}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return specs


@dataclass
class TopicChange:
    topic: str
    action: str  # create | alter-config | add-partitions | drift
    detail: str


@dataclass
class Plan:
    brokers: int
    changes: list[TopicChange] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def drift(self) -> list[TopicChange]:
        return [c for c in self.changes if c.action == "drift"]


class TopicAdmin:
    def __init__(self, bootstrap_servers: str, timeout: float = 30.0) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        self.timeout = timeout

    def plan(self, specs: list[TopicSpec], allow_repartition: bool = False) -> Plan:
        meta = self.admin.list_topics(timeout=self.timeout)
        brokers = len(meta.brokers)
        plan = Plan(brokers=brokers)
        existing = {spec.name: meta.topics[spec.name] for spec in specs if spec.name in meta.topics}
        configs = self._configs(list(existing)) if existing else {}
        for raw_spec in specs:
            spec = raw_spec.for_cluster(brokers)
            topic = existing.get(spec.name)
            if topic is None:
                plan.changes.append(TopicChange(spec.name, "create",
                                                f"partitions={spec.partitions} rf={spec.replication_factor}"))
                continue
            before = len(plan.changes)
            partitions = len(topic.partitions)
            if partitions != spec.partitions:
                if partitions < spec.partitions and allow_repartition:
                    plan.changes.append(TopicChange(spec.name, "add-partitions", f"{partitions} -> {spec.partitions}"))
                else:
                    plan.changes.append(TopicChange(
                        spec.name, "drift",
                        f"has {partitions} partitions, file says {spec.partitions} "
                        "(changing it re-maps markets; use --allow-repartition to add partitions)"))
            rf = len(next(iter(topic.partitions.values())).replicas) if topic.partitions else 0
            if rf != spec.replication_factor:
                plan.changes.append(TopicChange(spec.name, "drift",
                                                f"replication factor {rf}, file says {spec.replication_factor}"))
            actual = configs.get(spec.name, {})
            differing = {k: v for k, v in spec.desired_config().items() if actual.get(k) != v}
            if differing:
                shown = ", ".join(f"{k}: {actual.get(k)} -> {v}" for k, v in sorted(differing.items()))
                plan.changes.append(TopicChange(spec.name, "alter-config", shown))
            if len(plan.changes) == before:
                plan.unchanged.append(spec.name)
        return plan

    def apply(self, specs: list[TopicSpec], allow_repartition: bool = False) -> Plan:
        plan = self.plan(specs, allow_repartition)
        by_name = {s.name: s.for_cluster(plan.brokers) for s in specs}
        creates = [by_name[c.topic] for c in plan.changes if c.action == "create"]
        if creates:
            futures = self.admin.create_topics([
                NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                         config=s.desired_config()) for s in creates
            ], operation_timeout=self.timeout)
            for name, future in futures.items():
                _result(future, f"create {name}")
        alters = [by_name[c.topic] for c in plan.changes if c.action == "alter-config"]
        for spec in alters:
            resource = ConfigResource(ResourceType.TOPIC, spec.name, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in spec.desired_config().items()
            ])
            for future in self.admin.incremental_alter_configs([resource]).values():
                _result(future, f"alter {spec.name}")
        grows = [by_name[c.topic] for c in plan.changes if c.action == "add-partitions"]
        if grows:
            futures = self.admin.create_partitions([NewPartitions(s.name, s.partitions) for s in grows])
            for name, future in futures.items():
                _result(future, f"add partitions to {name}")
        return plan

    def _configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
        out: dict[str, dict[str, str]] = {}
        for resource, future in self.admin.describe_configs(resources).items():
            entries = _result(future, f"describe {resource.name}")
            out[resource.name] = {k: str(e.value) for k, e in entries.items()}
        return out


def _result(future, what: str):  # type: ignore[no-untyped-def]
    try:
        return future.result()
    except KafkaException as error:
        raise TopicFileError(f"{what}: {error.args[0].str()}") from None
