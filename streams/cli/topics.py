"""``xchg topics apply|plan``: the declarative topic file, applied idempotently."""

from __future__ import annotations

import typer
from rich.console import Console

from streams.cli.errors import guarded
from streams.runtime.topic_admin import Plan, TopicAdmin, load_topic_file
from streams.services.kafka import KafkaCluster
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
    admin = TopicAdmin(KafkaCluster(settings).bootstrap_servers())
    plan = admin.apply(load_topic_file(settings.topics_file, settings.topic_prefix), allow_repartition)
    _report(plan, applied=True)
    if plan.drift:
        raise typer.Exit(2)


@app.command()
@guarded
def plan() -> None:
    """Show what `apply` would change, without changing anything. Exit 2 when anything differs."""
    settings = load_settings()
    admin = TopicAdmin(KafkaCluster(settings).bootstrap_servers())
    result = admin.plan(load_topic_file(settings.topics_file, settings.topic_prefix))
    _report(result, applied=False)
    if result.changes:
        raise typer.Exit(2)
