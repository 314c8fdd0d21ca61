"""Avro binary encoders and decoders generated from one schema, for the hot topics.

Why: on the engine's Kafka edge fastavro's per-call dispatch costs more than the matching itself
(~10 µs to encode one union-bodied ``OrderEvent``, ~60 % of the engine loop in a profile). For a
schema known in advance, straight-line Python that writes each field in order does the same work
in about half the time. fastavro stays the reference: the codec uses these functions only for
records written with the topic's current schema (no schema resolution), falls back to fastavro for
any value shape they do not handle, and ``tests/unit/serde/test_serde_compiled.py`` checks, on
random records of every schema, that both produce the same bytes and read back the same values.

Scope: records, enums, fixed, arrays, maps, unions and the primitives except float and double. A
schema with a logical type, float or double is not compiled (``compile_schema`` returns None) and
stays on fastavro, so logical-type conversions keep one implementation.

Value shapes match the codec's fastavro calls (``return_record_name=True`` with
``return_record_name_override=True``): a union of several records is read as ``(name, record)``; a
union with one record is read as the record (or None).

Errors: encoders raise ``Fallback`` for a value shape they do not take (the caller re-encodes with
fastavro, which then accepts it or reports it) and Python's own exceptions for values no schema
accepts (``KeyError`` for a missing field or an unknown enum symbol, ``TypeError``,
``OverflowError`` for a long outside 64 bits). Decoders raise ``IndexError`` when the input ends
early and ``Malformed`` for bytes no writer of this schema produces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Encoder = Callable[[bytearray, Any], None]
Decoder = Callable[[bytes, int], tuple[Any, int]]

_UNSUPPORTED = frozenset({"float", "double"})
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "string", "bytes"})


class Fallback(Exception):
    """The value's shape is valid Avro input but not one the compiled encoder takes."""


class Malformed(ValueError):
    """Bytes that no writer of the schema produces (bad union or enum index, negative length)."""


class _Unsupported(Exception):
    pass


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return str(schema["type"])


class _Generator:
    """Writes one encoder and one decoder function per named record, as Python source."""

    def __init__(self) -> None:
        self.named: dict[str, Any] = {}
        self.consts: dict[str, Any] = {"Fallback": Fallback, "Malformed": Malformed}
        self.functions: list[str] = []
        self.compiled: set[str] = set()
        self.counter = 0

    def const(self, value: Any) -> str:
        self.counter += 1
        name = f"_c{self.counter}"
        self.consts[name] = value
        return name

    def var(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def resolve(self, schema: Any) -> Any:
        """A named type's definition for a reference; registers definitions on the way."""
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return schema
            if schema in _UNSUPPORTED:
                raise _Unsupported(schema)
            if schema not in self.named:
                raise _Unsupported(f"unknown type {schema}")
            return self.named[schema]
        if isinstance(schema, dict):
            if "logicalType" in schema:
                raise _Unsupported("logical type")
            kind = schema["type"]
            if kind in ("record", "error", "enum", "fixed"):
                self.named.setdefault(schema["name"], schema)
            elif isinstance(kind, (str, list)) and kind not in ("array", "map"):
                return self.resolve(kind)  # {"type": "long"} is "long"
        return schema

    # -- encoding -------------------------------------------------------------------------------

    def enc(self, schema: Any, value: str, ind: str) -> list[str]:
        """Lines that append the encoding of expression ``value`` to ``out`` (via ``w``/``out``)."""
        schema = self.resolve(schema)
        kind = _type_name(schema)
        if kind == "null":
            return [f"{ind}if {value} is not None: raise TypeError('null field is not None')"]
        if kind == "boolean":
            return [f"{ind}w(1 if {value} else 0)"]
        if kind in ("int", "long"):
            n = self.var("n")
            return [
                f"{ind}{n} = {value}",
                f"{ind}{n} = ({n} << 1) ^ ({n} >> 63)",
                f"{ind}if {n} >> 64 or {n} < 0: raise OverflowError('long out of range')",
                f"{ind}while {n} > 127:",
                f"{ind}    w({n} & 127 | 128)",
                f"{ind}    {n} >>= 7",
                f"{ind}w({n})",
            ]
        if kind in ("string", "bytes"):
            s = self.var("s")
            if kind == "string":
                first = [f"{ind}{s} = {value}.encode()"]
            else:
                first = [f"{ind}{s} = {value}",
                         f"{ind}if not isinstance({s}, (bytes, bytearray)): raise Fallback"]
            return [*first, *self.enc("long", f"len({s})", ind), f"{ind}out += {s}"]
        if kind == "fixed":
            size = int(schema["size"])
            return [f"{ind}if not isinstance({value}, (bytes, bytearray)) or len({value}) != {size}: raise Fallback",
                    f"{ind}out += {value}"]
        if kind == "enum":
            index = self.const({symbol: i for i, symbol in enumerate(schema["symbols"])})
            return self.enc("long", f"{index}[{value}]", ind)
        if kind in ("record", "error"):
            fn = self.record_functions(schema)
            return [f"{ind}_enc_{fn}(out, {value})"]
        if kind == "array":
            a, item = self.var("a"), self.var("x")
            return [
                f"{ind}{a} = {value}",
                f"{ind}if not isinstance({a}, (list, tuple)): raise Fallback",
                f"{ind}if {a}:",
                *self.enc("long", f"len({a})", ind + "    "),
                f"{ind}    for {item} in {a}:",
                *self.enc(schema["items"], item, ind + "        "),
                f"{ind}w(0)",
            ]
        if kind == "map":
            m, k, v = self.var("m"), self.var("k"), self.var("v")
            return [
                f"{ind}{m} = {value}",
                f"{ind}if not isinstance({m}, dict): raise Fallback",
                f"{ind}if {m}:",
                *self.enc("long", f"len({m})", ind + "    "),
                f"{ind}    for {k}, {v} in {m}.items():",
                *self.enc("string", k, ind + "        "),
                *self.enc(schema["values"], v, ind + "        "),
                f"{ind}w(0)",
            ]
        if kind == "union":
            return self.enc_union(schema, value, ind)
        raise _Unsupported(kind)

    def enc_union(self, branches: list[Any], value: str, ind: str) -> list[str]:
        resolved = [self.resolve(b) for b in branches]
        kinds = [_type_name(b) for b in resolved]
        records = [i for i, k in enumerate(kinds) if k in ("record", "error")]
        u = self.var("u")
        lines = [f"{ind}{u} = {value}"]
        cond = "if"
        if "null" in kinds:
            lines.append(f"{ind}if {u} is None: w({2 * kinds.index('null')})")
            cond = "elif"
        if records:
            # (name, record): the shape the decoder returns for a union of several records.
            by_name = self.const({resolved[i]["name"]: i for i in records})
            pick, body = self.var("i"), self.var("r")
            lines += [f"{ind}{cond} type({u}) is tuple and len({u}) == 2 and {u}[0] in {by_name}:",
                      f"{ind}    {pick} = {by_name}[{u}[0]]", f"{ind}    {body} = {u}[1]"]
            for j, i in enumerate(records):
                lines.append(f"{ind}    {'if' if j == 0 else 'elif'} {pick} == {i}:")
                lines += [f"{ind}        w({2 * i})", *self.enc(resolved[i], body, ind + "        ")]
            cond = "elif"
            if len(records) == 1:  # a bare dict is that record (single-record unions)
                i = records[0]
                lines += [f"{ind}elif type({u}) is dict:", f"{ind}    w({2 * i})",
                          *self.enc(resolved[i], u, ind + "    ")]
        primitives = (("str", ("string",)), ("bool", ("boolean",)), ("int", ("long", "int")),
                      ("bytes", ("bytes",)))
        for python_type, accepted in primitives:
            i = next((i for i, k in enumerate(kinds) if k in accepted), -1)
            if i >= 0:
                lines += [f"{ind}{cond} type({u}) is {python_type}:", f"{ind}    w({2 * i})",
                          *self.enc(resolved[i], u, ind + "    ")]
                cond = "elif"
        lines.append(f"{ind}{cond} True: raise Fallback" if cond == "elif" else f"{ind}raise Fallback")
        return lines

    # -- decoding -------------------------------------------------------------------------------

    def dec(self, schema: Any, target: str, ind: str) -> list[str]:
        """Lines that read one value at ``b[i]`` into variable ``target`` and advance ``i``."""
        schema = self.resolve(schema)
        kind = _type_name(schema)
        if kind == "null":
            return [f"{ind}{target} = None"]
        if kind == "boolean":
            return [f"{ind}{target} = b[i] != 0", f"{ind}i += 1"]  # as fastavro: any non-zero byte
        if kind in ("int", "long"):
            x, n, s = self.var("x"), self.var("n"), self.var("s")
            return [
                f"{ind}{x} = b[i]",
                f"{ind}i += 1",
                f"{ind}if {x} < 128:",
                f"{ind}    {target} = ({x} >> 1) ^ -({x} & 1)",
                f"{ind}else:",
                f"{ind}    {n} = {x} & 127",
                f"{ind}    {s} = 7",
                f"{ind}    while True:",
                f"{ind}        {x} = b[i]",
                f"{ind}        i += 1",
                f"{ind}        {n} |= ({x} & 127) << {s}",
                f"{ind}        if {x} < 128: break",
                f"{ind}        {s} += 7",
                f"{ind}    {target} = ({n} >> 1) ^ -({n} & 1)",
            ]
        if kind in ("string", "bytes", "fixed"):
            size = self.var("z")
            lines = (self.dec("long", size, ind) if kind != "fixed" else [f"{ind}{size} = {int(schema['size'])}"])
            read = f"b[i:i + {size}].decode()" if kind == "string" else f"bytes(b[i:i + {size}])"
            return [*lines,
                    f"{ind}if {size} < 0: raise Malformed('negative length')",
                    f"{ind}if i + {size} > len(b): raise IndexError('input ends inside a value')",
                    f"{ind}{target} = {read}",
                    f"{ind}i += {size}"]
        if kind == "enum":
            symbols = self.const(tuple(schema["symbols"]))
            k = self.var("e")
            return [*self.dec("long", k, ind),
                    f"{ind}if not 0 <= {k} < {len(schema['symbols'])}: raise Malformed('enum index out of range')",
                    f"{ind}{target} = {symbols}[{k}]"]
        if kind in ("record", "error"):
            fn = self.record_functions(schema)
            return [f"{ind}{target}, i = _dec_{fn}(b, i)"]
        if kind in ("array", "map"):
            count, item, key = self.var("c"), self.var("x"), self.var("k")
            inner = ind + "        "
            if kind == "array":
                body = [*self.dec(schema["items"], item, inner), f"{inner}{target}.append({item})"]
            else:
                body = [*self.dec("string", key, inner), *self.dec(schema["values"], item, inner),
                        f"{inner}{target}[{key}] = {item}"]
            return [
                f"{ind}{target} = {'[]' if kind == 'array' else '{}'}",
                f"{ind}while True:",
                *self.dec("long", count, ind + "    "),
                f"{ind}    if {count} == 0: break",
                f"{ind}    if {count} < 0:",
                f"{ind}        {count} = -{count}",
                *self.dec("long", self.var("_"), ind + "        "),  # the block's size in bytes
                f"{ind}    for _ in range({count}):",
                *body,
            ]
        if kind == "union":
            resolved = [self.resolve(b) for b in schema]
            kinds = [_type_name(b) for b in resolved]
            several = sum(k in ("record", "error") for k in kinds) > 1
            k = self.var("e")
            lines = self.dec("long", k, ind)
            for i, branch in enumerate(resolved):
                lines.append(f"{ind}{'if' if i == 0 else 'elif'} {k} == {i}:")
                if several and kinds[i] in ("record", "error"):
                    r = self.var("r")
                    lines += self.dec(branch, r, ind + "    ")
                    lines.append(f"{ind}    {target} = ({branch['name']!r}, {r})")
                else:
                    lines += self.dec(branch, target, ind + "    ")
            lines.append(f"{ind}else: raise Malformed('union index out of range')")
            return lines
        raise _Unsupported(kind)

    # -- records --------------------------------------------------------------------------------

    def record_functions(self, schema: dict[str, Any]) -> str:
        """Define ``_enc_<id>`` and ``_dec_<id>`` for a record (once); returns ``<id>``."""
        fn = str(schema["name"]).replace(".", "_")
        if fn in self.compiled:
            return fn
        self.compiled.add(fn)
        enc = [f"def _enc_{fn}(out, r):", "    w = out.append"]
        dec = [f"def _dec_{fn}(b, i):"]
        names = []
        for field in schema["fields"]:
            name = field["name"]
            value = self.var("f")
            if "default" in field:
                enc.append(f"    {value} = r.get({name!r}, {self.const(field['default'])})")
            else:
                enc.append(f"    {value} = r[{name!r}]")
            enc += self.enc(field["type"], value, "    ")
            dec += self.dec(field["type"], value, "    ")
            names.append(f"{name!r}: {value}")
        dec.append(f"    return {{{', '.join(names)}}}, i")
        self.functions += ["\n".join(enc), "\n".join(dec)]
        return fn


    def row_function(self, schema: dict[str, Any], fields: Sequence[str], converters: Mapping[str, Any]) -> str:
        """Define ``_row`` for a record: reads it like ``_dec_<id>`` but returns the values of
        ``fields`` as a tuple, each passed through its converter if it has one."""
        names = {f["name"]: f for f in schema["fields"]}
        missing = [f for f in fields if f not in names]
        if missing:
            raise KeyError(f"{schema['name']} has no field {missing[0]}")
        lines = ["def _row(b, i):"]
        chosen: dict[str, str] = {}
        for field in schema["fields"]:
            value = self.var("f")
            lines += self.dec(field["type"], value, "    ")
            chosen[field["name"]] = value
        for name, convert in converters.items():
            lines.append(f"    {chosen[name]} = {self.const(convert)}({chosen[name]})")
        lines.append(f"    return ({''.join(chosen[f] + ', ' for f in fields)}), i")
        self.functions.append("\n".join(lines))
        return "_row"


class CompiledSchema:
    """``encode(record, header) -> bytes`` and ``decode(data, start) -> record`` for one schema."""

    __slots__ = ("_dec", "_enc")

    def __init__(self, enc: Encoder, dec: Decoder) -> None:
        self._enc = enc
        self._dec = dec

    def encode(self, record: Any, header: bytes) -> bytes:
        """``header`` followed by the record's Avro encoding; raises Fallback (see the module doc)."""
        out = bytearray(header)
        self._enc(out, record)
        return bytes(out)

    def decode(self, data: bytes, start: int) -> tuple[Any, int]:
        """The record at ``data[start:]`` and the offset after it."""
        return self._dec(data, start)


def _build(parsed: Any, label: str, define: Callable[[_Generator, dict[str, Any]], str]) -> tuple[dict[str, Any], str] | None:
    """Generate code for a record schema with ``define`` (which returns the name of a function it
    defined) and execute it: ``(namespace, name)``, or None when the schema is out of scope."""
    generator = _Generator()
    try:
        root = generator.resolve(parsed)
        if _type_name(root) != "record":
            return None
        name = define(generator, root)
    except _Unsupported:
        return None
    namespace: dict[str, Any] = dict(generator.consts)
    source = "\n\n".join(generator.functions)
    exec(compile(source, f"<avro {label}{root['name']}>", "exec"), namespace)  # generated from the schema above
    return namespace, name


def compile_row_decoder(parsed: Any, fields: Sequence[str],
                        converters: Mapping[str, Callable[[Any], Any]] | None = None) -> Decoder | None:
    """``decode(data, start) -> ((values of fields...), end)`` for a record schema: no dict is built,
    which is what a sink turning records into table rows wants. None when out of scope."""

    def define(generator: _Generator, root: dict[str, Any]) -> str:
        generator.record_functions(root)  # nested records' readers
        return generator.row_function(root, fields, converters or {})

    built = _build(parsed, "row ", define)
    return None if built is None else built[0][built[1]]


def compile_schema(parsed: Any) -> CompiledSchema | None:
    """Compile a parsed (fastavro ``parse_schema``) record schema; None when out of scope."""
    built = _build(parsed, "", lambda generator, root: generator.record_functions(root))
    if built is None:
        return None
    namespace, fn = built
    return CompiledSchema(namespace[f"_enc_{fn}"], namespace[f"_dec_{fn}"])
