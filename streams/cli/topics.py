"""``xchg topics apply|plan``: the declarative topic file, applied idempotently."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from streams.cli.errors import guarded
from streams.errors import EXIT_USAGE
from streams.runtime.topic_admin import Plan, TopicAdmin, TopicSpec, load_topic_file
from streams.settings import load_settings

app = typer.Typer(help="Create and check the Kafka topics from infra/kafka/topics.yaml.", no_args_is_help=True)
console = Console(highlight=False)


def _report(plan: Plan, applied: bool) -> None:
    verb = {"create": "created" if applied else "would create",
            "alter-config": "altered" if applied else "would alter",
            "add-partitions": "grew" if applied else "would grow",
            "drift": "DRIFT"}
    for change in plan.changes:
        colour = "yellow" if change.action == "drift" else "green"
        console.print(f"[{colour}]{verb[change.action]:>13}[/{colour}] {change.topic}: {change.detail}")
    if plan.unchanged:
        console.print(f"[dim]    unchanged {len(plan.unchanged)} topic(s)[/dim]")
    if plan.brokers < 3:
        console.print(f"[dim]    ({plan.brokers}-broker cluster: replication clamped to {plan.brokers})[/dim]")


@app.command()
@guarded
def apply(allow_repartition: bool = typer.Option(False, help="allow adding partitions to existing topics")) -> None:
    """Create missing topics and set differing configs; report drift it cannot fix. Exit 2 on drift."""
    settings = load_settings()
    admin = TopicAdmin(settings.bootstrap_servers)
    plan = admin.apply(load_topic_file(settings.topics_file, settings.topic_prefix), allow_repartition)
    _report(plan, applied=True)
    if plan.drift:
        raise typer.Exit(EXIT_USAGE)


def retention(config: dict[str, str]) -> str:
    """``retention.ms`` for people: 90 d, 7 d, 12 h, forever, or the broker's default."""
    raw = config.get("retention.ms")
    if raw is None:
        return "broker default"
    ms = int(raw)
    if ms < 0:
        return "forever"
    for unit, length in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= length and ms % length == 0:
            return f"{ms // length} {unit}"
    return f"{ms} ms"


def _policies(specs: list[TopicSpec]) -> Table:
    table = Table("topic", "partitions", "cleanup", "retention", "max record", box=None, pad_edge=False)
    for spec in specs:
        size = spec.config.get("max.message.bytes")
        table.add_row(spec.name, str(spec.partitions), spec.config.get("cleanup.policy", "delete"),
                      retention(spec.config), f"{int(size) // 1024} KiB" if size else "broker default")
    return table


@app.command()
@guarded
def plan() -> None:
    """Show each topic's policies and what `apply` would change, without changing anything.
    Exit 2 only for drift that `apply` cannot fix (partition count, replication)."""
    settings = load_settings()
    admin = TopicAdmin(settings.bootstrap_servers)
    specs = load_topic_file(settings.topics_file, settings.topic_prefix)
    console.print(_policies(specs))
    result = admin.plan(specs)
    _report(result, applied=False)
    if not result.changes:
        console.print("[green]in line with the topic file[/green]")
    if result.drift:
        raise typer.Exit(EXIT_USAGE)
