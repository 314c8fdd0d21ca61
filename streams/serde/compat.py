"""Backward compatibility of schema versions: can the new reader read what the old writer wrote?

Two independent checks, both must pass (see ``schemas/README.md``):

1. *Structural* (:func:`structural_problems`): the Avro schema-resolution rules applied to the two
   schemas, with the house rule on top that every field the new version adds (at any depth)
   carries a default. It also catches what random data may miss: an enum symbol or a union branch
   the new reader lost, a fixed size change, a record rename without an alias.
2. *Empirical* (:func:`roundtrip_problems`): random values of the old schema
   (``fastavro.utils.generate_many``) are written with the old schema and read with the new one;
   every read must succeed and consume exactly the written bytes.

Schemas are self-contained JSON (as :func:`streams.serde.catalog.expand` and the history files
produce). The module is pure: it reads no files and no git.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from io import BytesIO
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

__all__ = ["backward_problems", "roundtrip_problems", "structural_problems"]

JsonSchema = Any

_PROMOTIONS: Final[Mapping[str, frozenset[str]]] = {
    "int": frozenset({"int", "long", "float", "double"}),
    "long": frozenset({"long", "float", "double"}),
    "float": frozenset({"float", "double"}),
    "string": frozenset({"string", "bytes"}),
    "bytes": frozenset({"bytes", "string"}),
}
_NAMED: Final = frozenset({"record", "error", "enum", "fixed"})


def backward_problems(old: JsonSchema, new: JsonSchema, *, samples: int = 200, seed: int = 0) -> list[str]:
    """Everything that stops ``new`` from reading data written with ``old`` (empty = compatible)."""
    problems = structural_problems(old, new)
    problems += roundtrip_problems(old, new, samples=samples, seed=seed)
    return problems


# -- structural --------------------------------------------------------------------------------


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _named_types(schema: JsonSchema) -> dict[str, dict[str, Any]]:
    """Full name → definition for every named type defined in a self-contained schema."""
    out: dict[str, dict[str, Any]] = {}

    def walk(node: JsonSchema, namespace: str | None) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch, namespace)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED:
                full = _fullname(node["name"], node.get("namespace", namespace))
                out[full] = {**node, "name": full}
                inner = full.rpartition(".")[0] or None
                for fld in node.get("fields", ()):
                    walk(fld["type"], inner)
            elif kind == "array":
                walk(node["items"], namespace)
            elif kind == "map":
                walk(node["values"], namespace)
            elif isinstance(kind, dict | list):
                walk(kind, namespace)

    walk(schema, None)
    return out


class _Side:
    """One schema with its named types, able to dereference a node to its definition."""

    def __init__(self, schema: JsonSchema) -> None:
        self.named = _named_types(schema)

    def deref(self, node: JsonSchema, namespace: str | None) -> tuple[JsonSchema, str | None]:
        """A node with named references replaced by definitions; and the namespace inside it."""
        if isinstance(node, str) and node not in _PRIMITIVE_NAMES:
            full = _fullname(node, namespace)
            if full in self.named:
                return self.named[full], full.rpartition(".")[0] or None
            if node in self.named:
                return self.named[node], node.rpartition(".")[0] or None
            raise KeyError(f"unknown type {full}")
        if isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED:
                full = _fullname(node["name"], node.get("namespace", namespace))
                return self.named[full], full.rpartition(".")[0] or None
            if isinstance(kind, str) and kind not in _PRIMITIVE_NAMES and kind not in ("array", "map"):
                return self.deref(kind, namespace)
            if isinstance(kind, dict | list):
                return self.deref(kind, namespace)
        return node, namespace


_PRIMITIVE_NAMES: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _kind(node: JsonSchema) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, str):
        return node
    kind = node["type"]
    return kind if isinstance(kind, str) else "union"


def _aliases(defn: Mapping[str, Any]) -> set[str]:
    namespace = defn["name"].rpartition(".")[0] or None
    return {defn["name"], *(_fullname(a, namespace) for a in defn.get("aliases", ()))}


def structural_problems(old: JsonSchema, new: JsonSchema) -> list[str]:
    """Avro resolution of writer ``old`` by reader ``new``, plus "added fields have defaults"."""
    writer, reader = _Side(old), _Side(new)
    problems: list[str] = []
    in_progress: set[tuple[str, str]] = set()  # recursive named types

    def matches(w: JsonSchema, w_ns: str | None, r: JsonSchema, r_ns: str | None) -> bool:
        """Whether a writer branch can be read by a reader branch (names/types, not depth)."""
        w, _ = writer.deref(w, w_ns)
        r, _ = reader.deref(r, r_ns)
        wk, rk = _kind(w), _kind(r)
        if wk in _NAMED or rk in _NAMED:
            return wk == rk and w["name"] in _aliases(r)
        if wk in ("array", "map"):
            return wk == rk
        return rk in _PROMOTIONS.get(wk, frozenset({wk}))

    def check(w: JsonSchema, w_ns: str | None, r: JsonSchema, r_ns: str | None, path: str) -> None:
        w, w_ns = writer.deref(w, w_ns)
        r, r_ns = reader.deref(r, r_ns)
        wk, rk = _kind(w), _kind(r)
        if wk == "union":
            for i, branch in enumerate(w):
                check(branch, w_ns, r, r_ns, f"{path}|{i}")
            return
        if rk == "union":
            for branch in r:
                if matches(w, w_ns, branch, r_ns):
                    check(w, w_ns, branch, r_ns, path)
                    return
            problems.append(f"{path}: writer type {_describe(w)} matches no branch of the reader union")
            return
        if not matches(w, w_ns, r, r_ns):
            problems.append(f"{path}: writer {_describe(w)} cannot be read as {_describe(r)}")
            return
        if wk == "record":
            key = (w["name"], r["name"])
            if key in in_progress:
                return
            in_progress.add(key)
            w_fields = {f["name"]: f for f in w["fields"]}
            for rf in r["fields"]:
                names = [rf["name"], *rf.get("aliases", ())]
                wf = next((w_fields[n] for n in names if n in w_fields), None)
                if wf is None:
                    if "default" not in rf:
                        problems.append(f"{path}.{rf['name']}: field added without a default")
                    continue
                check(wf["type"], w_ns, rf["type"], r_ns, f"{path}.{rf['name']}")
            in_progress.discard(key)
        elif wk == "enum":
            missing = [s for s in w["symbols"] if s not in r["symbols"]]
            if missing and "default" not in r:
                problems.append(f"{path}: enum {r['name']} lost symbols {missing} and has no default")
        elif wk == "fixed":
            if w["size"] != r["size"]:
                problems.append(f"{path}: fixed {r['name']} size {w['size']} -> {r['size']}")
        elif wk == "array":
            check(w["items"], w_ns, r["items"], r_ns, f"{path}[]")
        elif wk == "map":
            check(w["values"], w_ns, r["values"], r_ns, f"{path}{{}}")
        elif isinstance(w, dict) and isinstance(r, dict):
            w_logical, r_logical = w.get("logicalType"), r.get("logicalType")
            if w_logical == r_logical == "decimal" and w.get("scale", 0) != r.get("scale", 0):
                problems.append(f"{path}: decimal scale {w.get('scale', 0)} -> {r.get('scale', 0)}")
            elif w_logical == "decimal" and r_logical == "decimal" and r["precision"] < w["precision"]:
                problems.append(f"{path}: decimal precision {w['precision']} -> {r['precision']}")

    root_name = _root_name(old)
    check(old, None, new, None, root_name)
    return problems


def _root_name(schema: JsonSchema) -> str:
    if isinstance(schema, dict) and "name" in schema:
        return _fullname(schema["name"], schema.get("namespace"))
    return "<root>"


def _describe(node: JsonSchema) -> str:
    if isinstance(node, dict):
        return str(node.get("name") or node.get("logicalType") or node.get("type"))
    return str(node)


# -- empirical ---------------------------------------------------------------------------------


def _samples(parsed_old: Any, count: int, seed: int) -> Iterator[Any]:
    """``count`` random old-schema values, reproducible, without disturbing the global RNG."""
    saved = random.getstate()
    random.seed(seed)
    try:
        values = list(generate_many(parsed_old, count))
    finally:
        random.setstate(saved)
    return iter(values)


def roundtrip_problems(old: JsonSchema, new: JsonSchema, *, samples: int = 200, seed: int = 0) -> list[str]:
    """Write random ``old`` values with ``old`` and read them with ``new``; report what fails."""
    try:
        parsed_old = parse_schema(old, named_schemas={})
        parsed_new = parse_schema(new, named_schemas={})
    except Exception as exc:
        return [f"schema does not parse: {exc}"]
    problems: list[str] = []
    for i, value in enumerate(_samples(parsed_old, samples, seed)):
        buf = BytesIO()
        try:
            schemaless_writer(buf, parsed_old, value)
        except Exception as exc:  # a generator value the old schema cannot write: not our concern
            problems.append(f"sample {i}: old schema cannot write its own random value: {exc}")
            continue
        size = buf.tell()
        buf.seek(0)
        try:
            schemaless_reader(buf, parsed_old, parsed_new)
        except Exception as exc:
            problems.append(f"sample {i}: new schema cannot read old data: {type(exc).__name__}: {exc}")
            if len(problems) >= 5:
                break
            continue
        if buf.tell() != size:
            problems.append(f"sample {i}: read {buf.tell()} of {size} bytes")
    return problems
