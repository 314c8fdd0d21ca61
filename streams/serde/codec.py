"""Encode and decode topic values: Avro binary in one of two framings.

Framings (the first byte tells them apart):

- *single-object* (default), Avro specification "Single object encoding":
  ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema + Avro binary.
  The writer schema is resolved among the schemas shipped in ``schemas/`` (current and every
  released version in ``schemas/history``), and the value is read into the current schema.
- *Confluent* (when a Schema Registry URL or client is given): ``00`` + the 4-byte big-endian
  schema id + Avro binary. Encoding registers the topic's current value schema under the subject
  ``<topic>-value`` once and caches the id; decoding fetches an unseen writer id once and caches it.

A codec with a registry still *decodes* single-object values, so a topic can migrate between
framings without a flag day; a codec without one rejects Confluent-framed values (``no_registry``).

Value shape: plain dicts as fastavro reads them. A union of records (a command or event ``body``)
is a tuple ``(full record name, dict)``, e.g. ``("xchg.v1.PlaceOrder", {...})``, both when encoding
and when decoding; ``["null", T]`` fields are the bare value or ``None``. Enums are their symbol
strings, ``Hash32`` is 32 raw bytes, decimals are ``decimal.Decimal`` with exponent 0.

Errors: any value that cannot be decoded raises :class:`DecodeError` with a stable ``reason`` code
(see :data:`DECODE_REASONS`) for the dead-letter headers, never a fastavro exception. A record
that does not fit its schema raises :class:`EncodeError`. A Schema Registry that cannot be reached
raises :class:`RegistryError` (transient: retry, do not dead-letter).

Performance: every schema is parsed once by the catalog; the per-topic headers and the fingerprint
→ (writer, reader) table are built in the constructor, so a call does a dict lookup, a header copy
and one read or write. Values in the topic's current schema go through encoders and decoders
generated from it (:mod:`streams.serde.compiled`, about twice as fast as fastavro's dispatch and
checked against it); other writer schemas, logical types and value shapes the generated code does
not take go through fastavro. ``tests/unit/serde/bench_serde_codec.py`` measures it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from typing import Any, Final, Literal, get_args

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro import validation as _validation
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError as _ValidationError

from streams.serde.catalog import SchemaCatalog, SchemaVersion, default_catalog
from streams.serde.compiled import CompiledSchema, Decoder, Malformed, compile_row_decoder, compile_schema
from streams.serde.topics import TOPICS, UnknownTopicError

__all__ = [
    "CONFLUENT_MAGIC",
    "DECODE_REASONS",
    "SINGLE_OBJECT_MAGIC",
    "Codec",
    "DecodeError",
    "EncodeError",
    "RegistryError",
    "SerdeError",
]

SINGLE_OBJECT_MAGIC: Final = b"\xc3\x01"
CONFLUENT_MAGIC: Final = b"\x00"
_SO_HEADER_LEN: Final = 10  # C3 01 + 8-byte fingerprint
_CF_HEADER_LEN: Final = 5  # 00 + 4-byte schema id

DecodeReason = Literal[
    "empty",  # zero-length value
    "unknown_framing",  # first bytes are neither C3 01 nor 00
    "truncated_header",  # framing header cut short
    "unknown_fingerprint",  # single-object fingerprint of no known schema
    "wrong_record",  # a known schema, but of another topic's record
    "no_registry",  # Confluent framing, but this codec has no Schema Registry
    "unknown_schema_id",  # the Schema Registry does not know the id
    "unusable_writer_schema",  # the registry's schema cannot be parsed or resolved to ours
    "truncated",  # the Avro body ends early
    "malformed",  # the Avro body is not valid for the writer schema (bad UTF-8, union index...)
    "trailing_bytes",  # bytes left after a complete record
]
DECODE_REASONS: Final[frozenset[str]] = frozenset(get_args(DecodeReason))


class SerdeError(Exception):
    """Base of the errors raised by the codec."""


class DecodeError(SerdeError):
    """A value that cannot be decoded; ``reason`` is a stable code for dead-letter headers."""

    def __init__(self, reason: DecodeReason, detail: str = "") -> None:
        self.reason: DecodeReason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class EncodeError(SerdeError):
    """A record that does not fit the topic's schema (missing field, wrong type, out of range)."""


class RegistryError(SerdeError):
    """The Schema Registry failed (unreachable, 5xx, refused a registration): not the data's fault."""


class _Resolution:
    """How to read one writer schema: fastavro's writer schema and reader (None = same), and the
    generated decoder when the writer schema is the current one."""

    __slots__ = ("compiled", "reader", "version", "writer")

    def __init__(self, writer: Any, reader: Any | None, version: str,
                 compiled: CompiledSchema | None = None) -> None:
        self.writer = writer
        self.reader = reader
        self.version = version
        self.compiled = compiled


class _TopicCodec:
    __slots__ = ("by_fingerprint", "by_id", "compiled", "current", "header", "names", "parsed", "schema_id",
                 "topic")

    def __init__(self, topic: str, current: SchemaVersion, versions: tuple[SchemaVersion, ...]) -> None:
        self.topic = topic
        self.current = current
        self.parsed = current.parsed
        self.compiled = compile_schema(current.parsed)
        self.header = SINGLE_OBJECT_MAGIC + current.fingerprint
        self.schema_id: int | None = None
        # Names a writer record may carry: ours, or one of our aliases (a rename).
        namespace = current.record.rpartition(".")[0]
        aliases = current.schema.get("aliases", []) if isinstance(current.schema, dict) else []
        self.names = frozenset({current.record, *(a if "." in a else f"{namespace}.{a}" for a in aliases)})
        self.by_fingerprint: dict[bytes, _Resolution] = {}
        for sv in versions:
            if sv.fingerprint == current.fingerprint:
                self.by_fingerprint[sv.fingerprint] = self.current_resolution()
            else:
                self.by_fingerprint.setdefault(
                    sv.fingerprint, _Resolution(sv.parsed, current.parsed, sv.version)
                )
        self.by_id: dict[int, _Resolution] = {}

    def current_resolution(self) -> _Resolution:
        return _Resolution(self.parsed, None, self.current.version, self.compiled)


class Codec:
    """Topic-aware Avro codec (see the module doc for framings, value shapes and errors).

    ``catalog`` defaults to the repository's ``schemas/``. ``schema_registry_url`` (or an already
    built ``schema_registry_client``, e.g. a shared ``mock://`` one in tests) switches encoding to
    Confluent framing. ``strict=True`` validates each record against the schema before writing
    (slower; catches e.g. a float where a long is expected, which fastavro would otherwise
    truncate silently).

    A codec may be shared by threads: its tables only grow (a registry id learnt twice is learnt
    identically) and fastavro calls keep no shared state.
    """

    def __init__(
        self,
        catalog: SchemaCatalog | None = None,
        *,
        schema_registry_url: str | None = None,
        schema_registry_client: Any | None = None,
        strict: bool = False,
    ) -> None:
        self._catalog = catalog if catalog is not None else default_catalog()
        self._strict = strict
        self._registry: Any | None = schema_registry_client
        if self._registry is None and schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            # new_client, not the constructor: it honours mock:// URLs (an in-memory registry).
            self._registry = SchemaRegistryClient.new_client({"url": schema_registry_url})
        self._topics: dict[str, _TopicCodec] = {}
        for name, row in TOPICS.items():
            if row.value_record is not None:
                rec = row.value_record
                self._topics[name] = _TopicCodec(
                    name, self._catalog.current(rec), self._catalog.versions(rec)
                )

    @property
    def catalog(self) -> SchemaCatalog:
        return self._catalog

    @property
    def schema_registry_client(self) -> Any | None:
        """The Schema Registry client in use (None in single-object mode)."""
        return self._registry

    @property
    def framing(self) -> Literal["single-object", "confluent"]:
        return "confluent" if self._registry is not None else "single-object"

    # -- encode -------------------------------------------------------------------------------

    def encode(self, topic: str, record: Mapping[str, Any]) -> bytes:
        """Frame and encode ``record`` with the topic's current value schema."""
        tc = self._topics.get(topic)
        if tc is None:
            raise self._no_schema(topic)
        if self._registry is None:
            header = tc.header
        else:
            schema_id = tc.schema_id if tc.schema_id is not None else self._register(tc)
            header = CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")
        if tc.compiled is not None and not self._strict:
            try:
                return tc.compiled.encode(record, header)
            except Exception:  # fastavro, below, accepts the value or says why it cannot
                pass
        buf = BytesIO()
        buf.write(header)
        try:
            if self._strict:
                _validation.validate(record, tc.parsed, raise_errors=True)
            schemaless_writer(buf, tc.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, _ValidationError) as exc:
            raise EncodeError(f"{topic}: {exc}") from exc
        return buf.getvalue()

    def schema_id(self, topic: str) -> int:
        """The registry id of the topic's current value schema (registering it if needed)."""
        tc = self._topics.get(topic)
        if tc is None:
            raise self._no_schema(topic)
        if self._registry is None:
            raise RegistryError("no Schema Registry configured")
        return tc.schema_id if tc.schema_id is not None else self._register(tc)

    def register_all(self) -> dict[str, int]:
        """Register every topic's value schema now (e.g. at start-up); ``{topic: id}``."""
        return {topic: self.schema_id(topic) for topic in self._topics}

    def _register(self, tc: _TopicCodec) -> int:
        from confluent_kafka.schema_registry import Schema

        assert self._registry is not None
        try:
            schema_id = int(
                self._registry.register_schema(f"{tc.topic}-value", Schema(tc.current.schema_json, "AVRO"))
            )
        except Exception as exc:  # the client raises its own and its HTTP library's errors
            raise RegistryError(f"registering {tc.topic}-value: {exc}") from exc
        tc.schema_id = schema_id
        tc.by_id[schema_id] = tc.current_resolution()
        return schema_id

    # -- decode -------------------------------------------------------------------------------

    def decode(self, topic: str, data: bytes | None) -> dict[str, Any]:
        """Unframe and decode ``data`` into a dict shaped by the topic's current value schema."""
        tc = self._topics.get(topic)
        if tc is None:
            raise self._no_schema(topic)
        if not data:  # b"" or a tombstone's None
            raise DecodeError("empty", f"{topic}: no value")
        size = len(data)
        if size >= _SO_HEADER_LEN and data[0] == 0xC3 and data[1] == 0x01:
            res = tc.by_fingerprint.get(data[2:_SO_HEADER_LEN])
            if res is None:
                raise self._unknown_fingerprint(tc, bytes(data[2:_SO_HEADER_LEN]))
            start = _SO_HEADER_LEN
        elif size >= _CF_HEADER_LEN and data[0] == 0:
            schema_id = int.from_bytes(data[1:_CF_HEADER_LEN], "big")
            res = tc.by_id.get(schema_id) or self._lookup_id(tc, schema_id)
            start = _CF_HEADER_LEN
        else:
            raise self._bad_header(data)
        if res.compiled is not None:
            return self._read_generated(topic, res.compiled.decode, data, start)  # type: ignore[no-any-return]
        fo = BytesIO(data)
        fo.seek(start)
        try:
            value = schemaless_reader(
                fo, res.writer, res.reader, return_record_name=True, return_record_name_override=True
            )
        except Exception as exc:  # fastavro signals bad input with many unrelated types
            if type(exc).__name__ == "SchemaResolutionError":
                raise DecodeError("unusable_writer_schema", f"{topic}: {exc}") from exc
            # Running out of input shows as EOFError, or as IndexError inside a varint.
            if isinstance(exc, EOFError) or fo.tell() >= size:
                raise DecodeError("truncated", f"{topic}: body ends early ({size} bytes)") from exc
            raise DecodeError("malformed", f"{topic}: {type(exc).__name__}: {exc}") from exc
        if fo.tell() != size:
            raise DecodeError("trailing_bytes", f"{topic}: {size - fo.tell()} bytes after the record")
        if not isinstance(value, dict):
            raise DecodeError("malformed", f"{topic}: not a record")
        return value

    def row_reader(self, topic: str, fields: Sequence[str],
                   converters: Mapping[str, Callable[[Any], Any]] | None = None) -> Callable[[bytes | None], tuple[Any, ...]]:
        """A reader of ``topic`` values that returns the values of ``fields`` as a tuple (each
        through its converter, if any) instead of a dict: what a sink turning records into table
        rows needs, without building and then taking apart a dict per record.

        Values in the current schema with single-object framing go through a decoder generated for
        exactly this; any other value through :meth:`decode`. Errors are :meth:`decode`'s, plus
        whatever a converter raises."""
        tc = self._topics.get(topic)
        if tc is None:
            raise self._no_schema(topic)
        names = tuple(fields)
        convert = dict(converters or {})
        row = compile_row_decoder(tc.parsed, names, convert) if tc.compiled is not None else None
        header, start = tc.header, len(tc.header)

        def read(data: bytes | None) -> tuple[Any, ...]:
            if row is not None and data and data[:start] == header:
                return self._read_generated(topic, row, data, start)  # type: ignore[no-any-return]
            value = self.decode(topic, data)
            return tuple(convert[f](value[f]) if f in convert else value[f] for f in names)

        return read

    @staticmethod
    def _read_generated(topic: str, read: Decoder, data: bytes, start: int) -> Any:
        """A generated decoder's read of the whole value (a record or a row), with the error
        reasons of the fastavro path."""
        size = len(data)
        try:
            value, end = read(data, start)
        except IndexError as exc:
            raise DecodeError("truncated", f"{topic}: body ends early ({size} bytes)") from exc
        except (Malformed, UnicodeDecodeError) as exc:
            raise DecodeError("malformed", f"{topic}: {type(exc).__name__}: {exc}") from exc
        if end != size:
            raise DecodeError("trailing_bytes", f"{topic}: {size - end} bytes after the record")
        return value

    def _bad_header(self, data: bytes) -> DecodeError:
        if not data:
            return DecodeError("empty")
        if data[0] == 0xC3 and (len(data) == 1 or data[1] == 0x01):
            return DecodeError("truncated_header", f"single-object header needs 10 bytes, got {len(data)}")
        if data[0] == 0:
            if self._registry is None:
                return DecodeError("no_registry", "Confluent framing but no Schema Registry configured")
            return DecodeError("truncated_header", f"Confluent header needs 5 bytes, got {len(data)}")
        return DecodeError("unknown_framing", f"first bytes {bytes(data[:2]).hex()}")

    def _unknown_fingerprint(self, tc: _TopicCodec, fp: bytes) -> DecodeError:
        other = self._catalog.by_fingerprint(fp)
        if other is not None:
            return DecodeError("wrong_record", f"{tc.topic} expects {tc.current.record}, got {other.record}")
        return DecodeError("unknown_fingerprint", f"{tc.topic}: {fp.hex()}")

    def _lookup_id(self, tc: _TopicCodec, schema_id: int) -> _Resolution:
        if self._registry is None:
            raise DecodeError("no_registry", "Confluent framing but no Schema Registry configured")
        try:
            registered = self._registry.get_schema(schema_id)
        except Exception as exc:
            # Not cached: an id unknown now may be registered by the time the next record comes.
            if getattr(exc, "http_status_code", None) == 404:
                raise DecodeError(
                    "unknown_schema_id", f"{tc.topic}: {schema_id} not in the registry"
                ) from exc
            raise RegistryError(f"fetching schema id {schema_id}: {exc}") from exc
        res = self._resolution_for(tc, schema_id, registered)
        tc.by_id[schema_id] = res
        return res

    def _resolution_for(self, tc: _TopicCodec, schema_id: int, registered: Any) -> _Resolution:
        if getattr(registered, "schema_type", "AVRO") not in (None, "AVRO"):
            raise DecodeError("unusable_writer_schema", f"schema id {schema_id} is not Avro")
        try:
            writer_json = json.loads(registered.schema_str)
            canonical = to_parsing_canonical_form(writer_json)
            if canonical == tc.current.canonical:
                return tc.current_resolution()
            writer = parse_schema(writer_json, named_schemas={})
        except Exception as exc:
            raise DecodeError("unusable_writer_schema", f"schema id {schema_id}: {exc}") from exc
        name = writer.get("name") if isinstance(writer, dict) else writer
        if name not in tc.names:
            raise DecodeError(
                "wrong_record", f"{tc.topic} expects {tc.current.record}, id {schema_id} is {name}"
            )
        return _Resolution(writer, tc.parsed, f"registry:{schema_id}")

    @staticmethod
    def _no_schema(topic: str) -> UnknownTopicError:
        if topic in TOPICS:
            return UnknownTopicError(f"{topic} carries raw bytes, it has no value schema")
        return UnknownTopicError(f"unknown topic {topic!r}")
