"""The back-end contract: what the 9P dispatcher may ask of a file system.

A back end works on *nodes*: opaque per-fid objects it hands out from
:meth:`Backend.attach` and :meth:`Backend.walk`.  A node belongs to exactly one
fid, so a back end may keep per-fid state (an open fd, locks) in it.  The
dispatcher never looks inside a node.

Every method raises ``OSError`` with an errno on failure; the dispatcher turns
that into Rlerror and nothing else.  Names passed in are single components
that the dispatcher has already checked (not empty, no ``/`` or NUL, not
``.``/``..`` except in :meth:`walk`).

Errors: each method's docstring lists the errnos the dispatcher and the
guest rely on (a host syscall's own errno passes through unchanged, so the
list is what the back end must produce *itself*, not everything it may).
Every method that changes the file system gets EROFS from the dispatcher
on a ``--readonly`` export before it is called.

Concurrency: each method has a class (:class:`Access`, after p9's
None/Read/Write/Global), declared with :func:`access` beside it and
collected in :data:`ACCESS`.  The dispatcher enforces them in one place
(``Session._call``): a back end may rely on them and needs no lock of its
own for a node's lifetime.  Calls on *different* nodes always run
concurrently.  Requests that only touch other fids' paths (a rename of a
directory above them) take no session-wide exclusion: the host's rename is
atomic, and a back end that keeps paths in its nodes re-points them itself.
"""

from __future__ import annotations

import enum
import os
import stat as _stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NamedTuple, Protocol, TypeVar

from ..protocol.ninep import QTDIR, QTFILE, QTSYMLINK, Qid


class Node(Protocol):
    """What a back end hands out per fid.  Opaque to the dispatcher, which only
    passes it back; a back end declares its own type (``Backend[LocalNode]``)."""


class FdNode(Node, Protocol):
    """A node that keeps the guest's open file as an fd once Tlopen/Tlcreate
    made it one (the local, handle and proxy back ends; what
    :class:`~ninep.backends.fdops.OpenFdOps` works on)."""

    #: The open file; None until opened, and again after clunk.
    fd: int | None
    is_dir: bool
    #: Serialises seek+getdents of an open directory (its readdir offset is shared).
    dir_lock: threading.Lock | None


NodeT = TypeVar("NodeT", bound=Node)
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


class Access(enum.Enum):
    """How a back-end call may overlap with other calls on the *same* node
    (one fid's node).  The dispatcher guarantees these; nothing stricter."""

    #: Takes no fid's node (attach makes the first one).
    NONE = "none"
    #: Uses the node and leaves the fid bound to it: any number run at once,
    #: beside an OPEN; the node's clunk waits for them all.
    READ = "read"
    #: Makes the node an open file (open, create): one at a time per node
    #: (a second is refused with EINVAL before reaching the back end), beside
    #: READs; the node's clunk waits for it, or the fd it makes would leak.
    OPEN = "open"
    #: Ends the node (clunk): runs once, after every other call on it has
    #: returned, and nothing is called on the node after it.
    FINAL = "final"


#: Back-end method name -> its :class:`Access`, filled by :func:`access`.
ACCESS: dict[str, Access] = {}

_F = TypeVar("_F", bound=Callable[..., object])


def access(kind: Access) -> Callable[[_F], _F]:
    """Declare a :class:`Backend` method's concurrency class (into :data:`ACCESS`)."""
    def declare(method: _F) -> _F:
        ACCESS[method.__name__] = kind
        return method
    return declare

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


class Backend(ABC, Generic[NodeT]):
    """A file system that a 9P session serves, on nodes of type *NodeT*.

    Every name is one component the dispatcher checked (not empty, no ``/``
    or NUL, not ``.``/``..`` outside :meth:`walk`).  Each method raises
    ``OSError`` with the errno its docstring gives for the cases it names.
    """

    #: Largest single read/write the back end handles at once (0 = no limit).
    iounit: int = 0

    @abstractmethod
    @access(Access.NONE)
    async def attach(self, uname: str, uid: int, aname: str) -> tuple[NodeT, Qid]:
        """A new node for the export root, for the host user *uid*.

        The export unreachable: the host's errno (ENOENT, EACCES, ESTALE);
        the proxy's helper gone: EIO.
        """

    @abstractmethod
    @access(Access.READ)
    async def walk(self, node: NodeT, names: list[str]) -> tuple[list[Qid], NodeT | None]:
        """Walk *names* from *node* (``..`` at the root stays there).

        Returns the qids of the names that could be walked, and a new node when
        all of them were (for an empty *names*, a clone).  Only a failure at the
        first name raises: ENOENT (no such name, or one a security model
        hides), ENOTDIR (walking on from a non-directory, symlinks included:
        none is followed), EACCES (no search permission), ENODEV (a file on
        another device under ``--multidevs forbid``).
        """

    @abstractmethod
    @access(Access.FINAL)
    async def clunk(self, node: NodeT) -> None:
        """Release the node: its fd, its locks.  Must not raise."""

    @abstractmethod
    @access(Access.READ)
    async def getattr(self, node: NodeT) -> tuple[Qid, Stat]:
        """The file's qid and guest-visible attributes (the security model's
        owner and mode).  An unopened node whose file is gone: ENOENT (ESTALE
        for a stale handle); an open one keeps answering from its fd."""

    @abstractmethod
    @access(Access.READ)
    async def setattr(self, node: NodeT, change: SetAttr) -> None:
        """Apply *change* (owner, mode, size, times; ``drop_setid`` as
        :class:`SetAttr` says).  EPERM (chown or chmod not permitted), EACCES,
        EISDIR (a size for a directory), EINVAL (a size for another
        non-regular file), EOPNOTSUPP (a mode for a symlink), ENOENT."""

    @abstractmethod
    @access(Access.OPEN)
    async def open(self, node: NodeT, flags: int) -> tuple[Qid, int]:
        """Open the node with host ``os.O_*`` flags; returns (qid, iounit).

        ELOOP (a symlink: never followed), ENXIO (a device, FIFO or socket:
        a server must not block on one), EISDIR (a directory opened for
        writing), ENOTDIR (``O_DIRECTORY`` on a non-directory), EACCES,
        ENOENT (the file is gone).  The dispatcher never opens a node twice.
        """

    @abstractmethod
    @access(Access.OPEN)
    async def create(self, node: NodeT, name: str, flags: int, mode: int,
                     cred: Credentials) -> tuple[Qid, int]:
        """Create and open *name* in directory *node*; the node becomes the new
        file (owned per *cred* and the security model).  EEXIST (*name*
        exists: ``flags`` always has ``O_EXCL`` from Tcreate, and Tlcreate
        passes the guest's), ENOTDIR, EACCES (no write permission, or a name
        the security model reserves), ENOSPC, EDQUOT."""

    @abstractmethod
    @access(Access.READ)
    async def read_into(self, node: NodeT, offset: int, views: Views) -> int:
        """Read into *views* (one preadv) at *offset*; returns the byte count
        (0 at end of file).  EBADF (not open), EISDIR (a directory)."""

    @abstractmethod
    @access(Access.READ)
    async def write_from(self, node: NodeT, offset: int, views: Views, *,
                         drop_setid: bool = False) -> int:
        """Write *views* (one pwritev) at *offset*; returns the byte count.
        With *drop_setid*, first clear set-id bits as ``SetAttr(drop_setid=True)``
        does (the writer lacks CAP_FSETID), in the same worker call.  EBADF
        (not open), ENOSPC, EDQUOT, EFBIG."""

    @abstractmethod
    @access(Access.READ)
    async def readdir(self, node: NodeT, offset: int, max_entries: int) -> list[DirEntry]:
        """Entries after cookie *offset* (0 = start), at most *max_entries*; an
        empty list at the end.  Names a security model keeps to itself are left
        out.  ENOTDIR or EBADF (not an open directory)."""

    @abstractmethod
    @access(Access.READ)
    async def statfs(self, node: NodeT) -> StatFs:
        """The file system holding the node (the export's, for the local back
        end).  Only host errors."""

    @abstractmethod
    @access(Access.READ)
    async def mkdir(self, node: NodeT, name: str, mode: int, cred: Credentials) -> Qid:
        """Make directory *name* in directory *node*.  EEXIST, ENOENT (the
        directory is gone), ENOTDIR, EACCES (no permission, or a reserved
        name), ENOSPC, EDQUOT."""

    @abstractmethod
    @access(Access.READ)
    async def symlink(self, node: NodeT, name: str, target: str, cred: Credentials) -> Qid:
        """Make symlink *name* -> *target* in directory *node* (the target is
        stored, never resolved).  As :meth:`mkdir`."""

    @abstractmethod
    @access(Access.READ)
    async def mknod(self, node: NodeT, name: str, mode: int, rdev: int,
                    cred: Credentials) -> Qid:
        """Make the special or regular file *name* (type in *mode*'s S_IFMT) in
        directory *node*.  As :meth:`mkdir`, and EPERM (a directory type, or a
        device the host will not make), EINVAL (an unknown type)."""

    @abstractmethod
    @access(Access.READ)
    async def link(self, dnode: NodeT, node: NodeT, name: str) -> None:
        """Hard-link the file of *node* as *name* in directory *dnode*.  EEXIST,
        EPERM (the export root; the dispatcher refuses directories), EXDEV
        (across file systems), ENOENT (the file is gone), EMLINK."""

    @abstractmethod
    @access(Access.READ)
    async def rename(self, node: NodeT, dnode: NodeT, name: str) -> None:
        """Trename: move the file of *node* to *name* in *dnode*; nodes below
        it keep working (a path-keeping back end re-points them).  EBUSY (the
        export root), and as :meth:`renameat`."""

    @abstractmethod
    @access(Access.READ)
    async def renameat(self, olddir: NodeT, oldname: str, newdir: NodeT, newname: str) -> None:
        """Move *oldname* in *olddir* to *newname* in *newdir*, replacing
        what is there as rename(2) does.  ENOENT, EXDEV, ENOTEMPTY or EEXIST
        (over a non-empty directory), EISDIR (a file over a directory),
        ENOTDIR (a directory over a file), EINVAL (a directory into itself),
        EACCES (a reserved name)."""

    @abstractmethod
    @access(Access.READ)
    async def unlinkat(self, dnode: NodeT, name: str, rmdir: bool) -> None:
        """Remove *name* from directory *dnode*: a directory only with *rmdir*.
        ENOENT, EISDIR (a directory without *rmdir*), ENOTDIR (*rmdir* on a
        non-directory), ENOTEMPTY, EACCES (a reserved name)."""

    @abstractmethod
    @access(Access.READ)
    async def remove(self, node: NodeT) -> None:
        """Tremove: unlink the node's file, or rmdir its directory (the
        dispatcher clunks it after, whatever the outcome).  EBUSY (the export
        root), ENOTEMPTY, ENOENT."""

    @abstractmethod
    @access(Access.READ)
    async def readlink(self, node: NodeT) -> str:
        """The target of the node's symlink.  EINVAL (not a symlink)."""

    @abstractmethod
    @access(Access.READ)
    async def fsync(self, node: NodeT, datasync: bool) -> None:
        """fsync (or fdatasync) the open file.  EBADF (not open)."""

    @abstractmethod
    @access(Access.READ)
    async def xattr_get(self, node: NodeT, name: str) -> bytes:
        """The value of extended attribute *name*.  ENODATA (none such),
        EOPNOTSUPP (a namespace or file system without xattrs), EACCES (a
        name the security model keeps for itself), E2BIG."""

    @abstractmethod
    @access(Access.READ)
    async def xattr_list(self, node: NodeT) -> bytes:
        """NUL-separated names, as listxattr(2) returns them, without those a
        security model keeps for itself.  EOPNOTSUPP."""

    @abstractmethod
    @access(Access.READ)
    async def xattr_set(self, node: NodeT, name: str, value: bytes, flags: int) -> None:
        """Set *name* to *value* (``XATTR_CREATE``/``XATTR_REPLACE`` in *flags*).
        EEXIST, ENODATA (as *flags* ask), EOPNOTSUPP, EACCES or EPERM (a
        reserved name or namespace), ENOSPC, E2BIG."""

    @abstractmethod
    @access(Access.READ)
    async def xattr_remove(self, node: NodeT, name: str) -> None:
        """Remove extended attribute *name*.  ENODATA, EOPNOTSUPP, EACCES."""

    @abstractmethod
    @access(Access.READ)
    async def lock(self, node: NodeT, ltype: int, start: int, length: int, proc_id: int,
                   client_id: str) -> int:
        """Take or release a byte-range lock of the open file without blocking;
        returns a LOCK_* status (a conflict is LOCK_BLOCKED, not an error).
        EBADF (not open), EINVAL (a range the host cannot express)."""

    @abstractmethod
    @access(Access.READ)
    async def getlock(self, node: NodeT, ltype: int, start: int, length: int, proc_id: int,
                      client_id: str) -> LockResult:
        """The first lock that would conflict with this one, or the request
        back with type F_UNLCK.  EBADF (not open), EINVAL."""

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
