"""Session fixtures: each real service starts once per test session (see ``tests/services.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Endpoint, chain_endpoint, kafka_endpoint, postgres_endpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka() -> Iterator[Endpoint]:
    with kafka_endpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka: Endpoint) -> str:
    return kafka.address


@pytest.fixture(scope="session")
def postgres() -> Iterator[Endpoint]:
    with postgres_endpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def chain() -> Iterator[Endpoint]:
    with chain_endpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def project_topics(kafka_bootstrap: str) -> str:
    """The topics of infra/kafka/topics.yaml, applied once per session."""
    from streams.runtime.topic_admin import TopicAdmin, load_topic_file
    from streams.settings import load_settings

    TopicAdmin(kafka_bootstrap).apply(load_topic_file(load_settings().topics_file))
    return kafka_bootstrap


@pytest.fixture(autouse=True)
def namespaces_are_deleted() -> Iterator[None]:
    """Each test's fresh topics (``tests.pipeline.fresh_namespace``) are deleted when it ends:
    torn down after the test's own fixtures, which stop the processes that used them."""
    yield
    from tests.pipeline import forget_namespaces

    forget_namespaces()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for per-test topics, groups and transactional ids."""
    return uuid.uuid4().hex[:10]
