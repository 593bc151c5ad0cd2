"""The declarative message base (ninep.protocol.codec) that 9P and the proxy wire share."""

from __future__ import annotations

import dataclasses
import re
import struct
import textwrap
from pathlib import Path

import pytest

from ninep.protocol import codec
from ninep.protocol import dotu as u
from ninep.protocol import ninep as p
from ninep.protocol import proxy as P
from ninep.protocol.codec import U8, U16, U64, Bytes16, Str

_TABLE: dict[int, p.MessageSpec] = {}


class Tsample(p.Message, code=200, table=_TABLE):
    """Integers on both sides of a string: two struct runs around it."""

    small: U8
    word: U16
    name: Str
    big: U64


class Rsample(p.Message, code=201, table=_TABLE):
    flag: U8
    word: U16


def test_fields_come_from_the_annotations_in_order() -> None:
    assert Tsample._fields == ("small", "word", "name", "big")
    assert Tsample.LAYOUT.names == Tsample._fields
    assert [w.code for w in Tsample.LAYOUT.wires] == ["B", "H", "", "Q"]
    assert _TABLE == {200: Tsample.SPEC, 201: Rsample.SPEC} and Tsample.TYPE == 200


def test_integer_runs_merge_into_one_struct() -> None:
    runs = [step[0].format for step in Tsample.LAYOUT.steps if step[0] is not None]
    assert runs == ["<BH", "<Q"]
    assert Tsample.LAYOUT.fixed is None
    assert Rsample.LAYOUT.fixed is not None and Rsample.LAYOUT.fixed.format == "<BH"


def test_a_declared_message_encodes_and_decodes_by_its_annotations() -> None:
    msg = Tsample(1, 0x203, "ab", 2**64 - 1)
    body = struct.pack("<BHH2sQ", 1, 0x203, 2, b"ab", 2**64 - 1)
    assert p.encode_fast(msg, 9) == p.encode(msg, 9) == p.HEADER.pack(7 + len(body), 200, 9) + body
    assert p.decode_body(200, body, table=_TABLE) == msg
    assert p.decode_body_construct(200, body, table=_TABLE) == msg
    with pytest.raises(p.ProtocolError, match="truncated"):
        p.decode_body(200, body[:-1], table=_TABLE)
    with pytest.raises(p.ProtocolError, match="1 trailing bytes"):
        p.decode_body(201, b"\1\2\3\4", table=_TABLE)


def test_9p_messages_are_named_tuples_and_proxy_messages_dataclasses() -> None:
    clunk = p.Tclunk(fid=3)
    assert clunk == (3,) and clunk[0] == 3 and clunk._replace(fid=4) == p.Tclunk(4)
    assert isinstance(clunk, tuple) and not hasattr(clunk, "__dict__")
    lstat = P.Lstat(b"a")
    assert dataclasses.is_dataclass(lstat) and lstat != P.Statfs(b"a")
    assert dataclasses.replace(lstat, path=b"b") == P.Lstat(path=b"b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        lstat.path = b"c"  # type: ignore[misc]
    assert not hasattr(lstat, "__dict__")


def test_proxy_format_is_derived_from_the_wire_types() -> None:
    assert P.Mknod.FORMAT == "ddsdq" and P.Utime.FORMAT == "sqqqq"
    assert P.Status.FORMAT == "d" and P.Status.TYPE is None and P.Open.TYPE == P.T_OPEN


def test_a_field_without_a_wire_type_is_refused() -> None:
    with pytest.raises(TypeError, match="Tbad.fid: annotate it with a wire type"):
        class Tbad(p.Message, code=250, table=None):
            fid: int


def test_inline_prefixed_bytes_check_their_length() -> None:
    class Sample(P._RequestMessage, code=P.T_LSTAT):
        path: Bytes16
        tail: U8

    layout = Sample.LAYOUT
    assert layout.decode(b"\2\0ab\7") == [b"ab", 7]
    with pytest.raises(codec.Short):
        layout.decode(b"\3\0ab\7")
    with pytest.raises(codec.Short):
        layout.decode(b"\2")
    with pytest.raises(ValueError, match="1 trailing bytes"):
        layout.decode(b"\0\0\7\7")
    with pytest.raises(TypeError, match="expected bytes"):
        layout.encode(["ab", 7])


def test_stat_fields_use_the_dotu_stat_codec() -> None:
    msg = u.Rstat(u.DONT_TOUCH)
    frame = p.encode_fast(msg, 1)
    assert frame == p.encode(msg, 1)
    assert u.DOTU.decode(frame) == (1, msg)


def test_mypy_sees_the_message_fields(tmp_path: Path) -> None:
    """The point of declaring messages as annotated classes: a type checker
    checks their constructors and attributes (it could not see the fields of
    the classes the old factories generated)."""
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "use_messages.py"
    snippet.write_text(textwrap.dedent("""
        from ninep.protocol import ninep as p, proxy as P
        reveal_type(p.Tread(1, 2, 3).offset)
        reveal_type(p.Tread.TYPE)
        reveal_type(P.Lstat(b"x").path)
        p.Tread(1, 2)
        P.Status(1, 2)
        p.Tclunk(1).fid = 2
    """))
    out, _, _ = api.run([str(snippet), "--no-incremental", "--cache-dir", str(tmp_path / "c"),
                         "--follow-imports", "silent"])
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if "use_messages.py:" in line]
    assert re.search(r'Revealed type is "(builtins\.)?int"', lines[0]), lines
    assert re.search(r'Revealed type is "(builtins\.)?int"', lines[1]), lines
    assert re.search(r'Revealed type is "(builtins\.)?bytes"', lines[2]), lines
    assert any('Missing positional argument "count"' in line for line in lines[3:])
    assert any('Too many arguments for "Status"' in line for line in lines[3:])
    assert any("read-only" in line or "frozen" in line for line in lines[3:]), lines
