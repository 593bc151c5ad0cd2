"""The declarative message base (ninep.protocol.codec) of the 9P codecs."""

from __future__ import annotations

import struct

import pytest

from ninep.protocol import dotu as u
from ninep.protocol import ninep as p
from ninep.protocol.codec import U8, U16, U64, Str

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


def test_a_field_without_a_wire_type_is_refused() -> None:
    with pytest.raises(TypeError, match="Tbad.fid: annotate it with a wire type"):
        class Tbad(p.Message, code=250, table=None):
            fid: int


def test_stat_fields_use_the_dotu_stat_codec() -> None:
    msg = u.Rstat(u.DONT_TOUCH)
    frame = p.encode_fast(msg, 1)
    assert frame == p.encode(msg, 1)
    assert u.DOTU.decode(frame) == (1, msg)
