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

import dataclasses
import os
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Iterator, Union

from construct import (Bytes, Check, Compiled, Int16ul, Int32sl, Int32ul, Int64sl, Int64ul,
                       Rebuild, Struct, Terminated, len_, this)

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


# --- construct building blocks ------------------------------------------------

_HEADER = struct.Struct("<II")  # type, size

def _s(name: str) -> tuple:
    """A ``s`` field: u16 length, then that many bytes.

    Spelled as length + ``Bytes`` + ``Check`` rather than ``Prefixed`` because
    construct's compiled ``Prefixed``/``Bytes`` silently accept a short read;
    the ``Check`` turns a truncated string into an error.
    """
    ln = f"_{name}_len"
    return (ln / Rebuild(Int16ul, len_(this[name])),
            name / Bytes(this[ln]),
            Check(len_(this[name]) == this[ln]))


def _layout(*fields) -> Compiled:
    flat = []
    for f in fields:
        flat.extend(f if isinstance(f, tuple) else (f,))
    return Struct(*flat, Terminated).compile()


def _u32(name):
    return name / Int32ul


def _s32(name):
    return name / Int32sl


def _u64(name):
    return name / Int64ul


def _s64(name):
    return name / Int64sl


# --- messages --------------------------------------------------------------------

class _Message:
    """Base of every message dataclass: a layout and its QEMU format string."""

    TYPE: ClassVar[int | None]  # request type; None for replies (framed as T_SUCCESS/T_ERROR)
    FORMAT: ClassVar[str]  # QEMU's proxy_marshal format string, for reference and tests
    _LAYOUT: ClassVar[Compiled]
    _FIELDS: ClassVar[tuple[str, ...]]

    #: The layout as runs: a ``struct.Struct`` for consecutive integers, or
    #: None for one ``s`` string.  The codec works on these (construct's
    #: parse/build cost ~15 µs a message, which every round trip pays twice
    #: on each side); _LAYOUT is the same layout, kept as the specification.
    _RUNS: ClassVar[tuple[tuple[struct.Struct | None, int], ...]]

    def _payload(self) -> bytes:
        values = [getattr(self, f) for f in self._FIELDS]
        out = []
        i = 0
        try:
            for run, count in self._RUNS:
                if run is None:
                    value = values[i]
                    if not isinstance(value, (bytes, bytearray, memoryview)):
                        raise TypeError(f"{self._FIELDS[i]} must be bytes")
                    out.append(_U16.pack(len(value)))
                    out.append(bytes(value))
                else:
                    out.append(run.pack(*values[i:i + count]))
                i += count
        except (struct.error, TypeError) as e:  # out of range, wrong type, string too long
            raise ProxyProtocolError(f"cannot encode {type(self).__name__}: {e}") from None
        return b"".join(out)

    @classmethod
    def _from_payload(cls, payload: bytes):
        values: list = []
        pos = 0
        try:
            for run, _ in cls._RUNS:
                if run is None:
                    (length,) = _U16.unpack_from(payload, pos)
                    pos += 2
                    if pos + length > len(payload):
                        raise struct.error("truncated string")
                    values.append(bytes(payload[pos:pos + length]))
                    pos += length
                else:
                    values.extend(run.unpack_from(payload, pos))
                    pos += run.size
            if pos != len(payload):
                raise struct.error("trailing bytes")
        except struct.error as e:
            raise ProxyProtocolError(f"malformed {cls.__name__} payload ({len(payload)} bytes): "
                                     f"{e}") from None
        return cls(*values)


_U16 = struct.Struct("<H")
_INT_CODES = {Int16ul: "H", Int32ul: "I", Int32sl: "i", Int64ul: "Q", Int64sl: "q"}


def _runs(fields) -> tuple[tuple[struct.Struct | None, int], ...]:
    """The struct runs of a layout given as _message's *fields*."""
    runs: list[tuple[struct.Struct | None, int]] = []
    codes = ""
    for f in fields:
        if isinstance(f, tuple):  # an ``s`` field
            if codes:
                runs.append((struct.Struct("<" + codes), len(codes)))
                codes = ""
            runs.append((None, 1))
        else:
            codes += _INT_CODES[f.subcon]
    if codes:
        runs.append((struct.Struct("<" + codes), len(codes)))
    return tuple(runs)


def _message(type_: int | None, fmt: str, *fields):
    """Class decorator: attach TYPE, FORMAT, the compiled layout and its struct runs."""
    layout = _layout(*fields)

    def wrap(cls):
        cls = dataclass(frozen=True, slots=True)(cls)
        cls.TYPE = type_
        cls.FORMAT = fmt
        cls._LAYOUT = layout
        cls._RUNS = _runs(fields)
        cls._FIELDS = tuple(f.name for f in dataclasses.fields(cls))
        return cls
    return wrap


# Requests.  Field order is exactly QEMU's v9fs_request() marshal order.

@_message(T_OPEN, "sd", _s("path"), _u32("flags"))
class Open(_Message):
    path: bytes
    flags: int


@_message(T_CREATE, "sdddd", _s("path"), _u32("flags"), _u32("mode"), _u32("uid"), _u32("gid"))
class Create(_Message):
    path: bytes
    flags: int
    mode: int
    uid: int
    gid: int


@_message(T_MKNOD, "ddsdq", _u32("uid"), _u32("gid"), _s("path"), _u32("mode"), _u64("rdev"))
class Mknod(_Message):
    uid: int
    gid: int
    path: bytes
    mode: int
    rdev: int


@_message(T_MKDIR, "ddsd", _u32("uid"), _u32("gid"), _s("path"), _u32("mode"))
class Mkdir(_Message):
    uid: int
    gid: int
    path: bytes
    mode: int


@_message(T_SYMLINK, "ddss", _u32("uid"), _u32("gid"), _s("target"), _s("path"))
class Symlink(_Message):
    """Create *path* as a symlink whose content is *target* (QEMU's "oldpath")."""
    uid: int
    gid: int
    target: bytes
    path: bytes


@_message(T_LINK, "ss", _s("oldpath"), _s("newpath"))
class Link(_Message):
    oldpath: bytes
    newpath: bytes


@_message(T_LSTAT, "s", _s("path"))
class Lstat(_Message):
    path: bytes


@_message(T_READLINK, "sd", _s("path"), _u32("size"))
class Readlink(_Message):
    """*size* is the caller's buffer size; the helper returns at most size-1 bytes."""
    path: bytes
    size: int


@_message(T_STATFS, "s", _s("path"))
class Statfs(_Message):
    path: bytes


@_message(T_CHMOD, "sd", _s("path"), _u32("mode"))
class Chmod(_Message):
    path: bytes
    mode: int


@_message(T_CHOWN, "sdd", _s("path"), _u32("uid"), _u32("gid"))
class Chown(_Message):
    path: bytes
    uid: int
    gid: int


@_message(T_TRUNCATE, "sq", _s("path"), _u64("length"))
class Truncate(_Message):
    path: bytes
    length: int


@_message(T_UTIME, "sqqqq", _s("path"), _s64("atime_sec"), _s64("atime_nsec"),
          _s64("mtime_sec"), _s64("mtime_nsec"))
class Utime(_Message):
    """utimensat(path, {atime, mtime}, AT_SYMLINK_NOFOLLOW); nsec may be UTIME_NOW/UTIME_OMIT.

    Note: QEMU's 9p-proxy.c client (up to at least 7.2) marshals
    ``atime_sec, mtime_nsec, mtime_sec, mtime_nsec`` here by mistake; the
    helper reads the fields in the order below.
    """
    path: bytes
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int


@_message(T_RENAME, "ss", _s("oldpath"), _s("newpath"))
class Rename(_Message):
    oldpath: bytes
    newpath: bytes


@_message(T_REMOVE, "s", _s("path"))
class Remove(_Message):
    path: bytes


@_message(T_LGETXATTR, "dss", _u32("size"), _s("path"), _s("name"))
class Lgetxattr(_Message):
    """size 0 asks for the value's length (a Status reply); otherwise an XattrReply."""
    size: int
    path: bytes
    name: bytes


@_message(T_LLISTXATTR, "ds", _u32("size"), _s("path"))
class Llistxattr(_Message):
    """size 0 asks for the list's length (a Status reply); otherwise an XattrReply."""
    size: int
    path: bytes


@_message(T_LSETXATTR, "sssdd", _s("path"), _s("name"), _s("value"), _u32("size"), _u32("flags"))
class Lsetxattr(_Message):
    path: bytes
    name: bytes
    value: bytes
    size: int
    flags: int


@_message(T_LREMOVEXATTR, "ss", _s("path"), _s("name"))
class Lremovexattr(_Message):
    path: bytes
    name: bytes


@_message(T_GETVERSION, "s", _s("path"))
class Getversion(_Message):
    path: bytes


Request = Union[Open, Create, Mknod, Mkdir, Symlink, Link, Lstat, Readlink, Statfs, Chmod, Chown,
                Truncate, Utime, Rename, Remove, Lgetxattr, Llistxattr, Lsetxattr, Lremovexattr,
                Getversion]

#: type number -> request class
REQUEST_CLASSES: dict[int, type] = {c.TYPE: c for c in (
    Open, Create, Mknod, Mkdir, Symlink, Link, Lstat, Readlink, Statfs, Chmod, Chown, Truncate,
    Utime, Rename, Remove, Lgetxattr, Llistxattr, Lsetxattr, Lremovexattr, Getversion)}


# Replies.

@_message(None, "d", _s32("status"))
class Status(_Message):
    """A ``d`` status: ``-errno`` (sent as T_ERROR) or a value ``>= 0`` (T_SUCCESS)."""
    status: int

    @property
    def ok(self) -> bool:
        return self.status >= 0


@_message(None, "d", _s32("status"))
class FdReply(_Message):
    """The 4 unframed bytes answering T_OPEN/T_CREATE.

    ``status == V9FS_FD_VALID`` means an fd came as SCM_RIGHTS ancillary data
    with these bytes; otherwise it is ``-errno`` and no fd came.
    """
    status: int

    @property
    def has_fd(self) -> bool:
        return self.status == V9FS_FD_VALID


@_message(None, "qqqdddqqqqqqqqqq",
          _u64("st_dev"), _u64("st_ino"), _u64("st_nlink"), _u32("st_mode"), _u32("st_uid"),
          _u32("st_gid"), _u64("st_rdev"), _u64("st_size"), _u64("st_blksize"),
          _u64("st_blocks"), _s64("st_atim_sec"), _s64("st_atim_nsec"), _s64("st_mtim_sec"),
          _s64("st_mtim_nsec"), _s64("st_ctim_sec"), _s64("st_ctim_nsec"))
class ProxyStat(_Message):
    st_dev: int
    st_ino: int
    st_nlink: int
    st_mode: int
    st_uid: int
    st_gid: int
    st_rdev: int
    st_size: int
    st_blksize: int
    st_blocks: int
    st_atim_sec: int
    st_atim_nsec: int
    st_mtim_sec: int
    st_mtim_nsec: int
    st_ctim_sec: int
    st_ctim_nsec: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> "ProxyStat":
        a = divmod(st.st_atime_ns, 1_000_000_000)
        m = divmod(st.st_mtime_ns, 1_000_000_000)
        c = divmod(st.st_ctime_ns, 1_000_000_000)
        return cls(st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid,
                   st.st_rdev, st.st_size, st.st_blksize, st.st_blocks,
                   a[0], a[1], m[0], m[1], c[0], c[1])


@_message(None, "qqqqqqqqqqq",
          _u64("f_type"), _u64("f_bsize"), _u64("f_blocks"), _u64("f_bfree"), _u64("f_bavail"),
          _u64("f_files"), _u64("f_ffree"), _u64("f_fsid0"), _u64("f_fsid1"), _u64("f_namelen"),
          _u64("f_frsize"))
class ProxyStatFS(_Message):
    """statfs(2) result.  The fsid halves are C ints widened to u64 (sign-extended)."""
    f_type: int
    f_bsize: int
    f_blocks: int
    f_bfree: int
    f_bavail: int
    f_files: int
    f_ffree: int
    f_fsid0: int
    f_fsid1: int
    f_namelen: int
    f_frsize: int


@_message(None, "s", _s("target"))
class ReadlinkReply(_Message):
    target: bytes


@_message(None, "s", _s("value"))
class XattrReply(_Message):
    """Value of T_LGETXATTR, or the NUL-separated name list of T_LLISTXATTR."""
    value: bytes


@_message(None, "q", _u64("version"))
class VersionReply(_Message):
    version: int


Reply = Union[Status, FdReply, ProxyStat, ProxyStatFS, ReadlinkReply, XattrReply, VersionReply]


class ReplyKind(IntEnum):
    FD = 0        #: 4 unframed bytes (+ SCM_RIGHTS fd)
    STATUS = 1    #: frame with a ``d`` status
    RESPONSE = 2  #: T_SUCCESS frame with a typed payload, or T_ERROR with ``-errno``


_STATUS_TYPES = frozenset({T_MKNOD, T_MKDIR, T_SYMLINK, T_LINK, T_CHMOD, T_CHOWN, T_TRUNCATE,
                           T_UTIME, T_RENAME, T_REMOVE, T_LSETXATTR, T_LREMOVEXATTR})
_RESPONSE_CLASS = {T_LSTAT: ProxyStat, T_STATFS: ProxyStatFS, T_READLINK: ReadlinkReply,
                   T_GETVERSION: VersionReply, T_LGETXATTR: XattrReply, T_LLISTXATTR: XattrReply}


def reply_kind(request: Request) -> ReplyKind:
    """How the helper answers *request* (see the module docstring)."""
    t = request.TYPE
    if t in (T_OPEN, T_CREATE):
        return ReplyKind.FD
    if t in _STATUS_TYPES:
        return ReplyKind.STATUS
    if t in (T_LGETXATTR, T_LLISTXATTR) and request.size == 0:
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


class _FrameDecoder:
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

    def __iter__(self) -> Iterator:
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
        pass

    def needed(self) -> int:
        """Bytes still missing for the next message (>= 1), for exact-size blocking reads."""
        if len(self._buf) < PROXY_HDR_SZ:
            return PROXY_HDR_SZ - len(self._buf)
        _, size = _HEADER.unpack_from(self._buf)
        return max(1, PROXY_HDR_SZ + min(size, PROXY_MAX_IO_SZ) - len(self._buf))


class RequestDecoder(_FrameDecoder):
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


class ReplyDecoder(_FrameDecoder):
    """Client side: call :meth:`expect` with each request sent, feed the bytes
    received, get :data:`Reply` objects out in order.

    For T_OPEN/T_CREATE the reply is 4 unframed bytes (:class:`FdReply`); the
    I/O layer must read them with ``recvmsg`` and keep the SCM_RIGHTS fd that
    arrives with them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._expected: deque = deque()

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
