"""The 9P2000.L codec against frames written out by hand from the protocol
description (Linux Documentation/filesystems/9p.rst, the diod protocol page):
every message in both directions, byte for byte; then hypothesis round trips
and fuzzing of the decoder.

Wire conventions the vectors follow: all integers little-endian; a frame is
size[4] type[1] tag[2] body; a string is len[2] + UTF-8 bytes; a qid is
type[1] version[4] path[8] (13 bytes).
"""

from __future__ import annotations

import struct
from typing import Any

import construct as cs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.protocol import ninep as p

QID = p.Qid(p.QTDIR, 0x01020304, 0x1122334455667788)
QID_HEX = "80 04030201 8877665544332211"
QID2 = p.Qid(p.QTFILE, 7, 9)
QID2_HEX = "00 07000000 0900000000000000"

# Two Rreaddir entries: qid[13] offset[8] type[1] name[s].
DIRENT_DOT_HEX = "80 00000000 0200000000000000 0100000000000000 04 0100 2e"
DIRENT_AB_HEX = "00 00000000 0300000000000000 0200000000000000 08 0200 6162"

GETATTR_REPLY = p.Rgetattr(
    valid=p.GETATTR_BASIC, qid=QID, mode=0o100644, uid=1000, gid=100, nlink=1, rdev=0, size=5,
    blksize=4096, blocks=8, atime_sec=1, atime_nsec=2, mtime_sec=3, mtime_nsec=4, ctime_sec=5,
    ctime_nsec=6, btime_sec=0, btime_nsec=0, gen=0, data_version=0)

#: (message, tag, the whole frame in hex).  Spaces separate fields only.
VECTORS: list[tuple[Any, int, str]] = [
    (p.Tversion(8192, "9P2000.L"), p.NOTAG, "15000000 64 ffff 00200000 0800 3950323030302e4c"),
    (p.Rversion(8192, "9P2000.L"), p.NOTAG, "15000000 65 ffff 00200000 0800 3950323030302e4c"),
    (p.Tauth(5, "u", "", 1000), 1, "14000000 66 0100 05000000 0100 75 0000 e8030000"),
    (p.Rauth(QID), 1, f"14000000 67 0100 {QID_HEX}"),
    (p.Tattach(1, p.NOFID, "root", "", 0), 1,
     "1b000000 68 0100 01000000 ffffffff 0400 726f6f74 0000 00000000"),
    (p.Rattach(QID), 1, f"14000000 69 0100 {QID_HEX}"),
    (p.Rlerror(2), 1, "0b000000 07 0100 02000000"),
    (p.Tflush(7), 1, "09000000 6c 0100 0700"),
    (p.Rflush(), 1, "07000000 6d 0100"),
    (p.Twalk(1, 2, ["a", "bc"]), 1, "18000000 6e 0100 01000000 02000000 0200 0100 61 0200 6263"),
    (p.Rwalk([QID, QID2]), 1, f"23000000 6f 0100 0200 {QID_HEX} {QID2_HEX}"),
    (p.Twalk(1, 1, []), 1, "11000000 6e 0100 01000000 01000000 0000"),
    (p.Rwalk([]), 1, "09000000 6f 0100 0000"),
    (p.Tread(1, 0x100000000, 4096), 1, "17000000 74 0100 01000000 0000000001000000 00100000"),
    (p.Rread(b"hi"), 1, "0d000000 75 0100 02000000 6869"),
    (p.Twrite(1, 8, b"hi"), 1, "19000000 76 0100 01000000 0800000000000000 02000000 6869"),
    (p.Rwrite(2), 1, "0b000000 77 0100 02000000"),
    (p.Tclunk(1), 1, "0b000000 78 0100 01000000"),
    (p.Rclunk(), 1, "07000000 79 0100"),
    (p.Tremove(1), 1, "0b000000 7a 0100 01000000"),
    (p.Rremove(), 1, "07000000 7b 0100"),
    (p.Tstatfs(1), 1, "0b000000 08 0100 01000000"),
    (p.Rstatfs(0x01021997, 4096, 100, 50, 40, 1000, 900, 0x0102030405060708, 255), 1,
     "43000000 09 0100 97190201 00100000 6400000000000000 3200000000000000 2800000000000000"
     " e803000000000000 8403000000000000 0807060504030201 ff000000"),
    (p.Tlopen(1, p.DOTL_LARGEFILE | p.DOTL_RDWR), 1, "0f000000 0c 0100 01000000 02800000"),
    (p.Rlopen(QID, 4096), 1, f"18000000 0d 0100 {QID_HEX} 00100000"),
    (p.Tlcreate(1, "f", p.DOTL_CREATE | p.DOTL_RDWR, 0o644, 0), 1,
     "1a000000 0e 0100 01000000 0100 66 42000000 a4010000 00000000"),
    (p.Rlcreate(QID, 0), 1, f"18000000 0f 0100 {QID_HEX} 00000000"),
    (p.Tsymlink(1, "l", "t", 5), 1, "15000000 10 0100 01000000 0100 6c 0100 74 05000000"),
    (p.Rsymlink(QID), 1, f"14000000 11 0100 {QID_HEX}"),
    (p.Tmknod(1, "n", 0o20644, 1, 3, 0), 1,
     "1e000000 12 0100 01000000 0100 6e a4210000 01000000 03000000 00000000"),
    (p.Rmknod(QID), 1, f"14000000 13 0100 {QID_HEX}"),
    (p.Trename(1, 2, "r"), 1, "12000000 14 0100 01000000 02000000 0100 72"),
    (p.Rrename(), 1, "07000000 15 0100"),
    (p.Treadlink(1), 1, "0b000000 16 0100 01000000"),
    (p.Rreadlink("/tmp"), 1, "0d000000 17 0100 0400 2f746d70"),
    (p.Tgetattr(1, p.GETATTR_ALL), 1, "13000000 18 0100 01000000 ff3f000000000000"),
    # Rgetattr: 7 + valid 8 + qid 13 + mode/uid/gid 12 + fifteen u64 = 160 bytes.
    (GETATTR_REPLY, 1,
     f"a0000000 19 0100 ff07000000000000 {QID_HEX} a4810000 e8030000 64000000"
     " 0100000000000000 0000000000000000 0500000000000000 0010000000000000 0800000000000000"
     " 0100000000000000 0200000000000000 0300000000000000 0400000000000000"
     " 0500000000000000 0600000000000000 0000000000000000 0000000000000000"
     " 0000000000000000 0000000000000000"),
    (p.Tsetattr(1, p.SETATTR_MODE | p.SETATTR_SIZE, 0o644, 0, 0, 10, 0, 0, 0, 0), 1,
     "43000000 1a 0100 01000000 09000000 a4010000 00000000 00000000 0a00000000000000"
     " 0000000000000000 0000000000000000 0000000000000000 0000000000000000"),
    (p.Rsetattr(), 1, "07000000 1b 0100"),
    (p.Txattrwalk(1, 2, "user.a"), 1, "17000000 1e 0100 01000000 02000000 0600 757365722e61"),
    (p.Rxattrwalk(3), 1, "0f000000 1f 0100 0300000000000000"),
    (p.Txattrcreate(1, "user.a", 3, 1), 1,
     "1f000000 20 0100 01000000 0600 757365722e61 0300000000000000 01000000"),
    (p.Rxattrcreate(), 1, "07000000 21 0100"),
    (p.Treaddir(1, 0, 8192), 1, "17000000 28 0100 01000000 0000000000000000 00200000"),
    (p.Rreaddir(bytes.fromhex(DIRENT_DOT_HEX + DIRENT_AB_HEX)), 1,
     f"3e000000 29 0100 33000000 {DIRENT_DOT_HEX} {DIRENT_AB_HEX}"),
    (p.Tfsync(1, 1), 1, "0f000000 32 0100 01000000 01000000"),
    (p.Rfsync(), 1, "07000000 33 0100"),
    (p.Tlock(1, p.LOCK_TYPE_WRLCK, p.LOCK_FLAGS_BLOCK, 0, 0, 42, "h"), 1,
     "27000000 34 0100 01000000 01 01000000 0000000000000000 0000000000000000 2a000000 0100 68"),
    (p.Rlock(p.LOCK_BLOCKED), 1, "08000000 35 0100 01"),
    (p.Tgetlock(1, p.LOCK_TYPE_RDLCK, 10, 20, 42, "h"), 1,
     "23000000 36 0100 01000000 00 0a00000000000000 1400000000000000 2a000000 0100 68"),
    (p.Rgetlock(p.LOCK_TYPE_UNLCK, 10, 20, 42, "h"), 1,
     "1f000000 37 0100 02 0a00000000000000 1400000000000000 2a000000 0100 68"),
    (p.Tlink(1, 2, "k"), 1, "12000000 46 0100 01000000 02000000 0100 6b"),
    (p.Rlink(), 1, "07000000 47 0100"),
    (p.Tmkdir(1, "d", 0o755, 0), 1, "16000000 48 0100 01000000 0100 64 ed010000 00000000"),
    (p.Tmkdir(1, "\u00e9", 0o755, 0), 1, "17000000 48 0100 01000000 0200 c3a9 ed010000 00000000"),
    (p.Rmkdir(QID), 1, f"14000000 49 0100 {QID_HEX}"),
    (p.Trenameat(1, "a", 2, "b"), 1, "15000000 4a 0100 01000000 0100 61 02000000 0100 62"),
    (p.Rrenameat(), 1, "07000000 4b 0100"),
    (p.Tunlinkat(1, "d", p.AT_REMOVEDIR), 1, "12000000 4c 0100 01000000 0100 64 00020000"),
    (p.Runlinkat(), 1, "07000000 4d 0100"),
]


def frame_of(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def _vector_id(vector: tuple[Any, int, str]) -> str:
    return type(vector[0]).__name__


def test_vectors_cover_every_registered_message() -> None:
    assert {type(msg) for msg, _, _ in VECTORS} == {spec.cls for spec in p.BY_TYPE.values()}


def test_registry_has_every_9p2000l_message() -> None:
    expected = {
        "version", "auth", "attach", "flush", "walk", "read", "write", "clunk", "remove",
        "statfs", "lopen", "lcreate", "symlink", "mknod", "rename", "readlink", "getattr",
        "setattr", "xattrwalk", "xattrcreate", "readdir", "fsync", "lock", "getlock", "link",
        "mkdir", "renameat", "unlinkat"}
    names = set(p.NAMES.values())
    assert {f"T{n}" for n in expected} | {f"R{n}" for n in expected} | {"Rlerror"} == names
    for spec in p.BY_TYPE.values():
        if spec.cls.__name__.startswith("T"):
            assert p.NAMES[spec.type + 1] == "R" + spec.cls.__name__[1:]


@pytest.mark.parametrize("msg,tag,hexstr", VECTORS, ids=[_vector_id(v) for v in VECTORS])
def test_encode_matches_hand_vector(msg: Any, tag: int, hexstr: str) -> None:
    assert p.encode(msg, tag) == frame_of(hexstr)


@pytest.mark.parametrize("msg,tag,hexstr", VECTORS, ids=[_vector_id(v) for v in VECTORS])
def test_decode_matches_hand_vector(msg: Any, tag: int, hexstr: str) -> None:
    assert p.decode(frame_of(hexstr)) == (tag, msg)
    assert p.decode(memoryview(frame_of(hexstr))) == (tag, msg)


@pytest.mark.parametrize("msg,tag,hexstr", VECTORS, ids=[_vector_id(v) for v in VECTORS])
def test_fast_encoding_matches_hand_vector(msg: Any, tag: int, hexstr: str) -> None:
    assert p.encode_fast(msg, tag) == frame_of(hexstr)


def test_qid_is_13_bytes_and_rgetattr_is_160() -> None:
    assert p.QID.size == 13
    assert len(p.encode(GETATTR_REPLY, 1)) == 160 == p.FAST_RGETATTR.size


def test_strings_are_length_prefixed_utf8() -> None:
    frame = p.encode(p.Treadlink(1), 0)
    assert frame[:4] == struct.pack("<I", len(frame))
    body = p.encode(p.Rreadlink("\u00e9t\u00e9/\u2603"), 0)[7:]
    assert body == struct.pack("<H", 9) + "\u00e9t\u00e9/\u2603".encode()


def test_non_utf8_names_round_trip_bytes_exactly() -> None:
    """Host names that are not UTF-8 survive decode -> encode (surrogateescape)."""
    frame = frame_of("16000000 48 0100 01000000 0100 ff ed010000 00000000")
    tag, msg = p.decode(frame)
    assert msg.name == "\udcff"
    assert p.encode(msg, tag) == frame


def test_dirent_helpers_match_hand_layout() -> None:
    dot = p.encode_dirent(p.Qid(p.QTDIR, 0, 2), 1, 4, b".")
    ab = p.encode_dirent(p.Qid(p.QTFILE, 0, 3), 2, 8, b"ab")
    assert dot == frame_of(DIRENT_DOT_HEX)
    assert ab == frame_of(DIRENT_AB_HEX)
    assert p.dirent_size(b"ab") == len(ab) == 13 + 8 + 1 + 2 + 2
    assert p.decode_dirents(dot + ab) == [(p.Qid(p.QTDIR, 0, 2), 1, 4, "."),
                                          (p.Qid(p.QTFILE, 0, 3), 2, 8, "ab")]
    with pytest.raises(p.ProtocolError):
        p.decode_dirents((dot + ab)[:-1])
    with pytest.raises(p.ProtocolError):
        p.decode_dirents(dot[:10])


def test_encode_dirents_fills_count_and_no_more() -> None:
    entries = [(p.Qid(p.QTDIR, 0, 2), 1, 4, b"."), (p.Qid(p.QTFILE, 0, 3), 2, 8, b"ab")]
    both = frame_of(DIRENT_DOT_HEX) + frame_of(DIRENT_AB_HEX)
    assert p.encode_dirents(entries, len(both)) == (both, 2)
    assert p.encode_dirents(entries, len(both) - 1) == (frame_of(DIRENT_DOT_HEX), 1)
    assert p.encode_dirents(entries, 10) == (b"", 0)


def test_io_headers_and_rlerror_fast_paths() -> None:
    assert p.encode_rread_header(1, 2) + b"hi" == frame_of("0d000000 75 0100 02000000 6869")
    assert p.encode_io_header(p.Rreaddir.TYPE, 1, 0) == frame_of("0b000000 29 0100 00000000")
    assert p.encode_rlerror(1, 2) == frame_of("0b000000 07 0100 02000000")


# --- robust decoding ------------------------------------------------------------------

TATTACH = frame_of("1b000000 68 0100 01000000 ffffffff 0400 726f6f74 0000 00000000")


@pytest.mark.parametrize("frame", [
    b"",
    b"\x07\x00\x00",                             # shorter than a header
    frame_of("06000000 6d 0100"),                # size field below 7
    frame_of("03000000 6d 0100"),
    frame_of("08000000 6d 0100"),                # size field beyond the frame
    TATTACH[:-1],                                # truncated
    TATTACH[:12],
    TATTACH + b"\x00",                           # trailing garbage (size still says 27)
    struct.pack("<I", len(TATTACH) + 1) + TATTACH[4:] + b"\x00",  # trailing garbage in size
    frame_of("0f000000 68 0100 01000000 ffffffff"),  # body ends before uname
    frame_of("13000000 16 0100 01000000 ffff 41424344"),  # Treadlink with extra bytes
    frame_of("0d000000 17 0100 0500 2f746d70"),  # string length past the end
    frame_of("0d000000 17 0100 0300 2f746d70"),  # string length short of the end
    frame_of("0d000000 75 0100 03000000 6869"),  # Rread count past the end
    frame_of("0d000000 75 0100 01000000 6869"),  # Rread count short of the end
    frame_of("19000000 76 0100 01000000 0800000000000000 ffffffff 6869"),  # Twrite count
    frame_of("0c000000 6f 0100 0100 80"),        # Rwalk: one qid announced, 1 byte given
    frame_of("09000000 6e 0100 0100"),           # Twalk truncated in its fixed part
    frame_of("0b000000 c8 0100 00000000"),       # unknown type 200
    frame_of("07000000 00 0100"),                # unknown type 0
])
def test_bad_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(frame)


def test_frame_larger_than_msize_is_refused() -> None:
    frame = p.encode(p.Rread(b"x" * 100), 3)
    assert p.decode(frame, msize=len(frame)) == (3, p.Rread(b"x" * 100))
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frame, msize=len(frame) - 1)
    assert info.value.tag == 3


def test_protocol_error_carries_tag_and_type_when_header_was_readable() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(struct.pack("<I", 26) + TATTACH[4:26])  # size agrees, body is short
    assert (info.value.tag, info.value.msgtype) == (1, p.Tattach.TYPE)


# --- hypothesis: strategies built from the registry -----------------------------------

_TEXT = st.text(max_size=12)


def _field_strategy(sub: Any) -> st.SearchStrategy:
    """A strategy for values of one wire field, read off its construct."""
    if isinstance(sub, cs.FormatField):
        return st.integers(0, (1 << (8 * sub.sizeof())) - 1)
    if sub is p.String:
        return _TEXT
    if sub is p.QidFormat:
        return st.builds(p.Qid, st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF),
                         st.integers(0, 2**64 - 1))
    if sub is p.Data:
        return st.binary(max_size=64)
    if isinstance(sub, cs.FocusedSeq):  # PrefixedArray: count + Array("items")
        items = next(sc for sc in sub.subcons if sc.name == "items").subcon
        return st.lists(_field_strategy(items.subcon), max_size=p.MAX_WALK_ELEMENTS)
    raise AssertionError(f"no strategy for {sub!r}")


def _message_strategy(spec: p.MessageSpec) -> st.SearchStrategy:
    wire = spec.fmt.defersubcon  # the Struct the registry compiled
    fields = [sc.subcon for sc in wire.subcons if sc.name]
    return st.builds(spec.cls, *[_field_strategy(f) for f in fields])


MESSAGES = st.one_of([_message_strategy(spec) for spec in p.BY_TYPE.values()])
TAGS = st.integers(0, 0xFFFF)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES, TAGS)
def test_every_message_round_trips(msg: Any, tag: int) -> None:
    frame = p.encode(msg, tag)
    assert struct.unpack_from("<IBH", frame) == (len(frame), msg.TYPE, tag)
    assert p.decode(frame) == (tag, msg)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES, TAGS)
def test_fast_paths_equal_construct_encoding(msg: Any, tag: int) -> None:
    assert p.encode_fast(msg, tag) == p.encode(msg, tag)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    try:
        tag, msg = p.decode(data)
    except p.ProtocolError:
        return
    assert p.encode(msg, tag) == data


@settings(max_examples=1500)
@given(st.sampled_from(sorted(p.BY_TYPE)), TAGS, st.binary(max_size=48))
def test_random_bodies_decode_canonically_or_raise_protocol_error(
        msgtype: int, tag: int, body: bytes) -> None:
    """A well-formed header with a random body: either a message whose encoding
    is exactly these bytes, or a ProtocolError; never another exception."""
    frame = p.HEADER.pack(p.HEADER_SIZE + len(body), msgtype, tag) + body
    try:
        decoded_tag, msg = p.decode(frame)
    except p.ProtocolError as exc:
        assert exc.tag == tag
        return
    assert decoded_tag == tag
    assert p.encode(msg, tag) == frame


@settings(max_examples=300)
@given(MESSAGES, TAGS, st.data())
def test_truncated_or_padded_frames_raise_protocol_error(msg: Any, tag: int,
                                                         data: st.DataObject) -> None:
    """Also when the size field is made to agree: the body itself is checked."""
    frame = p.encode(msg, tag)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(p.ProtocolError):
        p.decode(frame[:cut])
    if cut >= p.HEADER_SIZE:
        with pytest.raises(p.ProtocolError):
            p.decode(struct.pack("<I", cut) + frame[4:cut])
    padded = frame + data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(p.ProtocolError):
        p.decode(padded)
    with pytest.raises(p.ProtocolError):
        p.decode(struct.pack("<I", len(padded)) + padded[4:])
