"""The back-end contract: what the 9P dispatcher may ask of a file system.

A back end works on *nodes*: opaque per-fid objects it hands out from
:meth:`Backend.attach` and :meth:`Backend.walk`.  A node belongs to exactly one
fid, so a back end may keep per-fid state (an open fd, locks) in it.  The
dispatcher never looks inside a node.

Every method raises ``OSError`` with an errno on failure; the dispatcher turns
that into Rlerror and nothing else.  Names passed in are single components
that the dispatcher has already checked (not empty, no ``/`` or NUL, not
``.``/``..`` except in :meth:`walk`).

Concurrency: the dispatcher may call methods concurrently for *different*
nodes, and for the *same* node only for reads, writes (with the set-id
drop a write may ask for), getattr, readdir, fsync and locks (as a POSIX fd
allows).  It never calls anything on a node after :meth:`clunk`.
"""

from __future__ import annotations

import os
import stat as _stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..protocol.ninep import QTDIR, QTFILE, QTSYMLINK, Qid

Node = Any
Views = list[memoryview]

class RequestLoad:
    """How many 9P requests a server is handling now, over all its sessions.

    Whoever builds the server creates one and hands it to its sessions
    (``SessionConfig.load``), which keep the count, and to its back end,
    whose :class:`~ninep.backends.fdops.WorkerPool` reads it to run a call on
    the event loop itself when it belongs to the only request in flight: a
    thread hop then buys no concurrency and costs two thread wake-ups
    (bench/OPTIMISATIONS.md).
    """

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight = 0


UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


@dataclass(slots=True)
class Stat:
    """Guest-visible attributes; security models rewrite owner/mode/rdev."""

    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    btime_ns: int = 0

    @classmethod
    def from_os(cls, st: os.stat_result) -> Stat:
        return cls(st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, st.st_size,
                   st.st_blksize, st.st_blocks, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_dev, st.st_ino)


def qid_type(mode: int) -> int:
    if _stat.S_ISDIR(mode):
        return QTDIR
    if _stat.S_ISLNK(mode):
        return QTSYMLINK
    return QTFILE


def qid_version(st: Stat) -> int:
    """Changes whenever the file's data or metadata change (as QEMU derives it)."""
    return (st.mtime_ns ^ (st.size << 8)) & 0xFFFFFFFF


def setid_bits_to_clear(mode: int) -> int:
    """The set-id bits Linux clears when a user without CAP_FSETID writes to
    or truncates the file of *mode* (``file_remove_privs``): S_ISUID always,
    S_ISGID only with group execute (without it the bit marks mandatory
    locking), and only on regular files."""
    if not _stat.S_ISREG(mode):
        return 0
    bits = mode & _stat.S_ISUID
    if mode & _stat.S_ISGID and mode & _stat.S_IXGRP:
        bits |= _stat.S_ISGID
    return bits


@dataclass(slots=True)
class SetAttr:
    """What to change; ``None`` leaves a field alone.  Times are nanoseconds,
    or ``UTIME_NOW``/``UTIME_OMIT`` in the matching ``*_nsec`` sense.

    ``drop_setid`` is Linux's ATTR_KILL_SUID|ATTR_KILL_SGID: clear the bits
    :func:`setid_bits_to_clear` names, in the guest-visible mode, because a
    user without CAP_FSETID writes or truncates.  An explicit ``mode`` wins.
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: tuple[int, int] | None = None  # (sec, nsec) with nsec possibly UTIME_NOW
    mtime: tuple[int, int] | None = None
    ctime: bool = False
    drop_setid: bool = False

    def only_drops_setid(self) -> bool:
        """A write's request: nothing to change unless set-id bits are set."""
        return self == _DROP_SETID_ONLY


_DROP_SETID_ONLY = SetAttr(drop_setid=True)


class StatFs(NamedTuple):
    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid: int
    namelen: int


class DirEntry(NamedTuple):
    qid: Qid
    offset: int  # cookie of the position after this entry
    type: int  # DT_* value
    name: bytes


class LockResult(NamedTuple):
    type: int  # F_RDLCK/F_WRLCK/F_UNLCK as the 9P LOCK_TYPE_* values
    start: int
    length: int
    proc_id: int
    client_id: str


class Credentials(NamedTuple):
    """Who a create-type operation is done for (fid's attach uid, request's gid)."""

    uid: int
    gid: int


class Backend(ABC):
    """A file system that a 9P session serves."""

    #: Largest single read/write the back end handles at once (0 = no limit).
    iounit: int = 0

    @abstractmethod
    async def attach(self, uname: str, uid: int, aname: str) -> tuple[Node, Qid]:
        """A node for the export root."""

    @abstractmethod
    async def walk(self, node: Node, names: list[str]) -> tuple[list[Qid], Node | None]:
        """Walk *names* from *node* (``..`` at the root stays there).

        Returns the qids of the names that could be walked, and a new node when
        all of them were (for an empty *names*, a clone).  Raises when the first
        name fails.
        """

    @abstractmethod
    async def clunk(self, node: Node) -> None:
        """Release the node: its fd, its locks.  Must not raise."""

    @abstractmethod
    async def getattr(self, node: Node) -> tuple[Qid, Stat]: ...

    @abstractmethod
    async def setattr(self, node: Node, change: SetAttr) -> None: ...

    @abstractmethod
    async def open(self, node: Node, flags: int) -> tuple[Qid, int]:
        """Open the node with host ``os.O_*`` flags; returns (qid, iounit)."""

    @abstractmethod
    async def create(self, node: Node, name: str, flags: int, mode: int,
                     cred: Credentials) -> tuple[Qid, int]:
        """Create and open *name* in directory *node*; the node becomes the new file."""

    @abstractmethod
    async def read_into(self, node: Node, offset: int, views: Views) -> int:
        """Read into *views* (one preadv); returns the byte count."""

    @abstractmethod
    async def write_from(self, node: Node, offset: int, views: Views, *,
                         drop_setid: bool = False) -> int:
        """Write *views* (one pwritev); returns the byte count.  With
        *drop_setid*, first clear set-id bits as ``SetAttr(drop_setid=True)``
        does (the writer lacks CAP_FSETID), in the same worker call."""

    @abstractmethod
    async def readdir(self, node: Node, offset: int, max_entries: int) -> list[DirEntry]:
        """Entries after cookie *offset* (0 = start), at most *max_entries*."""

    @abstractmethod
    async def statfs(self, node: Node) -> StatFs: ...

    @abstractmethod
    async def mkdir(self, node: Node, name: str, mode: int, cred: Credentials) -> Qid: ...

    @abstractmethod
    async def symlink(self, node: Node, name: str, target: str, cred: Credentials) -> Qid: ...

    @abstractmethod
    async def mknod(self, node: Node, name: str, mode: int, rdev: int, cred: Credentials) -> Qid: ...

    @abstractmethod
    async def link(self, dnode: Node, node: Node, name: str) -> None: ...

    @abstractmethod
    async def rename(self, node: Node, dnode: Node, name: str) -> None:
        """Trename: move the file of *node* to *name* in *dnode*."""

    @abstractmethod
    async def renameat(self, olddir: Node, oldname: str, newdir: Node, newname: str) -> None: ...

    @abstractmethod
    async def unlinkat(self, dnode: Node, name: str, rmdir: bool) -> None: ...

    @abstractmethod
    async def remove(self, node: Node) -> None:
        """Tremove: unlink the node's file (the dispatcher clunks it after)."""

    @abstractmethod
    async def readlink(self, node: Node) -> str: ...

    @abstractmethod
    async def fsync(self, node: Node, datasync: bool) -> None: ...

    @abstractmethod
    async def xattr_get(self, node: Node, name: str) -> bytes: ...

    @abstractmethod
    async def xattr_list(self, node: Node) -> bytes:
        """NUL-separated names, as listxattr(2) returns them."""

    @abstractmethod
    async def xattr_set(self, node: Node, name: str, value: bytes, flags: int) -> None: ...

    @abstractmethod
    async def xattr_remove(self, node: Node, name: str) -> None: ...

    @abstractmethod
    async def lock(self, node: Node, ltype: int, start: int, length: int, proc_id: int,
                   client_id: str) -> int:
        """Take or release a byte-range lock without blocking; returns a LOCK_* status."""

    @abstractmethod
    async def getlock(self, node: Node, ltype: int, start: int, length: int, proc_id: int,
                      client_id: str) -> LockResult: ...

    def capabilities(self) -> frozenset[int]:
        """The capabilities (syscalls.CAP_*) serving needs once started; the rest are dropped."""
        return frozenset()

    async def start(self) -> None:  # noqa: B027 - most back ends have nothing to start
        """Get ready to serve, on the server's event loop: the server awaits it
        once before the first request (again, it does nothing).  Work that needs
        the loop (reaching a proxy helper) belongs here, not in the constructor."""

    async def close(self) -> None:
        """Release everything the back end holds (root fds, pools, helpers)."""


class BackendFactory(Protocol):
    def __call__(self) -> Backend: ...
