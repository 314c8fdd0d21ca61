"""Client identities derive from the namespace (streams/settings.py), and consumer errors that
end a client are told from those that do not (streams/runtime/clients.py)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from streams.runtime.clients import ClientFatal, is_fatal, raise_if_fatal
from streams.settings import Settings


def identities(settings: Settings) -> set[str]:
    return {settings.engine_group_id, settings.engine_instance, settings.engine_transactional_id_prefix,
            settings.sink_identity}


def test_two_namespaces_with_default_settings_share_no_identity() -> None:
    a, b = Settings(topic_prefix="a-"), Settings(topic_prefix="b-")
    assert identities(a).isdisjoint(identities(b))
    assert a.engine_group_id == "a-xchg-engine" and a.engine_transactional_id_prefix == "a-xchg-engine"
    assert a.engine_instance == "a-engine-1" and a.sink_identity == "a-xchg-sink"


def test_the_default_namespace_keeps_the_historical_names() -> None:
    settings = Settings(topic_prefix="")
    assert (settings.engine_group_id, settings.engine_instance, settings.engine_transactional_id_prefix,
            settings.sink_identity) == ("xchg-engine", "engine-1", "xchg-engine", "xchg-sink")


def test_an_explicit_identity_is_used_as_given() -> None:
    settings = Settings(topic_prefix="a-", engine_group="ops-engine", sink_name="ops-sink")
    assert settings.engine_group_id == "ops-engine" and settings.sink_identity == "ops-sink"
    assert settings.engine_instance == "a-engine-1"  # the others still derive from the namespace


@pytest.mark.parametrize("code", [KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID,
                                  KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED])
def test_errors_that_end_a_consumer(code: int) -> None:
    # librdkafka reports a fenced static member as code _FATAL with fatal() False.
    error = KafkaError(code, "Static consumer fenced by other consumer with same group.instance.id")
    assert not error.fatal() and is_fatal(error)
    with pytest.raises(ClientFatal, match="fenced"):
        raise_if_fatal(error)


def test_a_fatal_flag_alone_is_enough() -> None:
    assert is_fatal(KafkaError(KafkaError._FENCED, "producer fenced", fatal=True))


@pytest.mark.parametrize("code", [KafkaError._PARTITION_EOF, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                                  KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT])
def test_errors_a_consumer_lives_through(code: int) -> None:
    error = KafkaError(code, "passing trouble")
    assert not is_fatal(error)
    raise_if_fatal(error)
    raise_if_fatal(None)
