"""Which stream a database holds, and whether a sink may write its stream into it.

Why a binding, and not a stream column in every key: the rows' keys ((market, trade_id),
(market, seq) ...) are only unique within one stream, and the positions stored with them
(``kafka_offsets``) are offsets in one *incarnation* of each topic. Rows of a second namespace,
of a second Kafka cluster, or of a topic deleted and created again (a reset of Kafka alone) share
those keys and those topic names, so a sink resuming "from the highest stored id" or "from the
stored offset" skips or misplaces real records. A stream column would keep such rows apart, but
then every analyst query (``v_trades`` ...) would need a filter, and trade ids would stop being
one gap-free sequence per market. So a database holds exactly one stream, named by the topics'
identities, and a sink refuses, at start-up and with one line, a database holding another:

- ``stream_binding`` has one row per input topic: the logical name, the physical name (namespace
  prefix + logical), the namespace, the Kafka *topic id* (a UUID the broker gives a topic when
  it is created: a recreated topic has a new one) and the *cluster id*.
- An empty database (no rows, no stored offsets, no sink state) is bound by the first sink.
- A database whose binding equals the sink's topics is written.
- Anything else is refused: a binding of other topics, or rows without a binding (written before
  bindings existed: whose they are is unknown). The remedy is named in the message: ``xchg db
  rebuild --yes`` (which empties the tables and binds the database to the current stream) or
  another database.

``decide`` is the pure decision; ``kafka_identities``, ``load``, ``holds_state`` and ``store`` are
the I/O around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from connectors.timescale.errors import SinkError
from streams.runtime.namespace import Namespace

REMEDY = ("run `xchg db rebuild --yes` to rebuild it from this stream's topics, or point EXCHANGE_DATABASE_URL "
          "at another database")


@dataclass(frozen=True)
class TopicIdentity:
    """One input topic as the broker knows it."""

    logical: str
    topic: str
    namespace: str
    topic_id: str
    cluster_id: str


@dataclass(frozen=True)
class Verdict:
    action: Literal["write", "bind", "refuse"]
    reason: str = ""  # refuse: the whole one-line message
    found: str = ""  # refuse: what the database holds, in a few words


def _shown(prefix: str) -> str:
    return repr(prefix) if prefix else "'' (no prefix)"


def decide(stored: Mapping[str, TopicIdentity], current: Mapping[str, TopicIdentity], holds_state: bool) -> Verdict:
    """May a sink reading ``current`` (logical → identity) write into a database bound to
    ``stored`` that ``holds_state`` (rows, stored offsets or sink state)?

    ``write`` when the bindings are equal; ``bind`` when the database is empty and unbound;
    ``refuse`` otherwise, with a one-line reason naming what the database holds and what to do."""
    if not stored:
        if not holds_state:
            return Verdict("bind")
        unknown = ("rows or stored offsets but no record of the stream they came from (written before streams "
                   "were bound)")
        return Verdict("refuse", f"the database holds {unknown}, so they may be another stream's; {REMEDY}", unknown)
    if dict(stored) == dict(current):
        return Verdict("write")
    found: list[str] = []
    stored_ns = {s.namespace for s in stored.values()}
    current_ns = {c.namespace for c in current.values()}
    if stored_ns != current_ns:
        found.append(f"namespace {', '.join(map(_shown, sorted(stored_ns)))} (this sink reads "
                     f"{', '.join(map(_shown, sorted(current_ns)))})")
    stored_clusters = {s.cluster_id for s in stored.values()}
    current_clusters = {c.cluster_id for c in current.values()}
    if stored_clusters != current_clusters:
        found.append(f"Kafka cluster {', '.join(sorted(stored_clusters))} (the broker is "
                     f"{', '.join(sorted(current_clusters))})")
    if not found:
        recreated = [f"{c.topic} (id {stored[k].topic_id} in the database, {c.topic_id} on the broker)"
                     for k, c in sorted(current.items()) if k in stored and stored[k].topic_id != c.topic_id]
        if recreated:
            found.append("topics that have since been recreated: " + ", ".join(recreated))
        if set(stored) != set(current):
            found.append(f"topics {sorted(stored)} (this sink reads {sorted(current)})")
    if not found:  # same ids under other names: still not the same binding
        found.append(f"topics {sorted(s.topic for s in stored.values())}")
    what = "; ".join(found)
    return Verdict("refuse", f"the database holds another stream: {what}; its rows and stored offsets are not this "
                             f"stream's, so the sink does not write into it: {REMEDY}", what)


# -- I/O ---------------------------------------------------------------------------------------------


def kafka_identities(bootstrap: str, namespace: Namespace, logical_topics: Sequence[str],
                     timeout: float = 30.0) -> dict[str, TopicIdentity]:
    """The cluster id and the topic ids of ``logical_topics`` in ``namespace``, from the broker."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [namespace(t) for t in logical_topics]
    try:
        cluster_id = admin.describe_cluster(request_timeout=timeout).result().cluster_id
        futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout)
        described = {}
        for name, future in futures.items():
            try:
                described[name] = future.result()
            except KafkaException as error:
                if error.args[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                    raise SinkError(f"topic {name} does not exist (run `xchg topics apply`)") from None
                raise
    except KafkaException as error:
        raise SinkError(f"cannot read the topics' metadata from Kafka at {bootstrap}: {error.args[0].str()}") from None
    return {logical: TopicIdentity(logical, namespace(logical), namespace.prefix,
                                   str(described[namespace(logical)].topic_id), str(cluster_id))
            for logical in logical_topics}


def load(conn: psycopg.Connection[Any]) -> dict[str, TopicIdentity]:
    return {r[0]: TopicIdentity(*r) for r in conn.execute(
        "select logical, topic, namespace, topic_id, cluster_id from stream_binding")}


def holds_state(conn: psycopg.Connection[Any]) -> bool:
    """Whether the database holds any row or position a stream could have written."""
    row = conn.execute(
        "select exists (select 1 from trades) or exists (select 1 from order_events)"
        " or exists (select 1 from candles) or exists (select 1 from book_snapshots)"
        " or exists (select 1 from kafka_offsets) or exists (select 1 from sink_book_state)").fetchone()
    return bool(row and row[0])


def store(conn: psycopg.Connection[Any], current: Mapping[str, TopicIdentity], bound_by: str) -> None:
    """Replace the binding by ``current`` (inside the caller's transaction)."""
    conn.execute("delete from stream_binding")
    with conn.cursor() as cur:
        cur.executemany(
            "insert into stream_binding (logical, topic, namespace, topic_id, cluster_id, bound_by)"
            " values (%s, %s, %s, %s, %s, %s)",
            [(i.logical, i.topic, i.namespace, i.topic_id, i.cluster_id, bound_by) for i in current.values()])


def check(conn: psycopg.Connection[Any], current: Mapping[str, TopicIdentity], bound_by: str) -> Verdict:
    """``decide`` against the database, binding it when it is empty; the caller raises on ``refuse``.
    Runs in one transaction that locks the binding, so two sinks starting on an empty database
    cannot bind it to two streams."""
    with conn.transaction():
        conn.execute("lock table stream_binding in share row exclusive mode")
        verdict = decide(load(conn), current, holds_state(conn))
        if verdict.action == "bind":
            store(conn, current, bound_by)
    return verdict
