"""QEMU's virtfs proxy protocol, sans-IO.

This is the wire format spoken between QEMU's ``-fsdev proxy`` driver (the
unprivileged client) and ``virtfs-proxy-helper`` (the privileged server).  The
module knows bytes and message types only: no sockets, no files, no asyncio.
Our helper (:mod:`ninep.helper`) and our proxy back end both use it.

Framing
-------
Every request, and every reply except the one to ``T_OPEN``/``T_CREATE``, is a
frame: an 8-byte header ``{u32 type; u32 size}`` followed by ``size`` bytes of
payload.  QEMU sends the header in host byte order; we fix little-endian, which
is what every x86 and aarch64 QEMU sends.  Payload fields are ``b`` u8, ``w``
u16, ``d`` u32, ``q`` u64 and ``s`` (u16 length + bytes, no terminator).
``size`` never exceeds :data:`PROXY_MAX_IO_SZ`.

Each message is a frozen dataclass declared on the message base of
:mod:`ninep.protocol.codec`, as 9P's are: its fields' wire types (``U32``,
``S64``, ``Bytes16`` for ``s`` ...) are its layout, and give QEMU's format
string (``FORMAT``), which the tests compare with QEMU's.

Replies
-------
* ``T_OPEN``/``T_CREATE``: no frame, just 4 bytes.  They hold
  :data:`V9FS_FD_VALID` when an fd travels alongside as ``SCM_RIGHTS``
  ancillary data, or ``-errno`` when no fd is sent.  The I/O layer attaches the
  fd; this module only sees :class:`FdReply`.
* Status requests (``T_MKNOD`` … ``T_LREMOVEXATTR`` below, and
  ``T_LGETXATTR``/``T_LLISTXATTR`` asked with ``size == 0``): a ``T_SUCCESS``
  or ``T_ERROR`` frame whose payload is one ``d``, the status (``>= 0``) or
  ``-errno``.  Decoded as :class:`Status`.
* Response requests (``T_LSTAT``, ``T_STATFS``, ``T_READLINK``,
  ``T_GETVERSION``, sized ``T_LGETXATTR``/``T_LLISTXATTR``): a ``T_SUCCESS``
  frame with the typed payload (:class:`ProxyStat`, :class:`ProxyStatFS`,
  :class:`ReadlinkReply`, :class:`VersionReply`, :class:`XattrReply`), or a
  ``T_ERROR`` frame with ``-errno`` (:class:`Status`).

Decoding a reply therefore needs the request it answers.  :class:`ReplyDecoder`
keeps a FIFO of the requests sent (:meth:`ReplyDecoder.expect`), so a client may
pipeline; QEMU's helper answers strictly in order.

Errors
------
Every decoding problem (size over the limit, unknown type, truncated string,
trailing bytes, wrong payload length, unsolicited reply) raises
:class:`ProxyProtocolError` and nothing else.  Encoding an out-of-range value
raises it too.
"""

from __future__ import annotations

import operator
import os
import struct
from collections import deque
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import Any, ClassVar, Generic, Self, TypeVar

from . import codec
from .codec import S32, S64, U32, U64, Bytes16

__all__ = [
    "PROXY_HDR_SZ", "PROXY_MAX_IO_SZ", "V9FS_FD_VALID", "ProxyType",
    "T_SUCCESS", "T_ERROR", "T_OPEN", "T_CREATE", "T_MKNOD", "T_MKDIR", "T_SYMLINK", "T_LINK",
    "T_LSTAT", "T_READLINK", "T_STATFS", "T_CHMOD", "T_CHOWN", "T_TRUNCATE", "T_UTIME",
    "T_RENAME", "T_REMOVE", "T_LGETXATTR", "T_LLISTXATTR", "T_LSETXATTR", "T_LREMOVEXATTR",
    "T_GETVERSION", "UTIME_NOW", "UTIME_OMIT",
    "ProxyProtocolError",
    "Open", "Create", "Mknod", "Mkdir", "Symlink", "Link", "Lstat", "Readlink", "Statfs",
    "Chmod", "Chown", "Truncate", "Utime", "Rename", "Remove", "Lgetxattr", "Llistxattr",
    "Lsetxattr", "Lremovexattr", "Getversion", "Request", "REQUEST_CLASSES",
    "Status", "FdReply", "ProxyStat", "ProxyStatFS", "ReadlinkReply", "XattrReply",
    "VersionReply", "Reply", "ReplyKind", "reply_kind",
    "encode_request", "encode_reply", "decode_request", "decode_reply", "decode_header",
    "RequestDecoder", "ReplyDecoder",
]

PROXY_HDR_SZ = 8
PROXY_MAX_IO_SZ = 64 * 1024
#: The 4 data bytes that accompany an fd passed with SCM_RIGHTS (INT_MAX).
V9FS_FD_VALID = 0x7FFFFFFF
#: utimensat(2) special nanosecond values, passed through T_UTIME untouched.
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class ProxyType(IntEnum):
    SUCCESS = 0
    ERROR = 1
    OPEN = 2
    CREATE = 3
    MKNOD = 4
    MKDIR = 5
    SYMLINK = 6
    LINK = 7
    LSTAT = 8
    READLINK = 9
    STATFS = 10
    CHMOD = 11
    CHOWN = 12
    TRUNCATE = 13
    UTIME = 14
    RENAME = 15
    REMOVE = 16
    LGETXATTR = 17
    LLISTXATTR = 18
    LSETXATTR = 19
    LREMOVEXATTR = 20
    GETVERSION = 21


T_SUCCESS = ProxyType.SUCCESS
T_ERROR = ProxyType.ERROR
T_OPEN = ProxyType.OPEN
T_CREATE = ProxyType.CREATE
T_MKNOD = ProxyType.MKNOD
T_MKDIR = ProxyType.MKDIR
T_SYMLINK = ProxyType.SYMLINK
T_LINK = ProxyType.LINK
T_LSTAT = ProxyType.LSTAT
T_READLINK = ProxyType.READLINK
T_STATFS = ProxyType.STATFS
T_CHMOD = ProxyType.CHMOD
T_CHOWN = ProxyType.CHOWN
T_TRUNCATE = ProxyType.TRUNCATE
T_UTIME = ProxyType.UTIME
T_RENAME = ProxyType.RENAME
T_REMOVE = ProxyType.REMOVE
T_LGETXATTR = ProxyType.LGETXATTR
T_LLISTXATTR = ProxyType.LLISTXATTR
T_LSETXATTR = ProxyType.LSETXATTR
T_LREMOVEXATTR = ProxyType.LREMOVEXATTR
T_GETVERSION = ProxyType.GETVERSION


class ProxyProtocolError(ValueError):
    """The bytes are not a valid proxy-protocol message (or a value cannot be encoded)."""


_HEADER = struct.Struct("<II")  # type, size


# --- messages --------------------------------------------------------------------

#: QEMU's proxy_marshal format character of each integer wire type.
_QEMU_INT_CODES = {"B": "b", "H": "w", "I": "d", "i": "d", "Q": "q", "q": "q"}


class _Message(metaclass=codec.RecordMessageMeta):
    """Base of every message: a frozen dataclass of wire-typed fields.

    A subclass declared with ``code=`` is a message: its request type, or None
    for a reply (framed as T_SUCCESS/T_ERROR).  The field annotations give the
    layout (``LAYOUT``, :mod:`ninep.protocol.codec`) and from it QEMU's format
    string (``FORMAT``), which the tests compare with QEMU's.
    """

    __slots__ = ()
    TYPE: ClassVar[int | None]
    FORMAT: ClassVar[str]  # QEMU's proxy_marshal format string
    LAYOUT: ClassVar[codec.Layout]
    _FIELDS: ClassVar[tuple[str, ...]]
    #: The field values in order (an ``attrgetter``: faster than a comprehension).
    _VALUES: ClassVar[Callable[[Any], tuple[Any, ...]]]
    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by the dataclass each message is

    def __init_subclass__(cls, code: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "LAYOUT" not in vars(cls):  # declared without code=: a base, not a message
            return
        cls.TYPE = code
        cls._FIELDS = cls.LAYOUT.names
        get = operator.attrgetter(*cls._FIELDS)
        cls._VALUES = get if len(cls._FIELDS) > 1 else lambda msg: (get(msg),)
        cls.FORMAT = "".join("s" if wire is codec.BYTES16 else _QEMU_INT_CODES[wire.code]
                             for wire in cls.LAYOUT.wires)

    def _payload(self) -> bytes:
        try:
            return self.LAYOUT.encode(type(self)._VALUES(self))
        except (struct.error, TypeError) as e:  # out of range, wrong type, string too long
            raise ProxyProtocolError(f"cannot encode {type(self).__name__}: {e}") from None

    @classmethod
    def _from_payload(cls, payload: bytes) -> Self:
        try:
            values = cls.LAYOUT.decode(payload)
        except codec.Short:
            problem = "truncated"
        except ValueError as e:
            problem = str(e)
        else:
            return cls(*values)
        raise ProxyProtocolError(f"malformed {cls.__name__} payload ({len(payload)} bytes): "
                                 f"{problem}")


class _RequestMessage(_Message):
    """A request: framed with its own type."""

    __slots__ = ()
    TYPE: ClassVar[ProxyType]


class _ReplyMessage(_Message):
    """A reply: framed as T_SUCCESS/T_ERROR, or not at all (:class:`FdReply`)."""

    __slots__ = ()
    TYPE: ClassVar[None]


# Requests.  Field order is exactly QEMU's v9fs_request() marshal order.

class Open(_RequestMessage, code=T_OPEN):
    path: Bytes16
    flags: U32


class Create(_RequestMessage, code=T_CREATE):
    path: Bytes16
    flags: U32
    mode: U32
    uid: U32
    gid: U32


class Mknod(_RequestMessage, code=T_MKNOD):
    uid: U32
    gid: U32
    path: Bytes16
    mode: U32
    rdev: U64


class Mkdir(_RequestMessage, code=T_MKDIR):
    uid: U32
    gid: U32
    path: Bytes16
    mode: U32


class Symlink(_RequestMessage, code=T_SYMLINK):
    """Create *path* as a symlink whose content is *target* (QEMU's "oldpath")."""
    uid: U32
    gid: U32
    target: Bytes16
    path: Bytes16


class Link(_RequestMessage, code=T_LINK):
    oldpath: Bytes16
    newpath: Bytes16


class Lstat(_RequestMessage, code=T_LSTAT):
    path: Bytes16


class Readlink(_RequestMessage, code=T_READLINK):
    """*size* is the caller's buffer size; the helper returns at most size-1 bytes."""
    path: Bytes16
    size: U32


class Statfs(_RequestMessage, code=T_STATFS):
    path: Bytes16


class Chmod(_RequestMessage, code=T_CHMOD):
    path: Bytes16
    mode: U32


class Chown(_RequestMessage, code=T_CHOWN):
    path: Bytes16
    uid: U32
    gid: U32


class Truncate(_RequestMessage, code=T_TRUNCATE):
    path: Bytes16
    length: U64


class Utime(_RequestMessage, code=T_UTIME):
    """utimensat(path, {atime, mtime}, AT_SYMLINK_NOFOLLOW); nsec may be UTIME_NOW/UTIME_OMIT.

    Note: QEMU's 9p-proxy.c client (up to at least 7.2) marshals
    ``atime_sec, mtime_nsec, mtime_sec, mtime_nsec`` here by mistake; the
    helper reads the fields in the order below.
    """
    path: Bytes16
    atime_sec: S64
    atime_nsec: S64
    mtime_sec: S64
    mtime_nsec: S64


class Rename(_RequestMessage, code=T_RENAME):
    oldpath: Bytes16
    newpath: Bytes16


class Remove(_RequestMessage, code=T_REMOVE):
    path: Bytes16


class Lgetxattr(_RequestMessage, code=T_LGETXATTR):
    """size 0 asks for the value's length (a Status reply); otherwise an XattrReply."""
    size: U32
    path: Bytes16
    name: Bytes16


class Llistxattr(_RequestMessage, code=T_LLISTXATTR):
    """size 0 asks for the list's length (a Status reply); otherwise an XattrReply."""
    size: U32
    path: Bytes16


class Lsetxattr(_RequestMessage, code=T_LSETXATTR):
    path: Bytes16
    name: Bytes16
    value: Bytes16
    size: U32
    flags: U32


class Lremovexattr(_RequestMessage, code=T_LREMOVEXATTR):
    path: Bytes16
    name: Bytes16


class Getversion(_RequestMessage, code=T_GETVERSION):
    path: Bytes16


Request = (Open | Create | Mknod | Mkdir | Symlink | Link | Lstat | Readlink | Statfs | Chmod
           | Chown | Truncate | Utime | Rename | Remove | Lgetxattr | Llistxattr | Lsetxattr
           | Lremovexattr | Getversion)

#: type number -> request class
REQUEST_CLASSES: dict[int, type[Request]] = {c.TYPE: c for c in (
    Open, Create, Mknod, Mkdir, Symlink, Link, Lstat, Readlink, Statfs, Chmod, Chown, Truncate,
    Utime, Rename, Remove, Lgetxattr, Llistxattr, Lsetxattr, Lremovexattr, Getversion)}


# Replies.

class Status(_ReplyMessage, code=None):
    """A ``d`` status: ``-errno`` (sent as T_ERROR) or a value ``>= 0`` (T_SUCCESS)."""
    status: S32

    @property
    def ok(self) -> bool:
        return self.status >= 0


class FdReply(_ReplyMessage, code=None):
    """The 4 unframed bytes answering T_OPEN/T_CREATE.

    ``status == V9FS_FD_VALID`` means an fd came as SCM_RIGHTS ancillary data
    with these bytes; otherwise it is ``-errno`` and no fd came.
    """
    status: S32

    @property
    def has_fd(self) -> bool:
        return self.status == V9FS_FD_VALID


class ProxyStat(_ReplyMessage, code=None):
    st_dev: U64
    st_ino: U64
    st_nlink: U64
    st_mode: U32
    st_uid: U32
    st_gid: U32
    st_rdev: U64
    st_size: U64
    st_blksize: U64
    st_blocks: U64
    st_atim_sec: S64
    st_atim_nsec: S64
    st_mtim_sec: S64
    st_mtim_nsec: S64
    st_ctim_sec: S64
    st_ctim_nsec: S64

    @classmethod
    def from_stat(cls, st: os.stat_result) -> ProxyStat:
        a = divmod(st.st_atime_ns, 1_000_000_000)
        m = divmod(st.st_mtime_ns, 1_000_000_000)
        c = divmod(st.st_ctime_ns, 1_000_000_000)
        return cls(st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid,
                   st.st_rdev, st.st_size, st.st_blksize, st.st_blocks,
                   a[0], a[1], m[0], m[1], c[0], c[1])


class ProxyStatFS(_ReplyMessage, code=None):
    """statfs(2) result.  The fsid halves are C ints widened to u64 (sign-extended)."""
    f_type: U64
    f_bsize: U64
    f_blocks: U64
    f_bfree: U64
    f_bavail: U64
    f_files: U64
    f_ffree: U64
    f_fsid0: U64
    f_fsid1: U64
    f_namelen: U64
    f_frsize: U64


class ReadlinkReply(_ReplyMessage, code=None):
    target: Bytes16


class XattrReply(_ReplyMessage, code=None):
    """Value of T_LGETXATTR, or the NUL-separated name list of T_LLISTXATTR."""
    value: Bytes16


class VersionReply(_ReplyMessage, code=None):
    version: U64


Reply = Status | FdReply | ProxyStat | ProxyStatFS | ReadlinkReply | XattrReply | VersionReply


class ReplyKind(IntEnum):
    FD = 0        #: 4 unframed bytes (+ SCM_RIGHTS fd)
    STATUS = 1    #: frame with a ``d`` status
    RESPONSE = 2  #: T_SUCCESS frame with a typed payload, or T_ERROR with ``-errno``


_STATUS_TYPES = frozenset({T_MKNOD, T_MKDIR, T_SYMLINK, T_LINK, T_CHMOD, T_CHOWN, T_TRUNCATE,
                           T_UTIME, T_RENAME, T_REMOVE, T_LSETXATTR, T_LREMOVEXATTR})
_RESPONSE_CLASS: dict[int, type[Reply]] = {
    T_LSTAT: ProxyStat, T_STATFS: ProxyStatFS, T_READLINK: ReadlinkReply,
    T_GETVERSION: VersionReply, T_LGETXATTR: XattrReply, T_LLISTXATTR: XattrReply}


def reply_kind(request: Request) -> ReplyKind:
    """How the helper answers *request* (see the module docstring)."""
    t = request.TYPE
    if t in (T_OPEN, T_CREATE):
        return ReplyKind.FD
    if t in _STATUS_TYPES:
        return ReplyKind.STATUS
    if isinstance(request, (Lgetxattr, Llistxattr)) and request.size == 0:
        return ReplyKind.STATUS
    return ReplyKind.RESPONSE


# --- encoding ----------------------------------------------------------------------

def _frame(type_: int, payload: bytes) -> bytes:
    if len(payload) > PROXY_MAX_IO_SZ:
        raise ProxyProtocolError(f"payload of {len(payload)} bytes exceeds PROXY_MAX_IO_SZ")
    return _HEADER.pack(type_, len(payload)) + payload


def encode_request(req: Request) -> bytes:
    """Header + payload for one request."""
    if type(req) not in _REQUEST_CLASS_SET:
        raise ProxyProtocolError(f"not a proxy request: {req!r}")
    return _frame(req.TYPE, req._payload())


def encode_reply(reply: Reply) -> bytes:
    """The bytes the helper writes for *reply*.

    :class:`FdReply` gives the 4 unframed bytes (send them with the fd as
    SCM_RIGHTS when ``has_fd``).  :class:`Status` is framed as T_ERROR when
    negative, else T_SUCCESS.  Every other reply is a T_SUCCESS frame.
    """
    if isinstance(reply, FdReply):
        return reply._payload()
    if isinstance(reply, Status):
        return _frame(T_ERROR if reply.status < 0 else T_SUCCESS, reply._payload())
    if isinstance(reply, _Message) and type(reply) in _REPLY_CLASS_SET:
        return _frame(T_SUCCESS, reply._payload())
    raise ProxyProtocolError(f"not a proxy reply: {reply!r}")


_REQUEST_CLASS_SET = frozenset(REQUEST_CLASSES.values())
_REPLY_CLASS_SET = frozenset({Status, FdReply, ProxyStat, ProxyStatFS, ReadlinkReply,
                              XattrReply, VersionReply})


#: What a frame decoder yields: requests (the helper's side) or replies.
_Decoded = TypeVar("_Decoded", Request, Reply)


# --- decoding ----------------------------------------------------------------------

def decode_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(type, size)`` of an 8-byte header; checks only the size limit."""
    if len(data) != PROXY_HDR_SZ:
        raise ProxyProtocolError(f"header must be {PROXY_HDR_SZ} bytes, got {len(data)}")
    type_, size = _HEADER.unpack(bytes(data))
    if size > PROXY_MAX_IO_SZ:
        raise ProxyProtocolError(f"message size {size} exceeds PROXY_MAX_IO_SZ")
    return type_, size


def decode_request(type_: int, payload: bytes) -> Request:
    """The request of type *type_* carried by *payload* (header already stripped)."""
    cls = REQUEST_CLASSES.get(type_)
    if cls is None:
        raise ProxyProtocolError(f"unknown request type {type_}")
    if len(payload) > PROXY_MAX_IO_SZ:
        raise ProxyProtocolError(f"payload of {len(payload)} bytes exceeds PROXY_MAX_IO_SZ")
    return cls._from_payload(bytes(payload))


def decode_reply(request: Request, type_: int, payload: bytes) -> Reply:
    """Interpret a reply frame answering *request* (not for T_OPEN/T_CREATE)."""
    kind = reply_kind(request)
    if kind is ReplyKind.FD:
        raise ProxyProtocolError("T_OPEN/T_CREATE replies are not framed")
    payload = bytes(payload)
    if type_ == T_ERROR:
        return Status._from_payload(payload)
    if type_ != T_SUCCESS:
        raise ProxyProtocolError(f"reply frame of unknown type {type_}")
    if kind is ReplyKind.STATUS:
        return Status._from_payload(payload)
    return _RESPONSE_CLASS[request.TYPE]._from_payload(payload)


class _FrameDecoder(Generic[_Decoded]):
    """Accumulates bytes; subclasses turn complete frames into messages."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: ProxyProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes.  Call :meth:`next_message` to drain."""
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet part of a returned message."""
        return len(self._buf)

    def __iter__(self) -> Iterator[_Decoded]:
        """Every complete message now buffered."""
        while (m := self.next_message()) is not None:
            yield m

    def _fail(self, msg: str) -> ProxyProtocolError:
        self._broken = ProxyProtocolError(msg)
        return self._broken

    def _take_frame(self) -> tuple[int, bytes] | None:
        """``(type, payload)`` of the next complete frame, or None if incomplete."""
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        if len(buf) < PROXY_HDR_SZ:
            return None
        type_, size = _HEADER.unpack_from(buf)
        if size > PROXY_MAX_IO_SZ:
            raise self._fail(f"message size {size} exceeds PROXY_MAX_IO_SZ ({PROXY_MAX_IO_SZ})")
        self._check_type(type_)
        end = PROXY_HDR_SZ + size
        if len(buf) < end:
            return None
        payload = bytes(buf[PROXY_HDR_SZ:end])
        del buf[:end]
        return type_, payload

    def _check_type(self, type_: int) -> None:  # pragma: no cover - overridden
        """Fail on a frame type this side never receives."""

    def next_message(self) -> _Decoded | None:  # pragma: no cover - overridden
        """The next complete message, or None until more bytes arrive."""
        raise NotImplementedError

    def needed(self) -> int:
        """Bytes still missing for the next message (>= 1), for exact-size blocking reads."""
        if len(self._buf) < PROXY_HDR_SZ:
            return PROXY_HDR_SZ - len(self._buf)
        _, size = _HEADER.unpack_from(self._buf)
        return max(1, PROXY_HDR_SZ + min(size, PROXY_MAX_IO_SZ) - len(self._buf))


class RequestDecoder(_FrameDecoder[Request]):
    """Helper side: bytes from the client in, :data:`Request` objects out.

    >>> d = RequestDecoder(); d.feed(encode_request(Lstat(b"a")))
    >>> d.next_message()
    Lstat(path=b'a')

    After a :class:`ProxyProtocolError` the decoder stays broken (the
    connection should be closed): every later call raises the same error.
    """

    def _check_type(self, type_: int) -> None:
        if type_ not in REQUEST_CLASSES:
            raise self._fail(f"unknown request type {type_}")

    def next_message(self) -> Request | None:
        frame = self._take_frame()
        if frame is None:
            return None
        try:
            return decode_request(*frame)
        except ProxyProtocolError as e:
            self._broken = e
            raise


class ReplyDecoder(_FrameDecoder[Reply]):
    """Client side: call :meth:`expect` with each request sent, feed the bytes
    received, get :data:`Reply` objects out in order.

    For T_OPEN/T_CREATE the reply is 4 unframed bytes (:class:`FdReply`); the
    I/O layer must read them with ``recvmsg`` and keep the SCM_RIGHTS fd that
    arrives with them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._expected: deque[Request] = deque()

    def expect(self, request: Request) -> None:
        """Register *request* as sent; its reply is the next one after those pending."""
        if type(request) not in _REQUEST_CLASS_SET:
            raise ProxyProtocolError(f"not a proxy request: {request!r}")
        self._expected.append(request)

    @property
    def outstanding(self) -> int:
        """Requests whose reply has not been returned yet."""
        return len(self._expected)

    def _check_type(self, type_: int) -> None:
        if type_ not in (T_SUCCESS, T_ERROR):
            raise self._fail(f"reply frame of unknown type {type_}")

    def needed(self) -> int:
        if self._expected and reply_kind(self._expected[0]) is ReplyKind.FD:
            return max(1, 4 - len(self._buf))
        return super().needed()

    def next_message(self) -> Reply | None:
        if self._broken is not None:
            raise self._broken
        if not self._expected:
            if self._buf:
                raise self._fail(f"{len(self._buf)} bytes received with no request outstanding")
            return None
        req = self._expected[0]
        if reply_kind(req) is ReplyKind.FD:
            if len(self._buf) < 4:
                return None
            raw = bytes(self._buf[:4])
            del self._buf[:4]
            self._expected.popleft()
            return FdReply._from_payload(raw)
        frame = self._take_frame()
        if frame is None:
            return None
        self._expected.popleft()
        try:
            return decode_reply(req, *frame)
        except ProxyProtocolError as e:
            self._broken = e
            raise
