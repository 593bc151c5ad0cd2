"""Sans-IO codec for 9P2000.u and plain 9P2000, on the 9P2000.L codec's pieces.

The two older dialects share 9P2000.L's session messages (version, auth,
attach, flush, walk, read, write, clunk, remove: same type codes, same
bodies) and add Topen/Tcreate/Tstat/Twstat and Rerror.  9P2000.u extends
plain 9P2000 with numeric ids and an errno: ``n_uname`` in Tauth/Tattach, an
``errno`` in Rerror, an ``extension`` string in Tcreate, and the stat's
``extension``, ``n_uid``, ``n_gid`` and ``n_muid``.  Where the two differ,
the plain variant is the class with the ``Plain`` suffix (and :class:`Dir`
against :class:`DirU` for the stat).

A stat goes on the wire as ``size[2]`` + its fields; Rstat and Twstat wrap it
in a further ``n[2]`` (so it appears twice, as Linux and Plan 9 send it), and
a directory read returns whole stats back to back.  A stat field is the wire
type :data:`Stat` / :data:`StatU` (this module's struct codec of a stat).

The messages are declared as the .L ones are (:class:`ninep.protocol.ninep.Message`,
:mod:`ninep.protocol.codec`), with ``table=None``: :data:`DOTU` and
:data:`PLAIN` list the classes of each dialect.
"""

from __future__ import annotations

import errno as _errno
import os
import struct
from typing import Annotated, Any, NamedTuple

import construct as cs

from . import codec
from . import ninep as p
from .codec import U8, U32, Str
from .ninep import Qid, QidField, QidFormat, String, u16, u32, u64

VERSION_9P2000U = "9P2000.u"
VERSION_9P2000 = "9P2000"

# Topen / Tcreate mode
OREAD = 0x00
OWRITE = 0x01
ORDWR = 0x02
OEXEC = 0x03
OTRUNC = 0x10
OCEXEC = 0x20
ORCLOSE = 0x40
OAPPEND = 0x80  # 9P2000.u (Linux P9_OAPPEND)
OEXCL = 0x1000

# stat.mode / Tcreate perm bits above the Unix permissions
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMMOUNT = 0x10000000
DMAUTH = 0x08000000
DMTMP = 0x04000000
DMSYMLINK = 0x02000000  # the rest: 9P2000.u
DMLINK = 0x01000000
DMDEVICE = 0x00800000
DMNAMEDPIPE = 0x00200000
DMSOCKET = 0x00100000
DMSETUID = 0x00080000
DMSETGID = 0x00040000
DMSETVTX = 0x00010000

#: A Twstat field with every bit set (or an empty string) means "leave it alone".
NO_U16 = 0xFFFF
NO_U32 = 0xFFFFFFFF
NO_U64 = 0xFFFFFFFFFFFFFFFF


class Dir(NamedTuple):
    """A plain 9P2000 stat (Plan 9's ``Dir``)."""

    type: int
    dev: int
    qid: Qid
    mode: int
    atime: int
    mtime: int
    length: int
    name: str
    uid: str
    gid: str
    muid: str


class DirU(NamedTuple):
    """A 9P2000.u stat: :class:`Dir`'s fields, then the extension and numeric ids."""

    type: int
    dev: int
    qid: Qid
    mode: int
    atime: int
    mtime: int
    length: int
    name: str
    uid: str
    gid: str
    muid: str
    extension: str
    n_uid: int
    n_gid: int
    n_muid: int


#: Twstat stats that change nothing (what Linux starts from: p9stat_init).
DONT_TOUCH = DirU(NO_U16, NO_U32, Qid(0xFF, NO_U32, NO_U64), NO_U32, NO_U32, NO_U32, NO_U64,
                  "", "", "", "", "", NO_U32, NO_U32, NO_U32)
DONT_TOUCH_PLAIN = Dir(*DONT_TOUCH[:11])

_DIR_FIELDS = ("type" / u16, "dev" / u32, "qid" / QidFormat, "mode" / u32, "atime" / u32,
               "mtime" / u32, "length" / u64, "name" / String, "uid" / String, "gid" / String,
               "muid" / String)
_DIRU_FIELDS = _DIR_FIELDS + ("extension" / String, "n_uid" / u32, "n_gid" / u32,
                              "n_muid" / u32)


def _stat_format(cls: type[Dir] | type[DirU], fields: tuple[Any, ...]) -> Any:
    """size[2] + *fields*, exactly filling the size (construct reference codec)."""
    return cs.ExprAdapter(cs.Prefixed(u16, cs.Struct(*fields, cs.Terminated)),
                          lambda obj, ctx: cls(*[obj[name] for name in cls._fields]),
                          lambda obj, ctx: obj._asdict())


#: A stat with its own size[2], as a directory read returns it.
DirFormat = _stat_format(Dir, _DIR_FIELDS)
DirUFormat = _stat_format(DirU, _DIRU_FIELDS)
#: The stat of Rstat/Twstat: n[2] then the stat (whose own size is n - 2).
StatDir = cs.Prefixed(u16, DirFormat)
StatDirU = cs.Prefixed(u16, DirUFormat)

# --- the struct codec of a stat (the server's and client's path) -------------------------

#: size type dev qid[type version path] mode atime mtime length
_DIR_HEAD = struct.Struct("<HHIBIQIIIQ")
_DIRU_TAIL = struct.Struct("<III")
_U16 = struct.Struct("<H")


def encode_dir(d: Dir | DirU) -> bytes:
    """One stat with its size[2] (an entry of a directory read)."""
    q = d.qid
    strings = [os.fsencode(s) for s in d[7:11]]
    tail = b""
    if isinstance(d, DirU):
        ext = os.fsencode(d.extension)
        tail = _U16.pack(len(ext)) + ext + _DIRU_TAIL.pack(d.n_uid, d.n_gid, d.n_muid)
    body = b"".join(_U16.pack(len(s)) + s for s in strings) + tail
    size = _DIR_HEAD.size - 2 + len(body)
    return _DIR_HEAD.pack(size, d.type, d.dev, q[0], q[1], q[2], d.mode, d.atime, d.mtime,
                          d.length) + body


def decode_dir(body: codec.Buffer, pos: int, end: int, dotu: bool) -> tuple[Dir | DirU, int]:
    """The stat at *pos*; ``(stat, position after it)``.  Raises ``ValueError``
    when it is malformed (its size[2] must cover exactly its fields)."""
    if pos + _DIR_HEAD.size > end:
        raise ValueError("truncated stat")
    (size, typ, dev, qtype, qver, qpath, mode, atime, mtime,
     length) = _DIR_HEAD.unpack_from(body, pos)
    stop = pos + 2 + size
    if stop > end:
        raise ValueError("stat size runs past its message")
    at = pos + _DIR_HEAD.size
    strings = []
    for _ in range(5 if dotu else 4):
        if at + 2 > stop:
            raise ValueError("truncated stat")
        (n,) = _U16.unpack_from(body, at)
        if at + 2 + n > stop:
            raise ValueError("truncated stat")
        strings.append(os.fsdecode(bytes(body[at + 2:at + 2 + n])))
        at += 2 + n
    head = (typ, dev, Qid(qtype, qver, qpath), mode, atime, mtime, length)
    if dotu:
        if at + _DIRU_TAIL.size > stop:
            raise ValueError("truncated stat")
        result: Dir | DirU = DirU._make((*head, *strings, *_DIRU_TAIL.unpack_from(body, at)))
        at += _DIRU_TAIL.size
    else:
        result = Dir._make((*head, *strings))
    if at != stop:
        raise ValueError(f"{stop - at} bytes of stat past its fields")
    return result, stop


def decode_dirs(data: bytes, dotu: bool) -> list[Dir | DirU]:
    """Split a directory read's data into stats (client side)."""
    out = []
    pos = 0
    while pos < len(data):
        try:
            d, pos = decode_dir(data, pos, len(data), dotu)
        except ValueError as exc:
            raise p.ProtocolError(f"bad directory entry: {exc}") from None
        out.append(d)
    return out


def _stat_wire(subcon: Any, dotu: bool) -> codec.Wire:
    """n[2] + stat, as Rstat and Twstat carry it."""

    def decode(body: codec.Buffer, pos: int, end: int) -> tuple[Dir | DirU, int]:
        if pos + 2 > end:
            raise ValueError("truncated stat")
        (n,) = _U16.unpack_from(body, pos)
        if pos + 2 + n > end:
            raise ValueError("truncated stat")
        d, stop = decode_dir(body, pos + 2, pos + 2 + n, dotu)
        if stop != pos + 2 + n:
            raise ValueError("stat shorter than its n[2]")
        return d, stop

    def encode(d: Dir | DirU) -> bytes:
        raw = encode_dir(d)
        return _U16.pack(len(raw)) + raw  # struct.error past 65535 bytes, as strings

    return codec.Wire(subcon, decode=decode, encode=encode)


#: The wire types of the stat fields of Rstat/Twstat.
Stat = Annotated[Dir, _stat_wire(StatDir, False)]
StatU = Annotated[DirU, _stat_wire(StatDirU, True)]

# --- messages --------------------------------------------------------------------------------


class Rerror(p.Message, code=107, table=None):
    ename: Str
    errno: U32


class RerrorPlain(p.Message, code=107, table=None):
    ename: Str


class TauthPlain(p.Message, code=102, table=None):
    afid: U32
    uname: Str
    aname: Str


class TattachPlain(p.Message, code=104, table=None):
    fid: U32
    afid: U32
    uname: Str
    aname: Str


class Topen(p.Message, code=112, table=None):
    fid: U32
    mode: U8


class Ropen(p.Message, code=113, table=None):
    qid: QidField
    iounit: U32


class Tcreate(p.Message, code=114, table=None):
    fid: U32
    name: Str
    perm: U32
    mode: U8
    extension: Str


class TcreatePlain(p.Message, code=114, table=None):
    fid: U32
    name: Str
    perm: U32
    mode: U8


class Rcreate(p.Message, code=115, table=None):
    qid: QidField
    iounit: U32


class Tstat(p.Message, code=124, table=None):
    fid: U32


class Rstat(p.Message, code=125, table=None):
    stat: StatU


class RstatPlain(p.Message, code=125, table=None):
    stat: Stat


class Twstat(p.Message, code=126, table=None):
    fid: U32
    stat: StatU


class TwstatPlain(p.Message, code=126, table=None):
    fid: U32
    stat: Stat


class Rwstat(p.Message, code=127, table=None):
    pass


#: The messages all three dialects share, from the .L codec.
_SHARED = (p.Tversion, p.Rversion, p.Rauth, p.Rattach, p.Tflush, p.Rflush, p.Twalk, p.Rwalk,
           p.Tread, p.Rread, p.Twrite, p.Rwrite, p.Tclunk, p.Rclunk, p.Tremove, p.Rremove,
           Topen, Ropen, Rcreate, Tstat, Rwstat)
DOTU_MESSAGES = _SHARED + (p.Tauth, p.Tattach, Rerror, Tcreate, Rstat, Twstat)
PLAIN_MESSAGES = _SHARED + (TauthPlain, TattachPlain, RerrorPlain, TcreatePlain, RstatPlain,
                            TwstatPlain)


def _table(classes: tuple[type[p.Message], ...]) -> dict[int, p.MessageSpec]:
    table = {cls.TYPE: cls.SPEC for cls in classes}
    assert len(table) == len(classes), "two classes for one type code"
    return table


def encode_rerror(tag: int, ecode: int) -> bytes:
    return p.encode_fast(Rerror(os.strerror(ecode), ecode), tag)


def encode_rerror_plain(tag: int, ecode: int) -> bytes:
    return p.encode_fast(RerrorPlain(os.strerror(ecode)), tag)


DOTU = p.MessageSet(VERSION_9P2000U, _table(DOTU_MESSAGES), encode_rerror)
PLAIN = p.MessageSet(VERSION_9P2000, _table(PLAIN_MESSAGES), encode_rerror_plain)

#: strerror text -> errno, for a plain 9P2000 Rerror that carries only the text.
_ERRNO_OF_TEXT = {os.strerror(e): e for e in sorted(_errno.errorcode, reverse=True)}


def errno_of(reply: Any) -> int:
    """The errno an Rerror (either dialect) stands for; EIO for unknown text."""
    if isinstance(reply, Rerror) and reply.errno:
        return reply.errno
    return _ERRNO_OF_TEXT.get(reply.ename, _errno.EIO)
