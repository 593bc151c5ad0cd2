"""The 9P2000.u and plain 9P2000 codec against frames written out by hand from
the protocol descriptions (Plan 9 manual section 5, intro(5) and stat(5); the
9P2000.u draft: n_uname, errno, extension, n_uid/n_gid/n_muid), then hypothesis
round trips of every message of both dialects and fuzzing of their decoders.

A stat is size[2] type[2] dev[4] qid[13] mode[4] atime[4] mtime[4] length[8]
name[s] uid[s] gid[s] muid[s] (+ extension[s] n_uid[4] n_gid[4] n_muid[4] in
.u); Rstat and Twstat carry it behind one more n[2].
"""

from __future__ import annotations

import struct
from typing import Any

import construct as cs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.protocol import dotu as u
from ninep.protocol import ninep as p

QID = p.Qid(p.QTDIR, 0x01020304, 0x1122334455667788)
QID_HEX = "80 04030201 8877665544332211"
QID2 = p.Qid(p.QTFILE, 7, 9)
QID2_HEX = "00 07000000 0900000000000000"

DIRU = u.DirU(type=0, dev=0, qid=QID2, mode=0o644, atime=1, mtime=2, length=5, name="f",
              uid="u", gid="g", muid="", extension="", n_uid=1000, n_gid=100, n_muid=u.NO_U32)
# size 0x40 = 39 fixed + 4 strings (11) + extension (2) + three ids (12)
DIRU_HEX = ("4000 0000 00000000 " + QID2_HEX + " a4010000 01000000 02000000 0500000000000000"
            " 0100 66 0100 75 0100 67 0000 0000 e8030000 64000000 ffffffff")
DIR = u.Dir(type=0, dev=0, qid=QID2, mode=0o644, atime=1, mtime=2, length=5, name="f",
            uid="u", gid="g", muid="")
DIR_HEX = ("3200 0000 00000000 " + QID2_HEX + " a4010000 01000000 02000000 0500000000000000"
           " 0100 66 0100 75 0100 67 0000")
#: What Linux sends for "change nothing": every integer all ones, every string empty.
DONT_TOUCH = u.DONT_TOUCH
DONT_TOUCH_HEX = ("3d00 ffff ffffffff ff ffffffff ffffffffffffffff ffffffff ffffffff ffffffff"
                  " ffffffffffffffff 0000 0000 0000 0000 0000 ffffffff ffffffff ffffffff")

#: (message set, message, tag, the whole frame in hex).
VECTORS: list[tuple[p.MessageSet, Any, int, str]] = [
    (u.DOTU, p.Tversion(8192, "9P2000.u"), p.NOTAG, "15000000 64 ffff 00200000 0800 3950323030302e75"),
    (u.DOTU, p.Rversion(8192, "9P2000.u"), p.NOTAG, "15000000 65 ffff 00200000 0800 3950323030302e75"),
    (u.PLAIN, p.Tversion(8192, "9P2000"), p.NOTAG, "13000000 64 ffff 00200000 0600 395032303030"),
    (u.DOTU, p.Tauth(5, "u", "", 1000), 1, "14000000 66 0100 05000000 0100 75 0000 e8030000"),
    (u.PLAIN, u.TauthPlain(5, "u", ""), 1, "10000000 66 0100 05000000 0100 75 0000"),
    (u.DOTU, p.Rauth(QID), 1, f"14000000 67 0100 {QID_HEX}"),
    (u.DOTU, p.Tattach(1, p.NOFID, "root", "", 0), 1,
     "1b000000 68 0100 01000000 ffffffff 0400 726f6f74 0000 00000000"),
    (u.PLAIN, u.TattachPlain(1, p.NOFID, "root", ""), 1,
     "17000000 68 0100 01000000 ffffffff 0400 726f6f74 0000"),
    (u.DOTU, p.Rattach(QID), 1, f"14000000 69 0100 {QID_HEX}"),
    (u.DOTU, u.Rerror("x", 2), 1, "0e000000 6b 0100 0100 78 02000000"),
    (u.PLAIN, u.RerrorPlain("x"), 1, "0a000000 6b 0100 0100 78"),
    (u.DOTU, p.Tflush(7), 1, "09000000 6c 0100 0700"),
    (u.DOTU, p.Rflush(), 1, "07000000 6d 0100"),
    (u.DOTU, p.Twalk(1, 2, ["a", "bc"]), 1, "18000000 6e 0100 01000000 02000000 0200 0100 61 0200 6263"),
    (u.DOTU, p.Rwalk([QID, QID2]), 1, f"23000000 6f 0100 0200 {QID_HEX} {QID2_HEX}"),
    (u.DOTU, u.Topen(1, u.ORDWR | u.OTRUNC), 1, "0c000000 70 0100 01000000 12"),
    (u.DOTU, u.Ropen(QID, 4096), 1, f"18000000 71 0100 {QID_HEX} 00100000"),
    (u.DOTU, u.Tcreate(1, "l", u.DMSYMLINK | 0o777, u.OREAD, "t"), 1,
     "16000000 72 0100 01000000 0100 6c ff010002 00 0100 74"),
    (u.DOTU, u.Tcreate(1, "n", u.DMDEVICE | 0o600, u.OREAD, "c 1 3"), 1,
     "1a000000 72 0100 01000000 0100 6e 80018000 00 0500 632031203 3".replace("3 3", "33")),
    (u.PLAIN, u.TcreatePlain(1, "d", u.DMDIR | 0o755, u.OREAD), 1,
     "13000000 72 0100 01000000 0100 64 ed010080 00"),
    (u.DOTU, u.Rcreate(QID, 0), 1, f"18000000 73 0100 {QID_HEX} 00000000"),
    (u.DOTU, p.Tread(1, 0x100000000, 4096), 1, "17000000 74 0100 01000000 0000000001000000 00100000"),
    (u.DOTU, p.Rread(b"hi"), 1, "0d000000 75 0100 02000000 6869"),
    (u.DOTU, p.Twrite(1, 8, b"hi"), 1, "19000000 76 0100 01000000 0800000000000000 02000000 6869"),
    (u.DOTU, p.Rwrite(2), 1, "0b000000 77 0100 02000000"),
    (u.DOTU, p.Tclunk(1), 1, "0b000000 78 0100 01000000"),
    (u.DOTU, p.Rclunk(), 1, "07000000 79 0100"),
    (u.DOTU, p.Tremove(1), 1, "0b000000 7a 0100 01000000"),
    (u.DOTU, p.Rremove(), 1, "07000000 7b 0100"),
    (u.DOTU, u.Tstat(1), 1, "0b000000 7c 0100 01000000"),
    (u.DOTU, u.Rstat(DIRU), 1, f"4b000000 7d 0100 4200 {DIRU_HEX}"),
    (u.PLAIN, u.RstatPlain(DIR), 1, f"3d000000 7d 0100 3400 {DIR_HEX}"),
    (u.DOTU, u.Twstat(1, DIRU), 1, f"4f000000 7e 0100 01000000 4200 {DIRU_HEX}"),
    (u.DOTU, u.Twstat(1, DONT_TOUCH), 1, f"4c000000 7e 0100 01000000 3f00 {DONT_TOUCH_HEX}"),
    (u.PLAIN, u.TwstatPlain(1, DIR), 1, f"41000000 7e 0100 01000000 3400 {DIR_HEX}"),
    (u.DOTU, u.Rwstat(), 1, "07000000 7f 0100"),
]


def frame_of(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def _id(vector: tuple[p.MessageSet, Any, int, str]) -> str:
    return f"{vector[0].version}-{type(vector[1]).__name__}"


def test_vectors_cover_every_message_of_both_dialects() -> None:
    for mset in (u.DOTU, u.PLAIN):
        covered = {type(msg) for _, msg, _, _ in VECTORS if mset.table.get(msg.TYPE) is msg.SPEC}
        assert covered == {spec.cls for spec in mset.table.values()}, mset.version


def test_dialect_tables() -> None:
    """.u and plain have the same type codes; .L-only codes are not in them."""
    assert set(u.DOTU.table) == set(u.PLAIN.table) == set(range(100, 128)) - {106}
    assert u.DOTU.table[p.Tattach.TYPE].cls is p.Tattach
    assert u.PLAIN.table[p.Tattach.TYPE].cls is u.TattachPlain
    for lonly in (p.Tlopen, p.Tgetattr, p.Treaddir, p.Rlerror, p.Txattrwalk):
        assert lonly.TYPE not in u.DOTU.table


@pytest.mark.parametrize("mset,msg,tag,hexstr", VECTORS, ids=[_id(v) for v in VECTORS])
def test_encode_matches_hand_vector(mset: p.MessageSet, msg: Any, tag: int, hexstr: str) -> None:
    assert p.encode(msg, tag) == frame_of(hexstr)
    assert p.encode_fast(msg, tag) == frame_of(hexstr)


@pytest.mark.parametrize("mset,msg,tag,hexstr", VECTORS, ids=[_id(v) for v in VECTORS])
def test_decode_matches_hand_vector(mset: p.MessageSet, msg: Any, tag: int, hexstr: str) -> None:
    frame = frame_of(hexstr)
    assert mset.decode(frame) == (tag, msg)
    assert mset.decode(memoryview(frame)) == (tag, msg)
    assert p.decode_body_construct(frame[4], frame[7:], tag, mset.table) == msg


def test_error_replies_carry_text_and_errno() -> None:
    assert u.DOTU.encode_error(1, 2) == p.encode(u.Rerror("No such file or directory", 2), 1)
    assert u.PLAIN.encode_error(1, 2) == p.encode(u.RerrorPlain("No such file or directory"), 1)
    assert p.DOTL.encode_error(1, 2) == p.encode(p.Rlerror(2), 1)
    assert u.errno_of(u.Rerror("whatever", 13)) == 13
    assert u.errno_of(u.RerrorPlain("Permission denied")) == 13
    assert u.errno_of(u.RerrorPlain("file not found")) == 5  # unknown text: EIO


def test_directory_read_data_is_stats_back_to_back() -> None:
    data = u.encode_dir(DIRU) + u.encode_dir(DONT_TOUCH)
    assert data == frame_of(DIRU_HEX + DONT_TOUCH_HEX)
    assert u.decode_dirs(data, dotu=True) == [DIRU, DONT_TOUCH]
    assert u.encode_dir(DIR) == frame_of(DIR_HEX)
    assert u.decode_dirs(frame_of(DIR_HEX) * 2, dotu=False) == [DIR, DIR]
    for bad in (data[:-1], data + b"\x00", frame_of(DIR_HEX)):
        with pytest.raises(p.ProtocolError):
            u.decode_dirs(bad, dotu=True)


@pytest.mark.parametrize("frame", [
    frame_of("4b000000 7d 0100 4300 " + DIRU_HEX),          # n[2] past the stat
    frame_of("4b000000 7d 0100 4100 " + DIRU_HEX),          # n[2] short of it
    frame_of("4b000000 7d 0100 4200 4100" + DIRU_HEX[4:]),  # size[2] past the fields
    frame_of("4b000000 7d 0100 4200 3f00" + DIRU_HEX[4:]),  # size[2] inside the last field
    frame_of(f"3d000000 7d 0100 3400 {DIR_HEX}"),          # a plain stat on a .u session
    frame_of("0c000000 72 0100 01000000 0100 6c"),          # Tcreate cut after the name
    frame_of("0b000000 07 0100 02000000"),                  # Rlerror is not .u
    frame_of("0f000000 0c 0100 01000000 02000000"),         # nor is Tlopen
])
def test_bad_dotu_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        u.DOTU.decode(frame)


# --- hypothesis: strategies read off each dialect's table -------------------------------------

_TEXT = st.text(max_size=12)
_QIDS = st.builds(p.Qid, st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1))


def _ints(sub: Any) -> st.SearchStrategy:
    return st.integers(0, (1 << (8 * sub.sizeof())) - 1)


def _stat_strategy(cls: type, fields: tuple[Any, ...]) -> st.SearchStrategy:
    return st.builds(cls, *[_field_strategy(f.subcon) for f in fields])


def _field_strategy(sub: Any) -> st.SearchStrategy:
    if isinstance(sub, cs.FormatField):
        return _ints(sub)
    if sub is p.String:
        return _TEXT
    if sub is p.QidFormat:
        return _QIDS
    if sub is p.Data:
        return st.binary(max_size=64)
    if sub is u.StatDirU:
        return _stat_strategy(u.DirU, u._DIRU_FIELDS)
    if sub is u.StatDir:
        return _stat_strategy(u.Dir, u._DIR_FIELDS)
    if isinstance(sub, cs.FocusedSeq):
        items = next(sc for sc in sub.subcons if sc.name == "items").subcon
        return st.lists(_field_strategy(items.subcon), max_size=p.MAX_WALK_ELEMENTS)
    raise AssertionError(f"no strategy for {sub!r}")


def _messages(mset: p.MessageSet) -> st.SearchStrategy:
    def one(spec: p.MessageSpec) -> st.SearchStrategy:
        wire = spec.fmt.defersubcon
        return st.builds(spec.cls, *[_field_strategy(sc.subcon) for sc in wire.subcons if sc.name])
    return st.tuples(st.just(mset), st.one_of([one(s) for s in mset.table.values()]))


MESSAGES = st.one_of(_messages(u.DOTU), _messages(u.PLAIN))
TAGS = st.integers(0, 0xFFFF)
SETTINGS = settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(MESSAGES, TAGS)
def test_every_message_round_trips(item: tuple[p.MessageSet, Any], tag: int) -> None:
    mset, msg = item
    frame = p.encode(msg, tag)
    assert struct.unpack_from("<IBH", frame) == (len(frame), msg.TYPE, tag)
    assert p.encode_fast(msg, tag) == frame
    assert mset.decode(frame) == (tag, msg)
    assert p.decode_body_construct(msg.TYPE, frame[7:], tag, mset.table) == msg


@settings(max_examples=1500)
@given(st.sampled_from([u.DOTU, u.PLAIN]), st.sampled_from(sorted(u.DOTU.table)), TAGS,
       st.binary(max_size=96))
def test_random_bodies_decode_canonically_or_raise_protocol_error(
        mset: p.MessageSet, msgtype: int, tag: int, body: bytes) -> None:
    frame = p.HEADER.pack(p.HEADER_SIZE + len(body), msgtype, tag) + body
    try:
        decoded_tag, msg = mset.decode(frame)
    except p.ProtocolError as exc:
        assert exc.tag == tag
        with pytest.raises(p.ProtocolError):  # the reference codec agrees
            p.decode_body_construct(msgtype, body, tag, mset.table)
        return
    assert decoded_tag == tag
    assert p.encode(msg, tag) == frame


@settings(max_examples=400)
@given(MESSAGES, TAGS, st.data())
def test_truncated_or_padded_frames_raise_protocol_error(item: tuple[p.MessageSet, Any], tag: int,
                                                         data: st.DataObject) -> None:
    mset, msg = item
    frame = p.encode(msg, tag)
    cut = data.draw(st.integers(p.HEADER_SIZE, len(frame) - 1)) if len(frame) > 7 else None
    if cut is not None:
        with pytest.raises(p.ProtocolError):
            mset.decode(struct.pack("<I", cut) + frame[4:cut])
    padded = frame + data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(p.ProtocolError):
        mset.decode(struct.pack("<I", len(padded)) + padded[4:])
