"""Sans-IO codec for 9P2000.L: bytes <-> message tuples, in both directions.

Every message is a ``NamedTuple`` subclass registered with its type code and a
``construct`` wire format (compiled).  The server needs T-decode and R-encode;
the test client needs the reverse; both use the same tables.  A class carries
its own format and plan (``FMT``, ``PLAN``), so encoding needs no table; a
:class:`MessageSet` (one per dialect: this module's :data:`DOTL`, and
9P2000.u / 9P2000 in :mod:`ninep.protocol.dotu`) says which class a type code
decodes to.

A frame is ``size[4] type[1] tag[2] body``.  :func:`decode` never raises
anything but :class:`ProtocolError` for bad input: a wrong size, truncation,
trailing bytes, a bad string length or an unknown type.

The hottest fixed-layout messages also have a plain :mod:`struct` path
(``FAST_*``); ``bench/`` measures both so the choice is made on data.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

import construct as cs

# --- constants -----------------------------------------------------------------

VERSION_9P2000L = "9P2000.L"
NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
HEADER = struct.Struct("<IBH")  # size, type, tag
HEADER_SIZE = HEADER.size  # 7
#: Bytes of an Rread/Rreaddir frame before its payload: size type tag count.
IOHDRSZ_REPLY = 11
#: Overhead subtracted from msize when clamping read/write counts (Linux: P9_IOHDRSZ).
IOHDRSZ = 24
MAX_WALK_ELEMENTS = 16

# qid.type bits
QTDIR = 0x80
QTAPPEND = 0x40
QTEXCL = 0x20
QTMOUNT = 0x10
QTAUTH = 0x08
QTTMP = 0x04
QTSYMLINK = 0x02
QTLINK = 0x01
QTFILE = 0x00

# Tgetattr request_mask / Rgetattr valid bits
GETATTR_MODE = 0x00000001
GETATTR_NLINK = 0x00000002
GETATTR_UID = 0x00000004
GETATTR_GID = 0x00000008
GETATTR_RDEV = 0x00000010
GETATTR_ATIME = 0x00000020
GETATTR_MTIME = 0x00000040
GETATTR_CTIME = 0x00000080
GETATTR_INO = 0x00000100
GETATTR_SIZE = 0x00000200
GETATTR_BLOCKS = 0x00000400
GETATTR_BTIME = 0x00000800
GETATTR_GEN = 0x00001000
GETATTR_DATA_VERSION = 0x00002000
GETATTR_BASIC = 0x000007FF
GETATTR_ALL = 0x00003FFF

# Tsetattr valid bits
SETATTR_MODE = 0x00000001
SETATTR_UID = 0x00000002
SETATTR_GID = 0x00000004
SETATTR_SIZE = 0x00000008
SETATTR_ATIME = 0x00000010
SETATTR_MTIME = 0x00000020
SETATTR_CTIME = 0x00000040
SETATTR_ATIME_SET = 0x00000080
SETATTR_MTIME_SET = 0x00000100

# Tlock / Tgetlock
LOCK_TYPE_RDLCK = 0
LOCK_TYPE_WRLCK = 1
LOCK_TYPE_UNLCK = 2
LOCK_SUCCESS = 0
LOCK_BLOCKED = 1
LOCK_ERROR = 2
LOCK_GRACE = 3
LOCK_FLAGS_BLOCK = 1
LOCK_FLAGS_RECLAIM = 2

# Tunlinkat flags
AT_REMOVEDIR = 0x200

# Linux dotl open flags (as sent on the wire; x86 and generic values)
DOTL_RDONLY = 0o0
DOTL_WRONLY = 0o1
DOTL_RDWR = 0o2
DOTL_NOACCESS = 0o3
DOTL_CREATE = 0o100
DOTL_EXCL = 0o200
DOTL_NOCTTY = 0o400
DOTL_TRUNC = 0o1000
DOTL_APPEND = 0o2000
DOTL_NONBLOCK = 0o4000
DOTL_DSYNC = 0o10000
DOTL_FASYNC = 0o20000
DOTL_DIRECT = 0o40000
DOTL_LARGEFILE = 0o100000
DOTL_DIRECTORY = 0o200000
DOTL_NOFOLLOW = 0o400000
DOTL_NOATIME = 0o1000000
DOTL_CLOEXEC = 0o2000000
DOTL_SYNC = 0o4000000


class ProtocolError(Exception):
    """A frame that cannot be decoded.  ``tag`` is set when the header was readable."""

    def __init__(self, message: str, tag: int | None = None, msgtype: int | None = None):
        super().__init__(message)
        self.tag = tag
        self.msgtype = msgtype


# --- wire building blocks ----------------------------------------------------------


class Qid(NamedTuple):
    type: int
    version: int
    path: int


def _fsdecode(obj: bytes, ctx: Any) -> str:
    return os.fsdecode(obj)


def _fsencode(obj: str | bytes, ctx: Any) -> bytes:
    return os.fsencode(obj)


#: A 9P string: u16 length + bytes.  Decoded with surrogateescape so that
#: non-UTF-8 host names round-trip, as the ``os`` module does.
String = cs.ExprAdapter(cs.Prefixed(cs.Int16ul, cs.GreedyBytes), _fsdecode, _fsencode)
QidFormat = cs.ExprAdapter(
    cs.Struct("type" / cs.Int8ul, "version" / cs.Int32ul, "path" / cs.Int64ul),
    lambda obj, ctx: Qid(obj.type, obj.version, obj.path),
    lambda obj, ctx: {"type": obj[0], "version": obj[1], "path": obj[2]},
)
QID = struct.Struct("<BIQ")
u8, u16, u32, u64 = cs.Int8ul, cs.Int16ul, cs.Int32ul, cs.Int64ul
#: count[4] data[count].  Wrapped in an (identity) adapter so that it is parsed
#: by the interpreter, not the compiler: compiled ``Prefixed`` does not check
#: that *count* bytes are really there and would accept a short frame.
Data = cs.ExprAdapter(cs.Prefixed(u32, cs.GreedyBytes), lambda obj, ctx: obj,
                      lambda obj, ctx: obj)


# --- message registry -------------------------------------------------------------------


class MessageSpec(NamedTuple):
    type: int
    cls: type
    fmt: Any  # compiled construct


BY_TYPE: dict[int, MessageSpec] = {}


# --- plain-struct codec, derived from the same field lists -----------------------------------
# construct's compiled parser costs 3-28 µs per message, most of a small
# request's CPU (bench/micro.py); these plans do the same work with
# struct.unpack_from in about a tenth of that.  The construct formats stay
# the reference: the hypothesis tests check that both agree.

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class NestedCodec(NamedTuple):
    """The struct-plan codec of a compound field (a 9P stat): ``decode(body,
    pos, end) -> (value, new pos)`` raising ``_Short``/``ValueError``, and
    ``encode(value) -> bytes``."""

    decode: Any
    encode: Any


#: id(construct of a compound field) -> its plan codec (see register_nested).
_NESTED: dict[int, NestedCodec] = {}


def register_nested(subcon: Any, codec: NestedCodec) -> None:
    """Let message plans use *codec* wherever *subcon* appears as a field."""
    _NESTED[id(subcon)] = codec


# plan steps: (kind, struct / nested codec / None, number of message fields it covers)
_Step = tuple[str, Any, int]


def _plan_of(fmt: cs.Struct) -> list[_Step]:
    """The steps that decode/encode *fmt*: runs of integers merged into one struct."""
    steps: list[_Step] = []
    run = ""

    def flush() -> None:
        nonlocal run
        if run:
            steps.append(("ints", struct.Struct("<" + run), len(run)))
            run = ""

    for field in fmt.subcons:
        if not field.name:
            continue  # Terminated
        sub = field.subcon
        if isinstance(sub, cs.FormatField):
            run += sub.fmtstr[-1]
            continue
        flush()
        if isinstance(sub, cs.FocusedSeq):  # PrefixedArray(u16, item)
            item = next(sc for sc in sub.subcons if sc.name == "items").subcon.subcon
            steps.append(("strs" if item is String else "qids", None, 1))
        elif id(sub) in _NESTED:
            steps.append(("nested", _NESTED[id(sub)], 1))
        else:
            steps.append(({id(String): "str", id(QidFormat): "qid", id(Data): "data"}[id(sub)], None, 1))
    flush()
    return steps


class _Short(Exception):
    """The body ended inside a field."""


def _take(body: bytes | memoryview, pos: int, n: int, end: int) -> int:
    if pos + n > end:
        raise _Short
    return pos + n


def _decode_plan(plan: list[_Step], body: bytes | memoryview) -> list[Any]:
    out: list[Any] = []
    pos = 0
    end = len(body)
    for kind, st, _ in plan:
        if kind == "ints":
            nxt = _take(body, pos, st.size, end)  # type: ignore[union-attr]
            out.extend(st.unpack_from(body, pos))  # type: ignore[union-attr]
            pos = nxt
        elif kind == "str":
            value, pos = _decode_str(body, pos, end)
            out.append(value)
        elif kind == "qid":
            nxt = _take(body, pos, QID.size, end)
            out.append(Qid(*QID.unpack_from(body, pos)))
            pos = nxt
        elif kind == "data":
            start = _take(body, pos, 4, end)
            (count,) = _U32.unpack_from(body, pos)
            pos = _take(body, start, count, end)
            out.append(bytes(body[start:pos]))
        elif kind == "nested":
            value, pos = st.decode(body, pos, end)
            out.append(value)
        else:  # "strs" / "qids": u16 count, then the items
            start = _take(body, pos, 2, end)
            (count,) = _U16.unpack_from(body, pos)
            pos = start
            items: list[Any] = []
            for _ in range(count):
                if kind == "strs":
                    value, pos = _decode_str(body, pos, end)
                    items.append(value)
                else:
                    nxt = _take(body, pos, QID.size, end)
                    items.append(Qid(*QID.unpack_from(body, pos)))
                    pos = nxt
            out.append(items)
    if pos != end:
        raise ValueError(f"{end - pos} trailing bytes")
    return out


def _decode_str(body: bytes | memoryview, pos: int, end: int) -> tuple[str, int]:
    start = _take(body, pos, 2, end)
    (length,) = _U16.unpack_from(body, pos)
    stop = _take(body, start, length, end)
    return os.fsdecode(bytes(body[start:stop])), stop


def _encode_plan(plan: list[_Step], msg: Any) -> bytes:
    parts: list[bytes] = []
    i = 0
    for kind, st, nfields in plan:
        if kind == "ints":
            parts.append(st.pack(*msg[i:i + nfields]))  # type: ignore[union-attr]
        else:
            value = msg[i]
            if kind == "str":
                parts.append(_encode_str(value))
            elif kind == "qid":
                parts.append(QID.pack(*value))
            elif kind == "data":
                parts.append(_U32.pack(len(value)))
                parts.append(bytes(value))
            elif kind == "nested":
                parts.append(st.encode(value))
            else:
                parts.append(_U16.pack(len(value)))
                parts.extend(_encode_str(v) if kind == "strs" else QID.pack(*v) for v in value)
        i += nfields
    return b"".join(parts)


def _encode_str(value: str | bytes) -> bytes:
    raw = os.fsencode(value)
    return _U16.pack(len(raw)) + raw  # struct.error past 65535 bytes


def message(code: int, *fields: Any, table: dict[int, MessageSpec] | None = BY_TYPE):
    """Register a NamedTuple as message *code* whose body is *fields* in order.

    *table* is the dialect table it decodes from (9P2000.L's by default;
    ``None``: the caller adds it to its tables itself)."""

    def register(cls: type) -> type:
        fmt = cs.Struct(*fields, cs.Terminated)
        names = [sc.name for sc in fmt.subcons if sc.name]
        if tuple(names) != cls._fields:
            raise TypeError(f"{cls.__name__}: fields {cls._fields} != wire {names}")
        cls.TYPE = code
        cls.SPEC = MessageSpec(code, cls, fmt.compile())
        cls.PLAN = _plan_of(fmt)
        if table is not None:
            table[code] = cls.SPEC
        return cls

    return register


class Message:
    """Marker base documenting the class attributes every message carries."""

    TYPE: ClassVar[int]
    SPEC: ClassVar[MessageSpec]
    PLAN: ClassVar[list[_Step]]


# Each NamedTuple below mirrors the 9P2000.L message of the same name.
# fmt: off

@message(7, "ecode" / u32)
class Rlerror(NamedTuple):
    ecode: int

@message(8, "fid" / u32)
class Tstatfs(NamedTuple):
    fid: int

@message(9, "type" / u32, "bsize" / u32, "blocks" / u64, "bfree" / u64, "bavail" / u64,
         "files" / u64, "ffree" / u64, "fsid" / u64, "namelen" / u32)
class Rstatfs(NamedTuple):
    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid: int
    namelen: int

@message(12, "fid" / u32, "flags" / u32)
class Tlopen(NamedTuple):
    fid: int
    flags: int

@message(13, "qid" / QidFormat, "iounit" / u32)
class Rlopen(NamedTuple):
    qid: Qid
    iounit: int

@message(14, "fid" / u32, "name" / String, "flags" / u32, "mode" / u32, "gid" / u32)
class Tlcreate(NamedTuple):
    fid: int
    name: str
    flags: int
    mode: int
    gid: int

@message(15, "qid" / QidFormat, "iounit" / u32)
class Rlcreate(NamedTuple):
    qid: Qid
    iounit: int

@message(16, "fid" / u32, "name" / String, "symtgt" / String, "gid" / u32)
class Tsymlink(NamedTuple):
    fid: int
    name: str
    symtgt: str
    gid: int

@message(17, "qid" / QidFormat)
class Rsymlink(NamedTuple):
    qid: Qid

@message(18, "dfid" / u32, "name" / String, "mode" / u32, "major" / u32, "minor" / u32, "gid" / u32)
class Tmknod(NamedTuple):
    dfid: int
    name: str
    mode: int
    major: int
    minor: int
    gid: int

@message(19, "qid" / QidFormat)
class Rmknod(NamedTuple):
    qid: Qid

@message(20, "fid" / u32, "dfid" / u32, "name" / String)
class Trename(NamedTuple):
    fid: int
    dfid: int
    name: str

@message(21)
class Rrename(NamedTuple):
    pass

@message(22, "fid" / u32)
class Treadlink(NamedTuple):
    fid: int

@message(23, "target" / String)
class Rreadlink(NamedTuple):
    target: str

@message(24, "fid" / u32, "request_mask" / u64)
class Tgetattr(NamedTuple):
    fid: int
    request_mask: int

@message(25, "valid" / u64, "qid" / QidFormat, "mode" / u32, "uid" / u32, "gid" / u32,
         "nlink" / u64, "rdev" / u64, "size" / u64, "blksize" / u64, "blocks" / u64,
         "atime_sec" / u64, "atime_nsec" / u64, "mtime_sec" / u64, "mtime_nsec" / u64,
         "ctime_sec" / u64, "ctime_nsec" / u64, "btime_sec" / u64, "btime_nsec" / u64,
         "gen" / u64, "data_version" / u64)
class Rgetattr(NamedTuple):
    valid: int
    qid: Qid
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int
    ctime_sec: int
    ctime_nsec: int
    btime_sec: int
    btime_nsec: int
    gen: int
    data_version: int

@message(26, "fid" / u32, "valid" / u32, "mode" / u32, "uid" / u32, "gid" / u32, "size" / u64,
         "atime_sec" / u64, "atime_nsec" / u64, "mtime_sec" / u64, "mtime_nsec" / u64)
class Tsetattr(NamedTuple):
    fid: int
    valid: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int

@message(27)
class Rsetattr(NamedTuple):
    pass

@message(30, "fid" / u32, "newfid" / u32, "name" / String)
class Txattrwalk(NamedTuple):
    fid: int
    newfid: int
    name: str

@message(31, "size" / u64)
class Rxattrwalk(NamedTuple):
    size: int

@message(32, "fid" / u32, "name" / String, "attr_size" / u64, "flags" / u32)
class Txattrcreate(NamedTuple):
    fid: int
    name: str
    attr_size: int
    flags: int

@message(33)
class Rxattrcreate(NamedTuple):
    pass

@message(40, "fid" / u32, "offset" / u64, "count" / u32)
class Treaddir(NamedTuple):
    fid: int
    offset: int
    count: int

@message(41, "data" / Data)
class Rreaddir(NamedTuple):
    data: bytes

@message(50, "fid" / u32, "datasync" / u32)
class Tfsync(NamedTuple):
    fid: int
    datasync: int

@message(51)
class Rfsync(NamedTuple):
    pass

@message(52, "fid" / u32, "type" / u8, "flags" / u32, "start" / u64, "length" / u64,
         "proc_id" / u32, "client_id" / String)
class Tlock(NamedTuple):
    fid: int
    type: int
    flags: int
    start: int
    length: int
    proc_id: int
    client_id: str

@message(53, "status" / u8)
class Rlock(NamedTuple):
    status: int

@message(54, "fid" / u32, "type" / u8, "start" / u64, "length" / u64, "proc_id" / u32,
         "client_id" / String)
class Tgetlock(NamedTuple):
    fid: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str

@message(55, "type" / u8, "start" / u64, "length" / u64, "proc_id" / u32, "client_id" / String)
class Rgetlock(NamedTuple):
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str

@message(70, "dfid" / u32, "fid" / u32, "name" / String)
class Tlink(NamedTuple):
    dfid: int
    fid: int
    name: str

@message(71)
class Rlink(NamedTuple):
    pass

@message(72, "dfid" / u32, "name" / String, "mode" / u32, "gid" / u32)
class Tmkdir(NamedTuple):
    dfid: int
    name: str
    mode: int
    gid: int

@message(73, "qid" / QidFormat)
class Rmkdir(NamedTuple):
    qid: Qid

@message(74, "olddirfid" / u32, "oldname" / String, "newdirfid" / u32, "newname" / String)
class Trenameat(NamedTuple):
    olddirfid: int
    oldname: str
    newdirfid: int
    newname: str

@message(75)
class Rrenameat(NamedTuple):
    pass

@message(76, "dirfid" / u32, "name" / String, "flags" / u32)
class Tunlinkat(NamedTuple):
    dirfid: int
    name: str
    flags: int

@message(77)
class Runlinkat(NamedTuple):
    pass

@message(100, "msize" / u32, "version" / String)
class Tversion(NamedTuple):
    msize: int
    version: str

@message(101, "msize" / u32, "version" / String)
class Rversion(NamedTuple):
    msize: int
    version: str

@message(102, "afid" / u32, "uname" / String, "aname" / String, "n_uname" / u32)
class Tauth(NamedTuple):
    afid: int
    uname: str
    aname: str
    n_uname: int

@message(103, "aqid" / QidFormat)
class Rauth(NamedTuple):
    aqid: Qid

@message(104, "fid" / u32, "afid" / u32, "uname" / String, "aname" / String, "n_uname" / u32)
class Tattach(NamedTuple):
    fid: int
    afid: int
    uname: str
    aname: str
    n_uname: int

@message(105, "qid" / QidFormat)
class Rattach(NamedTuple):
    qid: Qid

@message(108, "oldtag" / u16)
class Tflush(NamedTuple):
    oldtag: int

@message(109)
class Rflush(NamedTuple):
    pass

@message(110, "fid" / u32, "newfid" / u32, "wnames" / cs.PrefixedArray(u16, String))
class Twalk(NamedTuple):
    fid: int
    newfid: int
    wnames: list[str]

@message(111, "wqids" / cs.PrefixedArray(u16, QidFormat))
class Rwalk(NamedTuple):
    wqids: list[Qid]

@message(116, "fid" / u32, "offset" / u64, "count" / u32)
class Tread(NamedTuple):
    fid: int
    offset: int
    count: int

@message(117, "data" / Data)
class Rread(NamedTuple):
    data: bytes

@message(118, "fid" / u32, "offset" / u64, "data" / Data)
class Twrite(NamedTuple):
    fid: int
    offset: int
    data: bytes

@message(119, "count" / u32)
class Rwrite(NamedTuple):
    count: int

@message(120, "fid" / u32)
class Tclunk(NamedTuple):
    fid: int

@message(121)
class Rclunk(NamedTuple):
    pass

@message(122, "fid" / u32)
class Tremove(NamedTuple):
    fid: int

@message(123)
class Rremove(NamedTuple):
    pass

# fmt: on

NAMES: dict[int, str] = {code: spec.cls.__name__ for code, spec in BY_TYPE.items()}


# --- encode / decode -------------------------------------------------------------------


def encode(msg: Any, tag: int) -> bytes:
    """Encode a whole frame (size, type, tag, body) for *msg*."""
    spec = msg.SPEC
    body = spec.fmt.build(msg._asdict()) if msg._fields else b""
    return HEADER.pack(HEADER_SIZE + len(body), msg.TYPE, tag) + body


def decode_header(frame: bytes | memoryview) -> tuple[int, int, int]:
    """``(size, type, tag)`` of a frame; raises ProtocolError if it is too short."""
    if len(frame) < HEADER_SIZE:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than a header")
    return HEADER.unpack_from(frame)


def decode_body(msgtype: int, body: bytes | memoryview, tag: int | None = None,
                table: dict[int, MessageSpec] = BY_TYPE) -> Any:
    """Decode the body of a message of *msgtype* (as *table*'s dialect has it);
    ProtocolError on any defect.

    Uses the plain-struct plan; :func:`decode_body_construct` is the reference.
    """
    spec = table.get(msgtype)
    if spec is None:
        raise ProtocolError(f"unknown message type {msgtype}", tag, msgtype)
    cls = spec.cls
    try:
        return cls(*_decode_plan(cls.PLAN, body))
    except _Short:
        raise ProtocolError(f"malformed {cls.__name__}: truncated", tag, msgtype) from None
    except ValueError as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {exc}", tag, msgtype) from None


def decode_body_construct(msgtype: int, body: bytes | memoryview, tag: int | None = None,
                          table: dict[int, MessageSpec] = BY_TYPE) -> Any:
    """:func:`decode_body` through construct's compiled parser (reference, benchmarks)."""
    spec = table.get(msgtype)
    if spec is None:
        raise ProtocolError(f"unknown message type {msgtype}", tag, msgtype)
    try:
        values = spec.fmt.parse(body)
    except (cs.ConstructError, struct.error, UnicodeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"malformed {spec.cls.__name__}: {str(exc).splitlines()[-1]}",
                            tag, msgtype) from None
    return spec.cls(*[values[name] for name in spec.cls._fields])


def decode(frame: bytes | memoryview, msize: int | None = None,
           table: dict[int, MessageSpec] = BY_TYPE) -> tuple[int, Any]:
    """Decode a complete frame into ``(tag, message)``; a frame larger than the
    negotiated *msize* (when given) is a ProtocolError too."""
    size, msgtype, tag = decode_header(frame)
    if msize is not None and size > msize:
        raise ProtocolError(f"size field {size} exceeds msize {msize}", tag, msgtype)
    if size != len(frame):
        raise ProtocolError(f"size field {size} != frame length {len(frame)}", tag, msgtype)
    return tag, decode_body(msgtype, memoryview(frame)[HEADER_SIZE:], tag, table)


# --- fast paths for the hot fixed-layout messages ------------------------------------------

#: Tread / Treaddir body: fid, offset, count.
FAST_FID_OFFSET_COUNT = struct.Struct("<IQI")
#: Twrite body header: fid, offset, count (data follows).
FAST_TWRITE_HEAD = struct.Struct("<IQI")
FAST_RREAD_HEAD = struct.Struct("<IBHI")  # size, type, tag, count
FAST_RGETATTR = struct.Struct("<IBHQBIQIIIQQQQQQQQQQQQQQQ")
FAST_U32_REPLY = struct.Struct("<IBHI")  # Rlerror, Rwrite
FAST_EMPTY_REPLY = struct.Struct("<IBH")
FAST_DIRENT_HEAD = struct.Struct("<BIQQBH")  # qid(type,version,path), offset, type, namelen


def encode_io_header(msgtype: int, tag: int, count: int) -> bytes:
    """The 11-byte head of an Rread/Rreaddir whose payload of *count* bytes follows."""
    return FAST_RREAD_HEAD.pack(IOHDRSZ_REPLY + count, msgtype, tag, count)


def encode_rread_header(tag: int, count: int) -> bytes:
    return encode_io_header(Rread.TYPE, tag, count)


def encode_rlerror(tag: int, ecode: int) -> bytes:
    return FAST_U32_REPLY.pack(11, Rlerror.TYPE, tag, ecode)


def encode_dirent(qid: Qid, offset: int, dtype: int, name: bytes) -> bytes:
    """One Rreaddir entry: qid[13] offset[8] type[1] name[s]."""
    return FAST_DIRENT_HEAD.pack(qid[0], qid[1], qid[2], offset, dtype, len(name)) + name


def dirent_size(name: bytes) -> int:
    return FAST_DIRENT_HEAD.size + len(name)


def encode_dirents(entries: Iterable[tuple[Qid, int, int, bytes]], count: int) -> tuple[bytes, int]:
    """As many ``(qid, offset, type, name)`` entries as fit in *count* bytes,
    encoded back to back: ``(data, number of entries used)``."""
    pack, head = FAST_DIRENT_HEAD.pack, FAST_DIRENT_HEAD.size
    parts: list[bytes] = []
    used = n = 0
    for qid, offset, dtype, name in entries:
        used += head + len(name)
        if used > count:
            break
        parts.append(pack(qid[0], qid[1], qid[2], offset, dtype, len(name)))
        parts.append(name)
        n += 1
    return b"".join(parts), n


def decode_dirents(data: bytes) -> list[tuple[Qid, int, int, str]]:
    """Split Rreaddir data into ``(qid, offset, type, name)`` entries (client side)."""
    out = []
    pos = 0
    while pos < len(data):
        if pos + FAST_DIRENT_HEAD.size > len(data):
            raise ProtocolError("truncated directory entry")
        qtype, qver, qpath, off, dtype, nlen = FAST_DIRENT_HEAD.unpack_from(data, pos)
        pos += FAST_DIRENT_HEAD.size
        if pos + nlen > len(data):
            raise ProtocolError("truncated directory entry name")
        out.append((Qid(qtype, qver, qpath), off, dtype, os.fsdecode(bytes(data[pos:pos + nlen]))))
        pos += nlen
    return out


def encode_fast(msg: Any, tag: int) -> bytes:
    """Encode any message with :mod:`struct` (the hot replies by hand, the rest by plan)."""
    t = msg.TYPE
    if t == Rgetattr.TYPE:
        q = msg.qid
        return FAST_RGETATTR.pack(FAST_RGETATTR.size, t, tag, msg.valid, q[0], q[1], q[2], *msg[2:])
    if t in (Rlerror.TYPE, Rwrite.TYPE):
        return FAST_U32_REPLY.pack(11, t, tag, msg[0])
    if not msg._fields:
        return FAST_EMPTY_REPLY.pack(7, t, tag)
    body = _encode_plan(msg.PLAN, msg)
    return HEADER.pack(HEADER_SIZE + len(body), t, tag) + body


# --- dialects ------------------------------------------------------------------------------


class MessageSet(NamedTuple):
    """One dialect's view of the wire: its version string, which class each
    type code decodes to, and how it reports an errno."""

    version: str
    table: dict[int, MessageSpec]
    #: ``(tag, errno) -> frame``: Rlerror in .L, Rerror in 9P2000(.u).
    encode_error: Any

    def decode_body(self, msgtype: int, body: bytes | memoryview, tag: int | None = None) -> Any:
        return decode_body(msgtype, body, tag, self.table)

    def decode(self, frame: bytes | memoryview, msize: int | None = None) -> tuple[int, Any]:
        return decode(frame, msize, self.table)


DOTL = MessageSet(VERSION_9P2000L, BY_TYPE, encode_rlerror)
