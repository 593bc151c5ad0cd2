"""One declarative base for ninep's wire codecs: 9P (:mod:`.ninep`,
:mod:`.dotu`) and QEMU's proxy wire (:mod:`.proxy`).

A message is a class statement whose fields are annotated with a *wire type*,
``Annotated[<python type>, Wire]``: a type checker sees the plain ``int``,
``str`` or ``bytes``, and the codec reads the wire kind off the metadata::

    class Tclunk(Message, code=120):
        fid: U32

Declaring the class with a ``code=`` keyword makes it a message (its dialect
gives the keyword its meaning: a 9P type code, or the proxy's request type).
The metaclass turns the annotations into a :class:`Layout` (``LAYOUT``): a
plan of :mod:`struct` runs (consecutive integers merged into one
``struct.Struct``) and variable-size fields, plus the ``construct`` reference
format of the same fields, which the tests compare the plan against.

Two shapes share that machinery: :class:`TupleMessageMeta` makes a message a
``namedtuple`` (9P: indexable, unpackable, equal to its tuple), and
:class:`RecordMessageMeta` a frozen slotted dataclass (the proxy wire: only
equal to a message of the same class).  Both are marked
``dataclass_transform`` so that mypy checks constructor calls and field access.

:meth:`Layout.decode` raises only :class:`Short` (the body ends inside a
field) and :class:`ValueError` (any other defect); each dialect maps those to
its own exception.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, cast, dataclass_transform

import construct as cs

Buffer = bytes | bytearray | memoryview


class Short(Exception):
    """The body ended inside a field."""


@dataclass(frozen=True, eq=False)
class Wire:
    """How one field goes on the wire.

    A fixed-size integer has a :mod:`struct` format character (``code``), so
    that runs of them pack as one struct; any other kind has ``decode(body,
    pos, end) -> (value, new pos)`` (raising :class:`Short` or ``ValueError``)
    and ``encode(value) -> bytes``.  ``subcon`` is the ``construct`` of the
    field, the reference the struct plan is tested against.

    A length-prefixed byte string (the commonest variable-size field) also
    has its length's struct (``prefix``), what turns the bytes into the value
    (``convert``) and back (``to_bytes``), both None for raw bytes:
    :class:`Layout` reads and writes it inline, which saves calls per field on
    the hot path.
    """

    subcon: Any
    code: str = ""
    decode: Callable[[Buffer, int, int], tuple[Any, int]] | None = None
    encode: Callable[[Any], bytes] | None = None
    prefix: struct.Struct | None = None
    convert: Callable[[bytes], Any] | None = None
    to_bytes: Callable[[Any], bytes] | None = None


def _identity(obj: Any, ctx: Any) -> Any:
    return obj


def _fsdecode(obj: bytes, ctx: Any) -> str:
    return os.fsdecode(obj)


def _fsencode(obj: str | bytes, ctx: Any) -> bytes:
    return os.fsencode(obj)


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _take(pos: int, n: int, end: int) -> int:
    """The position *n* bytes after *pos*; :class:`Short` past *end*."""
    if pos + n > end:
        raise Short
    return pos + n


def _raw_bytes(value: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return bytes(value)


def prefixed(length: struct.Struct, subcon: Any, convert: Callable[[bytes], Any] | None = None,
             to_bytes: Callable[[Any], bytes] | None = None) -> Wire:
    """A length (*length*: u16, u32...) followed by that many bytes, made a
    value by *convert* and back by *to_bytes* (both None: the raw bytes)."""
    unpack, pack, size = length.unpack_from, length.pack, length.size

    def decode(body: Buffer, pos: int, end: int) -> tuple[Any, int]:
        start = pos + size
        if start > end:
            raise Short
        stop = start + unpack(body, pos)[0]
        if stop > end:
            raise Short
        raw = bytes(body[start:stop])
        return (raw if convert is None else convert(raw)), stop

    def encode(value: Any) -> bytes:
        raw = _raw_bytes(value) if to_bytes is None else to_bytes(value)
        return pack(len(raw)) + raw  # struct.error past the length's range

    return Wire(subcon, decode=decode, encode=encode, prefix=length, convert=convert,
                to_bytes=to_bytes)


def _prefixed_construct(length: Any) -> Any:
    """*length* + that many bytes.  Wrapped in an (identity) adapter so that
    construct interprets it instead of compiling it: compiled ``Prefixed``
    does not check that the bytes are really there and would accept a short
    frame."""
    return cs.ExprAdapter(cs.Prefixed(length, cs.GreedyBytes), _identity, _identity)


#: A 9P string: u16 length + bytes, decoded with surrogateescape so that
#: non-UTF-8 host names round-trip, as the ``os`` module does.
STRING = prefixed(_U16, cs.ExprAdapter(cs.Prefixed(cs.Int16ul, cs.GreedyBytes), _fsdecode,
                                       _fsencode), os.fsdecode, os.fsencode)


def record(cls: Callable[..., Any], fmt: str, subcon: Any) -> Wire:
    """A fixed group of integers packed as *fmt*, decoded to the NamedTuple *cls*."""
    st = struct.Struct(fmt)
    unpack, pack, size = st.unpack_from, st.pack, st.size

    def decode(body: Buffer, pos: int, end: int) -> tuple[Any, int]:
        stop = _take(pos, size, end)
        return cls(*unpack(body, pos)), stop

    def encode(value: Sequence[int]) -> bytes:
        return pack(*value)

    return Wire(subcon, decode=decode, encode=encode)


def array(item: Wire) -> Wire:
    """A u16 count, then that many *item*s (a Python list)."""
    item_decode, item_encode = item.decode, item.encode
    assert item_decode is not None and item_encode is not None, "arrays of variable-size items"

    def decode(body: Buffer, pos: int, end: int) -> tuple[list[Any], int]:
        start = _take(pos, 2, end)
        (count,) = _U16.unpack_from(body, pos)
        pos = start
        items = []
        for _ in range(count):
            value, pos = item_decode(body, pos, end)
            items.append(value)
        return items, pos

    def encode(values: Sequence[Any]) -> bytes:
        return _U16.pack(len(values)) + b"".join(item_encode(v) for v in values)

    return Wire(cs.PrefixedArray(cs.Int16ul, item.subcon), decode=decode, encode=encode)


# --- the wire types ------------------------------------------------------------------------

U8 = Annotated[int, Wire(cs.Int8ul, "B")]
U16 = Annotated[int, Wire(cs.Int16ul, "H")]
U32 = Annotated[int, Wire(cs.Int32ul, "I")]
U64 = Annotated[int, Wire(cs.Int64ul, "Q")]
S32 = Annotated[int, Wire(cs.Int32sl, "i")]
S64 = Annotated[int, Wire(cs.Int64sl, "q")]
#: A 9P string (:data:`STRING`).
Str = Annotated[str, STRING]
#: u16 length + raw bytes (the proxy wire's ``s``).
BYTES16 = prefixed(_U16, _prefixed_construct(cs.Int16ul))
Bytes16 = Annotated[bytes, BYTES16]
#: u32 count + raw bytes (9P's ``data[count]``).
BYTES32 = prefixed(_U32, _prefixed_construct(cs.Int32ul))
Bytes32 = Annotated[bytes, BYTES32]


# --- layouts ---------------------------------------------------------------------------------

#: One step of a plan: a struct run and how many fields it covers, or (None, 1)
#: and the variable-size field's wire with its ``prefix``, ``convert`` and
#: ``to_bytes``.
Step = tuple[struct.Struct | None, int, Wire | None, struct.Struct | None,
             Callable[[bytes], Any] | None, Callable[[Any], bytes] | None]


class Layout:
    """The wire plan of one message's fields, in declaration order.

    ``fixed`` is the one struct of a message made only of integers (most hot
    requests), which decodes and encodes with a single call.
    """

    __slots__ = ("names", "wires", "steps", "fixed", "construct")

    def __init__(self, fields: Sequence[tuple[str, Wire]]) -> None:
        self.names = tuple(name for name, _ in fields)
        self.wires = tuple(wire for _, wire in fields)
        steps: list[Step] = []
        run = ""
        for _, wire in fields:
            if wire.code:
                run += wire.code
                continue
            if run:
                steps.append((struct.Struct("<" + run), len(run), None, None, None, None))
                run = ""
            steps.append((None, 1, wire, wire.prefix, wire.convert, wire.to_bytes))
        if run:
            steps.append((struct.Struct("<" + run), len(run), None, None, None, None))
        self.steps = tuple(steps)
        self.fixed: struct.Struct | None = None
        if not steps:
            self.fixed = struct.Struct("<")
        elif len(steps) == 1 and steps[0][0] is not None:
            self.fixed = steps[0][0]
        #: The ``construct`` reference of the same fields, compiled.
        self.construct: Any = cs.Struct(*(name / wire.subcon for name, wire in fields),
                                        cs.Terminated).compile()

    def decode(self, body: Buffer) -> Sequence[Any]:
        """The field values of a whole body; :class:`Short` or ``ValueError`` if malformed."""
        end = len(body)
        fixed = self.fixed
        if fixed is not None:
            if end != fixed.size:
                if end < fixed.size:
                    raise Short
                raise ValueError(f"{end - fixed.size} trailing bytes")
            return fixed.unpack_from(body)
        values: list[Any] = []
        pos = 0
        for run, _, wire, prefix, convert, _ in self.steps:
            if run is not None:
                stop = pos + run.size
                if stop > end:
                    raise Short
                values.extend(run.unpack_from(body, pos))
                pos = stop
            elif prefix is not None:
                start = pos + prefix.size
                if start > end:
                    raise Short
                stop = start + prefix.unpack_from(body, pos)[0]
                if stop > end:
                    raise Short
                raw = bytes(body[start:stop])
                values.append(raw if convert is None else convert(raw))
                pos = stop
            else:
                value, pos = wire.decode(body, pos, end)  # type: ignore[union-attr,misc]
                values.append(value)
        if pos != end:
            raise ValueError(f"{end - pos} trailing bytes")
        return values

    def encode(self, values: Sequence[Any]) -> bytes:
        """The body of *values* (one per field, in order).  Raises ``struct.error``
        or ``TypeError`` for a value out of range or of the wrong type."""
        fixed = self.fixed
        if fixed is not None:
            return fixed.pack(*values)
        parts: list[bytes] = []
        i = 0
        for run, count, wire, prefix, _, to_bytes in self.steps:
            if run is not None:
                parts.append(run.pack(*values[i:i + count]))
            elif prefix is not None:
                value = values[i]
                if to_bytes is not None:
                    raw = to_bytes(value)
                elif isinstance(value, (bytes, bytearray, memoryview)):
                    raw = bytes(value)
                else:
                    raise TypeError(f"expected bytes, got {type(value).__name__}")
                parts.append(prefix.pack(len(raw)))  # struct.error past its range
                parts.append(raw)
            else:
                parts.append(wire.encode(values[i]))  # type: ignore[union-attr,misc]
            i += count
        return b"".join(parts)


def _wire_fields(name: str, namespace: dict[str, Any]) -> list[tuple[str, Wire]]:
    """The ``(name, Wire)`` of each annotated field in a class body."""
    module = vars(sys.modules[namespace["__module__"]])
    fields = []
    for field, annotation in namespace.get("__annotations__", {}).items():
        # A string under ``from __future__ import annotations``: resolve it as
        # typing.get_type_hints would, in the module defining the class.
        hint = eval(annotation, module) if isinstance(annotation, str) else annotation
        wire = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Wire)), None)
        if wire is None:
            raise TypeError(f"{name}.{field}: annotate it with a wire type (U32, Str, ...)")
        fields.append((field, wire))
    return fields


@dataclass_transform(frozen_default=True)
class TupleMessageMeta(type):
    """Makes each class declared with ``code=`` a ``namedtuple`` of its annotated
    fields (inserted as its first base), with its :class:`Layout` as ``LAYOUT``."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwargs: Any) -> TupleMessageMeta:
        if "code" not in kwargs:  # a base class, not a message
            return super().__new__(mcs, name, bases, namespace, **kwargs)
        fields = _wire_fields(name, namespace)
        fields_base = collections.namedtuple(name, [f for f, _ in fields],  # type: ignore[misc]
                                             module=namespace["__module__"])
        namespace = {**namespace, "__slots__": (), "LAYOUT": Layout(fields)}
        return super().__new__(mcs, name, (fields_base, *bases), namespace, **kwargs)


@dataclass_transform(frozen_default=True)
class RecordMessageMeta(type):
    """Makes each class declared with ``code=`` a frozen, slotted dataclass of
    its annotated fields, with its :class:`Layout` as ``LAYOUT``."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwargs: Any) -> RecordMessageMeta:
        if "code" not in kwargs:  # a base class, not a message
            return super().__new__(mcs, name, bases, namespace, **kwargs)
        fields = _wire_fields(name, namespace)
        namespace = {**namespace, "__slots__": tuple(f for f, _ in fields),
                     "LAYOUT": Layout(fields)}
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        return cast(RecordMessageMeta, dataclasses.dataclass(frozen=True)(cls))
