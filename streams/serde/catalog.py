"""The schema catalog: every Avro contract of the pipeline, loaded once, parsed once.

Layout of ``schemas/`` (see ``schemas/README.md``):

- ``<fullname>.avsc``: exactly one named type (record, enum or fixed) per file, the file stem being
  the type's full name (``xchg.v1.OrderCommand.avsc``). Files refer to each other's types by name;
  that is also the layout ``fastavro.schema.load_schema`` understands.
- ``history/<fullname>/v<N>.avsc``: the released versions of each top-level value record, each one
  *self-contained* (every named type inlined), so that a later edit of a shared type cannot change
  what an old version means.

Invariants:

- The catalog never changes after construction; all schema work (reference resolution, parsing,
  canonical form, fingerprints) happens in the constructor, none per record.
- A "schema version" is always self-contained: its JSON inlines each named type at first use and
  refers to it by full name afterwards, so it can be registered in a Schema Registry or stored in
  ``history/`` as it is.
- Fingerprints are CRC-64-AVRO over the Parsing Canonical Form, kept as the 8 bytes that follow the
  ``C3 01`` marker of single-object encoding (little-endian).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from fastavro import parse_schema
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from streams.serde.topics import TOPICS

__all__ = [
    "HISTORY_DIRNAME",
    "NAMESPACE",
    "SCHEMA_DIR",
    "SchemaCatalog",
    "SchemaCatalogError",
    "SchemaVersion",
    "crc64_avro",
    "default_catalog",
    "expand",
    "release",
    "resolution_form",
]

NAMESPACE: Final = "xchg.v1"
SCHEMA_DIR: Final = Path(__file__).resolve().parents[2] / "schemas"
HISTORY_DIRNAME: Final = "history"
CURRENT: Final = "current"

_PRIMITIVES: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED: Final = frozenset({"record", "error", "enum", "fixed"})
_VERSION_FILE: Final = re.compile(r"^v([1-9][0-9]*)\.avsc$")

JsonSchema = Any  # a JSON-shaped Avro schema: str | list | dict


class SchemaCatalogError(ValueError):
    """The schema files are inconsistent (bad JSON, unknown or duplicate name, bad history file)."""


def crc64_avro(canonical_form: str) -> bytes:
    """The CRC-64-AVRO fingerprint of a parsing canonical form, as 8 little-endian bytes.

    fastavro prints the fingerprint as the hex of those bytes in little-endian order already
    (``"null"`` gives ``8a8f25cce724dd63`` for the value 0x63dd24e7cc258f8a), which is exactly the
    byte string the single-object encoding wants after its marker.
    """
    return bytes.fromhex(_fastavro_fingerprint(canonical_form, "CRC-64-AVRO"))


def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _split(full: str) -> tuple[str, str | None]:
    ns, _, short = full.rpartition(".")
    return short, (ns or None)


def _collect_named(node: JsonSchema, namespace: str | None, out: dict[str, JsonSchema], origin: str) -> None:
    """Record every named type *defined* inside ``node`` (not merely referenced) into ``out``."""
    if isinstance(node, list):
        for branch in node:
            _collect_named(branch, namespace, out, origin)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in _NAMED:
        if "name" not in node:
            raise SchemaCatalogError(f"{origin}: a {kind} without a name")
        full = _fullname(node["name"], node.get("namespace", namespace))
        if full in out:
            raise SchemaCatalogError(f"{origin}: {full} is defined more than once")
        out[full] = node
        inner_ns = _split(full)[1]
        for fld in node.get("fields", ()):
            _collect_named(fld.get("type"), inner_ns, out, origin)
        return
    if kind == "array":
        _collect_named(node.get("items"), namespace, out, origin)
    elif kind == "map":
        _collect_named(node.get("values"), namespace, out, origin)
    elif isinstance(kind, dict | list):
        _collect_named(kind, namespace, out, origin)


def expand(root: str, definitions: Mapping[str, JsonSchema]) -> JsonSchema:
    """The self-contained JSON schema of the named type ``root``.

    Each named type is inlined where it is first used (depth first, in field order) and referred to
    by its full name afterwards, as the Avro specification requires. Docs, defaults, aliases and
    logical types are kept; only names are normalised (``name`` short + explicit ``namespace`` on
    every named type, full names in every reference).
    """
    seen: set[str] = set()

    def walk(node: JsonSchema, namespace: str | None) -> JsonSchema:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full = _fullname(node, namespace)
            if full in seen:
                return full
            if full not in definitions:
                raise SchemaCatalogError(f"unknown type {full!r} (referenced while expanding {root})")
            return walk(definitions[full], namespace)
        if isinstance(node, list):
            return [walk(branch, namespace) for branch in node]
        if not isinstance(node, dict):
            raise SchemaCatalogError(f"not a schema: {node!r} (in {root})")
        kind = node.get("type")
        if kind in _NAMED:
            full = _fullname(node["name"], node.get("namespace", namespace))
            if full in seen:
                return full
            seen.add(full)
            short, ns = _split(full)
            out: dict[str, Any] = {}
            for key, value in node.items():
                if key == "namespace":
                    continue
                if key == "name":
                    out["name"] = short
                    if ns:
                        out["namespace"] = ns
                elif key == "fields":
                    out["fields"] = [{**fld, "type": walk(fld["type"], ns)} for fld in value]
                else:
                    out[key] = value
            return out
        if kind == "array":
            return {**node, "items": walk(node["items"], namespace)}
        if kind == "map":
            return {**node, "values": walk(node["values"], namespace)}
        if isinstance(kind, dict | list):
            return {**node, "type": walk(kind, namespace)}
        if isinstance(kind, str) and kind not in _PRIMITIVES:
            # {"type": "xchg.v1.Side"}: a reference written as an object.
            return walk(kind, namespace)
        return dict(node)

    return walk(root, None)


def resolution_form(schema: JsonSchema) -> str:
    """The schema with every ``doc`` removed, as sorted JSON.

    Two versions with the same resolution form behave identically for writers *and* readers
    (unlike the parsing canonical form, it keeps defaults, aliases and logical types), so a change
    that leaves it unchanged (a doc edit) is not a new version.
    """

    def strip(node: JsonSchema) -> JsonSchema:
        if isinstance(node, list):
            return [strip(n) for n in node]
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "doc"}
        return node

    return json.dumps(strip(schema), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True, eq=False)
class SchemaVersion:
    """One version of one top-level record: JSON, fastavro-parsed form and identity."""

    record: str  # full name, e.g. "xchg.v1.OrderCommand"
    version: str  # "current" or "v1", "v2", ...
    schema: JsonSchema = field(repr=False)  # self-contained JSON schema, docs included
    parsed: Any = field(repr=False)  # fastavro parse_schema result, reused by every encode/decode
    canonical: str = field(repr=False)  # Avro parsing canonical form
    fingerprint: bytes = b""  # CRC-64-AVRO, 8 bytes little-endian

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def schema_json(self) -> str:
        """The self-contained schema as compact JSON (what goes to a Schema Registry)."""
        return json.dumps(self.schema, separators=(",", ":"))

    @classmethod
    def build(cls, record: str, version: str, schema: JsonSchema) -> SchemaVersion:
        try:
            parsed = parse_schema(schema, named_schemas={})
            canonical = to_parsing_canonical_form(schema)
        except Exception as exc:  # fastavro raises several unrelated types for a bad schema
            raise SchemaCatalogError(f"{record} {version}: {exc}") from exc
        return cls(record, version, schema, parsed, canonical, crc64_avro(canonical))


class SchemaCatalog:
    """All named types of ``schemas/`` plus the released history of the top-level records.

    ``top_level`` defaults to every value record named in :data:`streams.serde.topics.TOPICS`.
    """

    def __init__(
        self,
        definitions: Mapping[str, JsonSchema],
        history: Mapping[str, Mapping[str, JsonSchema]] | None = None,
        top_level: Iterable[str] | None = None,
    ) -> None:
        self._definitions: Mapping[str, JsonSchema] = MappingProxyType(dict(definitions))
        if top_level is None:
            top_level = {t.value_record for t in TOPICS.values() if t.value_record is not None}
        names = tuple(sorted(top_level))
        for name in names:
            if name not in self._definitions:
                raise SchemaCatalogError(f"top-level record {name} has no schema file")
        # Every named type is expanded and parsed, so a dangling reference fails even in a file
        # no top-level record uses yet.
        built = {n: SchemaVersion.build(n, CURRENT, expand(n, self._definitions)) for n in self._definitions}
        self._current = {name: built[name] for name in names}
        self._history: dict[str, tuple[SchemaVersion, ...]] = {}
        for name, versions in (history or {}).items():
            if name not in self._current:
                raise SchemaCatalogError(f"history for {name}, which is not a top-level record")
            ordered = sorted(versions.items(), key=lambda item: _version_number(item[0]))
            self._history[name] = tuple(SchemaVersion.build(name, v, s) for v, s in ordered)
        by_fp: dict[bytes, SchemaVersion] = {}
        for name in names:
            for sv in (self._current[name], *self._history.get(name, ())):
                # The current version wins a (wire-identical) canonical-form tie with an old one.
                by_fp.setdefault(sv.fingerprint, sv)
        self._by_fingerprint: Mapping[bytes, SchemaVersion] = MappingProxyType(by_fp)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def load(cls, root: Path = SCHEMA_DIR, top_level: Iterable[str] | None = None) -> SchemaCatalog:
        """Read ``root/*.avsc`` and ``root/history/<fullname>/v<N>.avsc``."""
        sources = {p.name: p.read_text(encoding="utf-8") for p in sorted(root.glob("*.avsc"))}
        history: dict[str, dict[str, JsonSchema]] = {}
        hist_root = root / HISTORY_DIRNAME
        if hist_root.is_dir():
            for rec_dir in sorted(p for p in hist_root.iterdir() if p.is_dir()):
                for path in sorted(rec_dir.glob("*.avsc")):
                    match = _VERSION_FILE.match(path.name)
                    if match is None:
                        raise SchemaCatalogError(f"{path}: history files are named v<N>.avsc")
                    schema = _json(path.read_text(encoding="utf-8"), str(path))
                    history.setdefault(rec_dir.name, {})[f"v{match.group(1)}"] = schema
        return cls(definitions_from_sources(sources), history, top_level)

    @classmethod
    def from_sources(
        cls, sources: Mapping[str, str], top_level: Iterable[str] | None = None
    ) -> SchemaCatalog:
        """A catalog of current schemas only, from ``{file name: JSON text}`` (e.g. read from git)."""
        return cls(definitions_from_sources(sources), None, top_level)

    # -- queries ------------------------------------------------------------------------------

    @property
    def top_level(self) -> tuple[str, ...]:
        return tuple(self._current)

    @property
    def definitions(self) -> Mapping[str, JsonSchema]:
        """Every named type as written in its file, by full name."""
        return self._definitions

    def current(self, record: str) -> SchemaVersion:
        try:
            return self._current[record]
        except KeyError:
            raise SchemaCatalogError(f"{record} is not a top-level record") from None

    def history(self, record: str) -> tuple[SchemaVersion, ...]:
        """Released versions, oldest first (empty if none was released yet)."""
        self.current(record)
        return self._history.get(record, ())

    def versions(self, record: str) -> tuple[SchemaVersion, ...]:
        """History (oldest first) followed by the current version."""
        return (*self.history(record), self.current(record))

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion | None:
        """The version (current or historic, any top-level record) with this fingerprint."""
        return self._by_fingerprint.get(fingerprint)

    def unreleased(self) -> tuple[str, ...]:
        """Top-level records whose current schema differs (beyond docs) from their newest release."""
        out = []
        for name, cur in self._current.items():
            released = self._history.get(name, ())
            if not released or resolution_form(released[-1].schema) != resolution_form(cur.schema):
                out.append(name)
        return tuple(out)

    def next_version(self, record: str) -> str:
        released = self.history(record)
        return f"v{_version_number(released[-1].version) + 1}" if released else "v1"


@cache
def default_catalog() -> SchemaCatalog:
    """The catalog of the repository's ``schemas/``, loaded once per process."""
    return SchemaCatalog.load()


def _version_number(version: str) -> int:
    match = re.fullmatch(r"v([1-9][0-9]*)", version)
    if match is None:
        raise SchemaCatalogError(f"bad version name {version!r} (want v1, v2, ...)")
    return int(match.group(1))


def _json(text: str, origin: str) -> JsonSchema:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaCatalogError(f"{origin}: not JSON: {exc}") from exc


def definitions_from_sources(sources: Mapping[str, str]) -> dict[str, JsonSchema]:
    """``{file name: JSON text}`` → ``{full name: definition}``; the stem must be the full name."""
    definitions: dict[str, JsonSchema] = {}
    for filename, text in sources.items():
        schema = _json(text, filename)
        if not isinstance(schema, dict) or schema.get("type") not in _NAMED:
            raise SchemaCatalogError(f"{filename}: a schema file holds exactly one named type")
        full = _fullname(schema["name"], schema.get("namespace"))
        stem = Path(filename).name.removesuffix(".avsc")
        if stem != full:
            raise SchemaCatalogError(f"{filename}: defines {full}; the file must be named {full}.avsc")
        found: dict[str, JsonSchema] = {}
        _collect_named(schema, None, found, filename)
        for name, node in found.items():
            if name in definitions:
                raise SchemaCatalogError(f"{filename}: {name} is already defined in another file")
            definitions[name] = node
    return definitions


def release(root: Path = SCHEMA_DIR) -> list[Path]:
    """Write ``history/<record>/v<N+1>.avsc`` for every top-level record with unreleased changes."""
    catalog = SchemaCatalog.load(root)
    written = []
    for name in catalog.unreleased():
        path = root / HISTORY_DIRNAME / name / f"{catalog.next_version(name)}.avsc"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(catalog.current(name).schema, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
