"""Avro contracts of every topic: the schema catalog, the topic table and the codec.

``Codec().encode(topic, value_dict) -> bytes`` / ``Codec().decode(topic, data) -> dict``; see
:mod:`streams.serde.codec` for framings and value shapes, ``schemas/README.md`` for the rules.
"""

from streams.serde.catalog import SchemaCatalog, SchemaCatalogError, SchemaVersion, default_catalog
from streams.serde.codec import Codec, DecodeError, EncodeError, RegistryError, SerdeError
from streams.serde.topics import TOPICS, Topic, UnknownTopicError, topic

__all__ = [
    "TOPICS",
    "Codec",
    "DecodeError",
    "EncodeError",
    "RegistryError",
    "SchemaCatalog",
    "SchemaCatalogError",
    "SchemaVersion",
    "SerdeError",
    "Topic",
    "UnknownTopicError",
    "default_catalog",
    "topic",
]
