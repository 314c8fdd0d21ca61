"""Static checks of the container stack: docker-compose.yml, the Dockerfile, Prometheus and Grafana.

No Docker engine runs on the project's machines, so nothing here starts a container: the files are
parsed and checked against each other, against the project's settings (ports, users, chain id) and
against the mission's alert thresholds. Where a Docker engine does answer a ping, ``docker compose
config -q`` validates the file too.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import Settings
from tests.services import ANVIL_IMAGE, KAFKA_IMAGE, TIMESCALE_IMAGE, docker_answers

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
METRICS_MD = PROMETHEUS_DIR / "METRICS.md"
GRAFANA_DIR = ROOT / "infra" / "grafana"
ALERTS_MD = ROOT / "docs" / "alerts.md"

CORE = {"kafka", "timescaledb", "anvil"}
ONE_SHOT = {"topics", "migrate"}
PIPELINE_COMMANDS = {
    "topics": ["topics", "apply"],
    "migrate": ["db", "migrate"],
    "engine": ["engine", "run"],
    "marketdata": ["marketdata", "run"],
    "sink": ["sink", "timescale"],
    "settlement": ["settle", "run"],
}
LONG_RUNNING_PIPELINE = set(PIPELINE_COMMANDS) - ONE_SHOT
MONITORING = {"prometheus", "grafana", "kafka-ui"}
METRICS_PORT = 9400

# docs/alerts.md: alert -> (metric, comparison, threshold, severity).
MISSION_ALERTS = {
    "OrderLatencyP99High": ("xchg_order_latency_seconds", ">", 0.1, "warning"),
    "TradeThroughputLow": ("xchg_trades_total", "<", 10.0, "warning"),
    "DatabaseQuerySlow": ("xchg_db_query_seconds", ">", 0.5, "critical"),
    "SettlementFailureRateHigh": ("xchg_settlement_batches_total", ">", 0.05, "critical"),
}
# Series that Prometheus itself generates for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


# -- helpers ----------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return yaml.safe_load(path.read_text())


def settings_default(field: str) -> Any:
    default = Settings.model_fields[field].default
    return default.get_secret_value() if hasattr(default, "get_secret_value") else default


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def interpolation_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose substitutes when VAR is unset)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Host port -> container port, from the short ("[ip:]host:container[/proto]") or long syntax."""
    ports: dict[int, int] = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if "published" in entry:
                ports[int(entry["published"])] = int(entry["target"])
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2:
            ports[int(parts[-2])] = int(parts[-1])
    return ports


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name_and_tag = image.rsplit("/", 1)[-1]
    if ":" not in name_and_tag:
        return False
    tag = name_and_tag.rsplit(":", 1)[1]
    return bool(tag) and tag != "latest"


def healthcheck_test(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"healthcheck test must start with CMD/CMD-SHELL: {test}"
        return " ".join(str(part) for part in test[1:])
    return str(test or "")


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of each bind mount (``./x:/y[:ro]`` or the long syntax)."""
    mounts: dict[str, Path] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type") == "bind":
                mounts[entry["target"]] = (ROOT / entry["source"]).resolve()
            continue
        source, target = str(entry).split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def host_file(service: dict[str, Any], container_path: str) -> Path:
    """The repository file that a bind mount of ``service`` places at ``container_path``."""
    for target, source in bind_mounts(service).items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    raise AssertionError(f"nothing is mounted at {container_path}")


_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                    "unless", "offset", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """The metric (series) names a PromQL expression selects: not functions, labels or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors, [$__rate_interval] included
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:])", "", text)  # durations
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", "", text)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("("):
            continue  # a function call
        if match.group(0).lower() not in _PROMQL_KEYWORDS:
            names.add(match.group(0))
    return names


def metrics_table() -> dict[str, str]:
    """METRICS.md: metric name -> type, from the table rows that name an ``xchg_`` metric."""
    table: dict[str, str] = {}
    for line in METRICS_MD.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(xchg_[a-z0-9_]+)`", cells[0])
        if m and len(cells) >= 2 and cells[1] in {"counter", "gauge", "histogram"}:
            table[m.group(1)] = cells[1]
    return table


def resolve_series(series: str, table: dict[str, str]) -> str | None:
    """A series name -> its metric in the table (``x_bucket`` -> histogram ``x``), or None."""
    if series in table:
        return series
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and table.get(base) == "histogram":
            return base
    return None


def threshold_of(expr: str) -> tuple[str, float]:
    """The trailing comparison of an alert expression: ``... > 0.1`` -> (">", 0.1)."""
    match = re.search(r"(>=|<=|>|<)\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*$", expr.strip())
    assert match, f"no trailing threshold in {expr!r}"
    return match.group(1), float(match.group(2))


def alert_rules() -> dict[str, dict[str, Any]]:
    rules = {}
    for group in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rules[rule["alert"]] = rule
    return rules


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


# -- compose: services, profiles, images --------------------------------------------------------------


def test_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    expected = CORE | set(PIPELINE_COMMANDS) | MONITORING
    assert expected <= set(services), f"missing services: {sorted(expected - set(services))}"
    for name in CORE:
        assert not services[name].get("profiles"), f"{name} must start with a plain `docker compose up`"
    for name in PIPELINE_COMMANDS:
        assert services[name].get("profiles") == ["pipeline"], name
    for name in MONITORING:
        assert services[name].get("profiles") == ["monitoring"], name


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        assert image_is_pinned(image), f"{name}: image {image!r} is not pinned by a version tag or digest"


def test_pin_check_rejects_floating_images() -> None:
    assert not image_is_pinned("apache/kafka")
    assert not image_is_pinned("apache/kafka:latest")
    assert not image_is_pinned("localhost:5000/kafka")
    assert image_is_pinned("localhost:5000/kafka:4.1.1")
    assert image_is_pinned("apache/kafka@sha256:" + "0" * 64)


def test_core_images_match_the_test_fixtures(services: dict[str, dict[str, Any]]) -> None:
    # tests/services.py starts the same images through testcontainers where Docker answers.
    assert services["kafka"]["image"] == KAFKA_IMAGE
    assert services["timescaledb"]["image"] == TIMESCALE_IMAGE
    assert services["anvil"]["image"] == ANVIL_IMAGE


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", f"one-shot {name} must not restart"
            continue
        health = service.get("healthcheck") or {}
        assert not health.get("disable"), f"{name}: healthcheck disabled"
        assert healthcheck_test(service), f"{name} is long-running and has no healthcheck"


def test_environment_values_are_strings(services: dict[str, dict[str, Any]]) -> None:
    # An unquoted `false` or `1` is a YAML bool/int: compose rejects bools and the intent is a string.
    for name, service in services.items():
        for key, value in env_of(service).items():
            assert isinstance(value, str), f"{name}: {key}={value!r} should be a quoted string"


def test_core_ports_match_the_project_settings(services: dict[str, dict[str, Any]]) -> None:
    assert published_ports(services["kafka"]).get(settings_default("kafka_port")) == 19092
    assert published_ports(services["timescaledb"]).get(settings_default("pg_port")) == 5432
    assert published_ports(services["anvil"]).get(settings_default("anvil_port")) == 8545
    assert (settings_default("kafka_port"), settings_default("pg_port"), settings_default("anvil_port")) == (
        19092, 15432, 18545)


def test_no_host_port_is_published_twice(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[int, str] = {}
    for name, service in services.items():
        for port in published_ports(service):
            assert port not in seen, f"host port {port} published by {seen[port]} and {name}"
            seen[port] = name


def test_depends_on_references_and_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use the long depends_on form with a condition"
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec.get("condition") == expected, f"{name} -> {dep}: condition should be {expected}"
            if expected == "service_healthy":
                assert healthcheck_test(services[dep]), f"{name} waits for {dep} to be healthy; it has no healthcheck"
            dep_profiles = set(services[dep].get("profiles") or [])
            assert dep_profiles <= set(service.get("profiles") or []), (
                f"{name} depends on {dep}, which is in profiles {sorted(dep_profiles)} that {name} does not enable")


def test_pipeline_dependencies(services: dict[str, dict[str, Any]]) -> None:
    deps = {name: set(services[name].get("depends_on") or {}) for name in PIPELINE_COMMANDS}
    assert "kafka" in deps["topics"]
    assert "timescaledb" in deps["migrate"]
    for name in LONG_RUNNING_PIPELINE:
        assert {"kafka", "topics"} <= deps[name], f"{name} must wait for the topics"
    assert {"timescaledb", "migrate"} <= deps["sink"]
    assert "anvil" in deps["settlement"]


def test_pipeline_services_run_xchg_with_container_endpoints(services: dict[str, dict[str, Any]]) -> None:
    for name, command in PIPELINE_COMMANDS.items():
        service = services[name]
        assert service.get("command") == command, name
        build = service.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        dockerfile = "Dockerfile" if isinstance(build, str) else (build or {}).get("dockerfile", "Dockerfile")
        assert context == ".", f"{name} must build the repository's Dockerfile"
        assert (ROOT / dockerfile).resolve() == DOCKERFILE
        env = env_of(service)
        assert env.get("EXCHANGE_KAFKA_BOOTSTRAP") == "kafka:9092", name
        assert env.get("EXCHANGE_RPC_URL") == "http://anvil:8545", name
        assert env.get("EXCHANGE_METRICS_PORT") == str(METRICS_PORT), name
        url = interpolation_default(env.get("EXCHANGE_DATABASE_URL", ""))
        writer = settings_default("pg_writer_user")
        password = settings_default("pg_writer_password")
        assert url == f"postgresql://{writer}:{password}@timescaledb:5432/{settings_default('pg_database')}", name
    for name in LONG_RUNNING_PIPELINE:
        assert f"127.0.0.1:{METRICS_PORT}/metrics" in healthcheck_test(services[name]), name


# -- compose: the core services ------------------------------------------------------------------------


def test_kafka_is_a_single_kraft_node_with_single_broker_internal_topics(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = env_of(kafka)
    for key in ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
                "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"):
        assert env.get(key) == "1", key
    assert env.get("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS") == "0"
    assert env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false"
    assert set(env.get("KAFKA_PROCESS_ROLES", "").split(",")) == {"broker", "controller"}
    assert env.get("KAFKA_CONTROLLER_QUORUM_VOTERS") == f"{env.get('KAFKA_NODE_ID')}@kafka:9093"
    # CLUSTER_ID: 22 characters of URL-safe base64 of 16 bytes.
    cluster_id = env.get("CLUSTER_ID", "")
    assert len(cluster_id) == 22 and len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    advertised = dict(reversed(item.split("://", 1)) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised.get("kafka:9092") == "PLAINTEXT", "other containers reach kafka:9092"
    assert f"127.0.0.1:{settings_default('kafka_port')}" in advertised, "the host reaches 127.0.0.1:19092"
    listeners = env["KAFKA_LISTENERS"]
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for listener in [*advertised.values(), env["KAFKA_CONTROLLER_LISTENER_NAMES"]]:
        assert f"{listener}://" in listeners and listener in protocols, listener
    assert "/var/lib/kafka/data" in {str(v).split(":")[1] for v in kafka.get("volumes", [])}
    assert env.get("KAFKA_LOG_DIRS") == "/var/lib/kafka/data"
    check = healthcheck_test(kafka)
    assert re.search(r"kafka-(broker-api-versions|topics)\.sh .*--bootstrap-server localhost:9092", check), check


def test_timescaledb_matches_the_project_database(services: dict[str, dict[str, Any]]) -> None:
    db = services["timescaledb"]
    env = env_of(db)
    assert env.get("POSTGRES_DB") == settings_default("pg_database") == "xchg"
    assert env.get("POSTGRES_USER") == settings_default("pg_writer_user") == "xchg_writer"
    assert interpolation_default(env.get("POSTGRES_PASSWORD", "")) == settings_default("pg_writer_password")
    assert "pg_isready" in healthcheck_test(db)


def test_timescaledb_init_script_creates_the_schema_and_analyst(compose: dict[str, Any]) -> None:
    mounted = {c["source"] for c in compose["services"]["timescaledb"].get("configs", [])}
    for source in mounted:
        assert source in (compose.get("configs") or {}), f"config {source} is not declared"
    script = "\n".join(compose["configs"][source].get("content", "") for source in mounted)
    assert "create schema if not exists xchg authorization xchg_writer" in script
    assert f"create role {settings_default('pg_analyst_user')} login" in script
    assert "$$" not in script, "a literal $ must not reach compose interpolation"


def test_anvil_command(services: dict[str, dict[str, Any]]) -> None:
    anvil = services["anvil"]
    argv = [*(anvil.get("entrypoint") or []), *(anvil.get("command") or [])]
    assert argv[0] == "anvil"
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options.get("--host") == "0.0.0.0"
    assert options.get("--chain-id") == str(settings_default("chain_id")) == "31337"
    assert options.get("--slots-in-an-epoch") == "1"
    assert options.get("--port", "8545") == "8545"
    assert re.search(r"cast chain-id|eth_chainId|eth_blockNumber", healthcheck_test(anvil))


def test_volumes_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for entry in service.get("volumes") or []:
            source = entry.get("source") if isinstance(entry, dict) else str(entry).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount source {source} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
    for core in ("kafka", "timescaledb"):
        assert any(not str(v).startswith((".", "/")) for v in compose["services"][core].get("volumes", [])), core


# -- Prometheus --------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_project_service(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    config_path = host_file(prometheus, "/etc/prometheus/prometheus.yml")
    assert config_path == (PROMETHEUS_DIR / "prometheus.yml").resolve()
    config = load_yaml(config_path)
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                targets[target] = job.get("metrics_path", "/metrics")
    for name in LONG_RUNNING_PIPELINE:
        assert targets.get(f"{name}:{METRICS_PORT}") == "/metrics", f"{name}:{METRICS_PORT} is not scraped"
    for target in targets:
        host = target.rsplit(":", 1)[0]
        assert host in services or host in {"127.0.0.1", "localhost"}, f"scrape target {target}: no such service"


def test_alert_rule_files_are_mounted_and_parse(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    assert config.get("rule_files"), "no alert rules loaded"
    for rule_file in config["rule_files"]:
        path = host_file(prometheus, rule_file)
        assert path.is_file(), f"rule file {rule_file} maps to missing {path}"
        rules = load_yaml(path)
        assert rules["groups"] and all(group["rules"] for group in rules["groups"])
        for group in rules["groups"]:
            for rule in group["rules"]:
                assert rule.get("expr"), rule
                assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, rule


@pytest.mark.parametrize("alert", sorted(MISSION_ALERTS))
def test_alert_threshold_matches_the_mission(alert: str) -> None:
    metric, comparison, threshold, severity = MISSION_ALERTS[alert]
    rules = alert_rules()
    assert alert in rules, f"alert {alert} is missing"
    rule = rules[alert]
    expr = " ".join(rule["expr"].split())
    assert threshold_of(expr) == (comparison, pytest.approx(threshold))
    assert rule["labels"]["severity"] == severity
    assert metric in {resolve_series(s, metrics_table()) for s in promql_metrics(expr)}, f"{alert} must use {metric}"
    if metric.endswith("_seconds"):
        assert expr.startswith("histogram_quantile(0.99,"), f"{alert}: p99 of the histogram"
    if alert == "SettlementFailureRateHigh":
        assert 'xchg_settlement_batches_total{state="FAILED"}' in expr


def test_mission_thresholds_are_the_ones_the_test_expects() -> None:
    assert ALERTS_MD.is_file(), f"{ALERTS_MD.relative_to(ROOT)} is missing"
    text = ALERTS_MD.read_text()
    expected = {
        r"Order latency > (\d+)ms: (\w+)": (MISSION_ALERTS["OrderLatencyP99High"], 1000),
        r"Trade TPS < (\d+): (\w+)": (MISSION_ALERTS["TradeThroughputLow"], 1),
        r"Database query time > (\d+)ms: (\w+)": (MISSION_ALERTS["DatabaseQuerySlow"], 1000),
        r"Settlement failure rate > (\d+)%: (\w+)": (MISSION_ALERTS["SettlementFailureRateHigh"], 100),
    }
    for pattern, ((_, _, threshold, severity), scale) in expected.items():
        match = re.search(pattern, text)
        assert match, f"{ALERTS_MD.relative_to(ROOT)} no longer says {pattern!r}"
        assert float(match.group(1)) / scale == pytest.approx(threshold)
        assert match.group(2).lower() == severity


def test_alerts_use_only_listed_metrics() -> None:
    table = metrics_table()
    for name, rule in alert_rules().items():
        for series in promql_metrics(rule["expr"]):
            assert series in PROMETHEUS_SERIES or resolve_series(series, table), (
                f"alert {name} uses {series}, which METRICS.md does not list")


def test_metrics_table() -> None:
    table = metrics_table()
    for required in ("xchg_order_latency_seconds", "xchg_trades_total", "xchg_db_query_seconds",
                     "xchg_settlement_batches_total", "xchg_ws_connections"):
        assert required in table, f"METRICS.md does not list {required}"
    assert table["xchg_order_latency_seconds"] == table["xchg_db_query_seconds"] == "histogram"
    for name, kind in table.items():
        assert (kind == "counter") == name.endswith("_total"), f"{name}: only counters end in _total"


# The modules that declare the project's metrics (each process exposes the ones it imports).
METRIC_MODULES = ("streams.observability", "connectors.websocket.metrics")


def declared_metrics() -> dict[str, str]:
    """The ``xchg_`` metrics the code really declares: exposed name -> type (imported, not read
    from any document)."""
    import importlib

    from prometheus_client.metrics import MetricWrapperBase

    declared: dict[str, str] = {}
    for module in METRIC_MODULES:
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, MetricWrapperBase):
                for family in value.describe():
                    exposed = f"{family.name}_total" if family.type == "counter" else family.name
                    declared[exposed] = family.type
    return declared


def test_declared_metrics_are_listed() -> None:
    """METRICS.md lists exactly the metrics the code declares, typed alike (both ways: a listed
    metric nothing declares is a document of a component that does not exist)."""
    table, declared = metrics_table(), declared_metrics()
    assert declared, "no module declares metrics"
    for exposed, kind in declared.items():
        assert table.get(exposed) == kind, f"{exposed} ({kind}) is not listed in METRICS.md"
    undeclared = sorted(set(table) - set(declared))
    assert not undeclared, f"METRICS.md lists metrics nothing declares: {undeclared}"


def _dashboard_expressions() -> list[tuple[str, str]]:
    out = []
    for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: panel {panel['title']!r}", target["expr"]))
    return out


def test_dashboards_and_alerts_use_declared_metrics() -> None:
    """Every series a dashboard panel or an alert queries is declared by the code (or is one of
    Prometheus's own): a panel over a metric nothing exports would stay empty for ever."""
    declared = declared_metrics()
    queries = _dashboard_expressions() + [(f"alert {name}", rule["expr"]) for name, rule in alert_rules().items()]
    assert queries
    for where, expr in queries:
        for series in promql_metrics(expr):
            assert series in PROMETHEUS_SERIES or resolve_series(series, declared), (
                f"{where} uses {series}, which no module declares")


def test_the_declared_metrics_check_fails_on_a_planted_metric() -> None:
    declared = declared_metrics()
    assert resolve_series("xchg_ws_connections", declared) is not None
    assert resolve_series("xchg_nothing_declares_this", declared) is None


def test_promql_metric_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, market) (rate(xchg_a_bucket{state=~"X|Y"}[$__rate_interval])))'
            " / on (market) group_left xchg_b * 1e9 > bool 0.5 or vector(0) unless up offset 5m")
    assert promql_metrics(expr) == {"xchg_a_bucket", "xchg_b", "up"}
    assert resolve_series("xchg_a_bucket", {"xchg_a": "histogram"}) == "xchg_a"
    assert resolve_series("xchg_a_bucket", {"xchg_a": "counter"}) is None


# -- Grafana -----------------------------------------------------------------------------------------


def test_grafana_provisioning_and_dashboard(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    provisioning = host_file(grafana, "/etc/grafana/provisioning")
    assert provisioning == (GRAFANA_DIR / "provisioning").resolve()
    datasources = [ds for f in sorted((provisioning / "datasources").glob("*.y*ml")) for ds in load_yaml(f)["datasources"]]
    prometheus = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["url"] == "http://prometheus:9090"
    uid = prometheus[0]["uid"]
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.y*ml")) for p in load_yaml(f)["providers"]]
    assert providers, "no dashboard provider"
    dashboards: list[Path] = []
    for provider in providers:
        folder = host_file(grafana, provider["options"]["path"])
        assert folder.is_dir(), f"dashboard path {provider['options']['path']} is not mounted from the repository"
        dashboards += sorted(folder.glob("*.json"))
    assert dashboards, "no dashboard JSON"
    table = metrics_table()
    used: set[str] = set()
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
        assert panels, f"{path.name} has no panels"
        for panel in panels:
            assert panel["datasource"]["uid"] == uid, f"{path.name}: panel {panel['title']!r} datasource"
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                for series in promql_metrics(target["expr"]):
                    metric = resolve_series(series, table)
                    assert metric or series in PROMETHEUS_SERIES, (
                        f"{path.name}: panel {panel['title']!r} uses {series}, which METRICS.md does not list")
                    used.add(metric or series)
    for required in ("xchg_order_latency_seconds", "xchg_trades_total", "xchg_db_query_seconds",
                     "xchg_settlement_batches_total", "xchg_settlement_gas_used", "xchg_ws_connections"):
        assert required in used, f"the dashboard does not show {required}"


# -- Dockerfile ----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerignored(path: str, patterns: list[str]) -> bool:
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            tails = ["/".join(parts[i : j + 1]) for i in range(len(parts)) for j in range(i, len(parts))]
            if any(fnmatch.fnmatchcase(tail, pattern[3:]) for tail in tails):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_dockerfile_builds_a_non_root_xchg_image() -> None:
    instructions = dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and froms[-1].split()[0].startswith("python:3.11-slim")
    assert all(image_is_pinned(arg.split()[0]) for arg in froms)
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the image installs the package with `pip install .`"
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must run as a non-root user"
    entrypoints = [arg for op, arg in instructions if op == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["xchg"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "xchg" in scripts


def test_dockerfile_copies_only_what_the_context_holds() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for required in (".git", ".venv", ".run", "**/node_modules", "**/__pycache__", ".pytest_cache",
                     ".mypy_cache", ".ruff_cache"):
        assert required in patterns, f".dockerignore should exclude {required}"
    for op, arg in dockerfile_instructions():
        if op != "COPY" or "--from" in arg:
            continue
        sources = [word for word in arg.split() if not word.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    assert dockerignored("connectors/settlement/contracts/.slither-venv/lib", patterns)
    assert dockerignored("infra/chain/node_modules/solc", patterns)


# -- with a Docker engine only -----------------------------------------------------------------------------


def test_docker_compose_config_validates() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True, check=False,
                                        timeout=30).returncode != 0:
        pytest.skip("no `docker compose` CLI")
    if not docker_answers():
        pytest.skip("no Docker engine answers a ping (a CLI alone proves nothing)")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--profile", "pipeline", "--profile", "monitoring", "config", "-q"],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
