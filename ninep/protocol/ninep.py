"""Sans-IO codec for 9P2000.L: bytes <-> message tuples, in both directions.

Every message is a :class:`Message`: a class statement with its type code and
fields annotated with wire types (``class Tclunk(Message, code=120): fid:
U32``), which :mod:`ninep.protocol.codec` turns into a ``namedtuple`` with a
struct plan (``LAYOUT``) and a compiled ``construct`` reference format
(``SPEC.fmt``).  The server needs T-decode and R-encode; the test client needs
the reverse; both use the same classes.  A class carries its own layout, so
encoding needs no table; a :class:`MessageSet` (one per dialect: this
module's :data:`DOTL`, and 9P2000.u / 9P2000 in :mod:`ninep.protocol.dotu`)
says which class a type code decodes to.

A frame is ``size[4] type[1] tag[2] body``.  :func:`decode` never raises
anything but :class:`ProtocolError` for bad input: a wrong size, truncation,
trailing bytes, a bad string length or an unknown type.

:func:`decode_body` and :func:`encode_fast` use the struct plan;
:func:`encode` and :func:`decode_body_construct` the construct reference (the
hypothesis tests check that both agree).  The hottest fixed-layout messages
also have hand-written :mod:`struct` paths (``FAST_*``); ``bench/`` measures
them all so the choice is made on data.
"""

from __future__ import annotations

import os
import struct
import builtins
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NamedTuple, Self

import construct as cs

from . import codec
from .codec import U8, U16, U32, U64, Bytes32, Str

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


u8, u16, u32, u64 = cs.Int8ul, cs.Int16ul, cs.Int32ul, cs.Int64ul
QidFormat = cs.ExprAdapter(
    cs.Struct("type" / u8, "version" / u32, "path" / u64),
    lambda obj, ctx: Qid(obj.type, obj.version, obj.path),
    lambda obj, ctx: {"type": obj[0], "version": obj[1], "path": obj[2]},
)
QID = struct.Struct("<BIQ")
QID_WIRE = codec.record(Qid, QID.format, QidFormat)
#: The ``construct`` references of a 9P string and of ``count[4] data[count]``.
String = codec.STRING.subcon
Data = codec.BYTES32.subcon

#: The wire types of 9P fields beyond the integers, strings and data of :mod:`.codec`.
QidField = Annotated[Qid, QID_WIRE]
QidList = Annotated[list[Qid], codec.array(QID_WIRE)]
StrList = Annotated[list[str], codec.array(codec.STRING)]


# --- message registry -------------------------------------------------------------------


class MessageSpec(NamedTuple):
    type: int
    cls: builtins.type[Message]
    fmt: Any  # compiled construct


BY_TYPE: dict[int, MessageSpec] = {}


class Message(metaclass=codec.TupleMessageMeta):
    """Base of every 9P message, in every dialect.

    A subclass declared with ``code=`` is the message of that type code: a
    ``namedtuple`` of its annotated fields, added to *table* (the dialect
    table it decodes from; 9P2000.L's by default, ``None``: the caller builds
    its tables itself).  Its class attributes: ``TYPE``, ``LAYOUT`` (the
    struct plan) and ``SPEC`` (type code, class and the compiled ``construct``
    reference format).
    """

    __slots__ = ()
    TYPE: ClassVar[int]
    SPEC: ClassVar[MessageSpec]
    LAYOUT: ClassVar[codec.Layout]

    if TYPE_CHECKING:
        # The tuple and namedtuple API, from the namedtuple base each message
        # gets.  Declared rather than inherited from ``tuple`` so that fields
        # may be named as 9P names them (``count``, shadowing ``tuple.count``).
        _fields: ClassVar[tuple[str, ...]]

        def __getitem__(self, index: Any) -> Any: ...

        def __iter__(self) -> Iterator[Any]: ...

        def __len__(self) -> int: ...

        def _asdict(self) -> dict[str, Any]: ...

        def _replace(self, **changes: Any) -> Self: ...

        @classmethod
        def _make(cls, iterable: Iterable[Any]) -> Self: ...

    def __init_subclass__(cls, code: int, table: dict[int, MessageSpec] | None = BY_TYPE,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.TYPE = code
        cls.SPEC = MessageSpec(code, cls, cls.LAYOUT.construct)
        if table is not None:
            table[code] = cls.SPEC


# Each class below mirrors the 9P2000.L message of the same name.
class Rlerror(Message, code=7):
    ecode: U32


class Tstatfs(Message, code=8):
    fid: U32


class Rstatfs(Message, code=9):
    type: U32
    bsize: U32
    blocks: U64
    bfree: U64
    bavail: U64
    files: U64
    ffree: U64
    fsid: U64
    namelen: U32


class Tlopen(Message, code=12):
    fid: U32
    flags: U32


class Rlopen(Message, code=13):
    qid: QidField
    iounit: U32


class Tlcreate(Message, code=14):
    fid: U32
    name: Str
    flags: U32
    mode: U32
    gid: U32


class Rlcreate(Message, code=15):
    qid: QidField
    iounit: U32


class Tsymlink(Message, code=16):
    fid: U32
    name: Str
    symtgt: Str
    gid: U32


class Rsymlink(Message, code=17):
    qid: QidField


class Tmknod(Message, code=18):
    dfid: U32
    name: Str
    mode: U32
    major: U32
    minor: U32
    gid: U32


class Rmknod(Message, code=19):
    qid: QidField


class Trename(Message, code=20):
    fid: U32
    dfid: U32
    name: Str


class Rrename(Message, code=21):
    pass


class Treadlink(Message, code=22):
    fid: U32


class Rreadlink(Message, code=23):
    target: Str


class Tgetattr(Message, code=24):
    fid: U32
    request_mask: U64


class Rgetattr(Message, code=25):
    valid: U64
    qid: QidField
    mode: U32
    uid: U32
    gid: U32
    nlink: U64
    rdev: U64
    size: U64
    blksize: U64
    blocks: U64
    atime_sec: U64
    atime_nsec: U64
    mtime_sec: U64
    mtime_nsec: U64
    ctime_sec: U64
    ctime_nsec: U64
    btime_sec: U64
    btime_nsec: U64
    gen: U64
    data_version: U64


class Tsetattr(Message, code=26):
    fid: U32
    valid: U32
    mode: U32
    uid: U32
    gid: U32
    size: U64
    atime_sec: U64
    atime_nsec: U64
    mtime_sec: U64
    mtime_nsec: U64


class Rsetattr(Message, code=27):
    pass


class Txattrwalk(Message, code=30):
    fid: U32
    newfid: U32
    name: Str


class Rxattrwalk(Message, code=31):
    size: U64


class Txattrcreate(Message, code=32):
    fid: U32
    name: Str
    attr_size: U64
    flags: U32


class Rxattrcreate(Message, code=33):
    pass


class Treaddir(Message, code=40):
    fid: U32
    offset: U64
    count: U32


class Rreaddir(Message, code=41):
    data: Bytes32


class Tfsync(Message, code=50):
    fid: U32
    datasync: U32


class Rfsync(Message, code=51):
    pass


class Tlock(Message, code=52):
    fid: U32
    type: U8
    flags: U32
    start: U64
    length: U64
    proc_id: U32
    client_id: Str


class Rlock(Message, code=53):
    status: U8


class Tgetlock(Message, code=54):
    fid: U32
    type: U8
    start: U64
    length: U64
    proc_id: U32
    client_id: Str


class Rgetlock(Message, code=55):
    type: U8
    start: U64
    length: U64
    proc_id: U32
    client_id: Str


class Tlink(Message, code=70):
    dfid: U32
    fid: U32
    name: Str


class Rlink(Message, code=71):
    pass


class Tmkdir(Message, code=72):
    dfid: U32
    name: Str
    mode: U32
    gid: U32


class Rmkdir(Message, code=73):
    qid: QidField


class Trenameat(Message, code=74):
    olddirfid: U32
    oldname: Str
    newdirfid: U32
    newname: Str


class Rrenameat(Message, code=75):
    pass


class Tunlinkat(Message, code=76):
    dirfid: U32
    name: Str
    flags: U32


class Runlinkat(Message, code=77):
    pass


class Tversion(Message, code=100):
    msize: U32
    version: Str


class Rversion(Message, code=101):
    msize: U32
    version: Str


class Tauth(Message, code=102):
    afid: U32
    uname: Str
    aname: Str
    n_uname: U32


class Rauth(Message, code=103):
    aqid: QidField


class Tattach(Message, code=104):
    fid: U32
    afid: U32
    uname: Str
    aname: Str
    n_uname: U32


class Rattach(Message, code=105):
    qid: QidField


class Tflush(Message, code=108):
    oldtag: U16


class Rflush(Message, code=109):
    pass


class Twalk(Message, code=110):
    fid: U32
    newfid: U32
    wnames: StrList


class Rwalk(Message, code=111):
    wqids: QidList


class Tread(Message, code=116):
    fid: U32
    offset: U64
    count: U32


class Rread(Message, code=117):
    data: Bytes32


class Twrite(Message, code=118):
    fid: U32
    offset: U64
    data: Bytes32


class Rwrite(Message, code=119):
    count: U32


class Tclunk(Message, code=120):
    fid: U32


class Rclunk(Message, code=121):
    pass


class Tremove(Message, code=122):
    fid: U32


class Rremove(Message, code=123):
    pass


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
        return _tuple_new(cls, cls.LAYOUT.decode(body))
    except codec.Short:
        raise ProtocolError(f"malformed {cls.__name__}: truncated", tag, msgtype) from None
    except ValueError as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {exc}", tag, msgtype) from None


#: Makes a message from its decoded values without the per-field ``__new__``
#: (the layout yields exactly one value per field).
_tuple_new: Callable[[type, Iterable[Any]], Any] = tuple.__new__


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
    body = msg.LAYOUT.encode(msg)
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
