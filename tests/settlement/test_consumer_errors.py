"""Consumed Kafka errors in the settlement loops: a fatal one (fenced static member, ``_FATAL``
with ``fatal()`` false, authorisation) ends the loop with ``ClientFatal``, and the CLI turns that
into one error line and exit code 1; any other error is logged and skipped."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError
from typer.testing import CliRunner

from connectors.settlement.batch_service import BatcherRun, BatchService
from streams.cli import settle
from streams.runtime.clients import ClientFatal
from tests.settlement.conftest import Stage

FENCED = "Fatal error: Broker: Static consumer fenced by other consumer with same group.instance.id"


class ErrorMessage:
    def __init__(self, code: int, reason: str) -> None:
        self._error = KafkaError(code, reason, fatal=False)

    def error(self) -> KafkaError:
        return self._error


class ScriptedConsumer:
    """Hands out one scripted poll, then nothing; records what the loop did with it."""

    def __init__(self, messages: list[ErrorMessage]) -> None:
        self.polls = [messages]
        self.commits = 0

    def consume(self, *_: Any, **__: Any) -> list[ErrorMessage]:
        return self.polls.pop(0) if self.polls else []

    def commit(self, *_: Any, **__: Any) -> None:
        self.commits += 1

    def close(self) -> None:
        pass


def test_the_submitter_stops_on_a_fatal_consumer_error_and_skips_a_transient_one(stage: Stage) -> None:
    sub = stage.submitter().acquire()
    try:
        sub.consumer = ScriptedConsumer([ErrorMessage(KafkaError._TRANSPORT, "broker connection lost")])
        assert not sub.step()  # logged and skipped, nothing committed
        assert sub.consumer.commits == 0
        sub.consumer = ScriptedConsumer([ErrorMessage(KafkaError._FATAL, FENCED)])
        with pytest.raises(ClientFatal, match="_FATAL"):
            sub.step()
    finally:
        sub.consumer = None
        sub.close()


def test_the_batcher_stops_on_a_fatal_consumer_error(stage: Stage) -> None:
    group = f"{stage.ns.prefix}batcher"
    service = BatchService(stage.settings, stage.deployment, stage.units,
                           BatcherRun(group=group, transactional_id=group, idle_exit_s=0.5))
    service.consumer.close()
    service.consumer = ScriptedConsumer([ErrorMessage(KafkaError._TRANSPORT, "broker connection lost"),
                                         ErrorMessage(KafkaError._FATAL, FENCED)])  # type: ignore[assignment]
    with pytest.raises(ClientFatal, match="fenced"):
        service.run()


class FatalService:
    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def run(self, *_: Any, **__: Any) -> int:
        raise ClientFatal(f"_FATAL: {FENCED}")

    def acquire(self) -> FatalService:
        return self

    def close(self) -> None:
        pass


@pytest.mark.parametrize("command", ["batch", "run"])
def test_cli_prints_client_fatal_as_one_line_with_exit_code_1(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    import connectors.settlement.batch_service as batch_service
    import connectors.settlement.submitter as submitter

    monkeypatch.setattr(settle, "_deployment", lambda settings: object())
    monkeypatch.setattr(batch_service, "BatchService", FatalService)
    monkeypatch.setattr(submitter, "Submitter", FatalService)
    monkeypatch.setattr(submitter, "ensure_schema", lambda settings: None)
    result = CliRunner().invoke(settle.app, [command])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output  # handled, not raised
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: kafka client cannot go on: _FATAL"), result.output
