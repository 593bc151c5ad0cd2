"""Host operations on file descriptors, shared by the back ends that serve host
files through fds (local, handle, proxy).

Each function acts on an fd that its caller has already confined: either a
file the guest opened, or a *pinned* inode (an ``O_PATH|O_NOFOLLOW`` fd).
Calls that have no fd form go through ``/proc/self/fd/N`` and *follow* that
magic link: it lands on the pinned inode itself (a symlink stays the symlink,
never its target), so no guest-built path string ever reaches the host.
Nothing here knows how a back end found the fd, which is what lets a
path-based and a handle-based back end share it.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import queue
import stat as st_
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .. import syscalls
from ..fdnames import fd_path
from ..protocol.ninep import (LOCK_BLOCKED, LOCK_SUCCESS, LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK,
                              LOCK_TYPE_WRLCK, QTDIR, QTFILE, QTSYMLINK, Qid)
from .base import (UTIME_OMIT, DirEntry, LockResult, RequestLoad, SetAttr, Stat, StatFs,
                   setid_bits_to_clear)
from .qid import QidMapper

T = TypeVar("T")

#: f_type that Tstatfs reports (V9FS_MAGIC), as QEMU does.
V9FS_MAGIC = 0x01021997


def _settle(fut: asyncio.Future, ok: bool, value: Any) -> None:
    """Complete *fut* in its loop's thread, unless the request was cancelled meanwhile."""
    if not fut.done():
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


#: File systems whose calls finish without the network or a user-space server,
#: as /proc/self/mountinfo names them.  Only on these may a call run on the
#: event loop: on NFS, CIFS or FUSE one can hang for as long as the server, and
#: procfs has files whose reads block.
LOCAL_FS_NAMES = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "overlay", "zfs",
    "bcachefs", "jfs", "reiserfs", "nilfs2", "vfat", "msdos", "exfat",
})


def _mounts(mountinfo: str) -> list[tuple[str, str]]:
    """``(mount point, file system type)`` of every mount, in mountinfo's order."""
    found = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            parts = fields.split()
            if len(parts) < 5 or not rest:
                continue
            point = parts[4].replace("\\040", " ").replace("\\011", "\t") \
                .replace("\\012", "\n").replace("\\134", "\\")
            found.append((point, rest.split()[0]))
    return found


def mounts_below(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """``(mount point, file system type)`` of every mount strictly below *path*."""
    real = os.path.realpath(path).rstrip("/")
    return [(point, fstype) for point, fstype in _mounts(mountinfo)
            if point.startswith(real + "/") and point.rstrip("/") != real]


def export_is_local(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """May the back end run calls on the event loop (``--inline auto``)?  Only if
    the file system holding the export and every one mounted inside it are local
    ones; if mountinfo cannot be read, no."""
    real = os.path.realpath(path).rstrip("/")
    try:
        mounts = _mounts(mountinfo)
        below = mounts_below(path, mountinfo)
    except OSError:
        return False
    # The export's own: the longest mount point above it (the last one, if stacked).
    holders = [(len(p), i) for i, (p, _) in enumerate(mounts)
               if real == p.rstrip("/") or real.startswith(p.rstrip("/") + "/")]
    return bool(holders) and all(
        fstype in LOCAL_FS_NAMES for fstype in [mounts[max(holders)[1]][1], *(t for _, t in below)])


class WorkerPool:
    """The threads a back end runs its blocking host calls in.

    Leaner than ``run_in_executor`` (bench/OPTIMISATIONS.md): one queue item
    and one asyncio future per call, no concurrent.futures.Future (with its
    Condition and RLock) chained to it.  As in ThreadPoolExecutor, a thread
    starts only when no idle one can take the call, so a lone guest's
    requests keep landing on the same warm thread.

    With *inline_when_alone*, a call made for the only request in flight on
    the server (*load*, the :class:`~ninep.backends.base.RequestLoad` its
    sessions count in) runs right here on the event loop: nothing else is
    waiting for the loop, and the hop's two thread wake-ups are most of such
    a request's cost.  A back end asks for it only on a local file system
    (:func:`export_is_local`), where a call blocks for a disk access at worst.
    Without a *load* nothing tells the pool that a call is alone, so every
    call takes the hop.
    """

    def __init__(self, threads: int, name: str, *, load: RequestLoad | None = None,
                 inline_when_alone: bool = False) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._max = threads
        self._name = name
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._closed = False
        self.load = load
        self.inline_when_alone = inline_when_alone

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("worker pool is shut down")
        if self.inline_when_alone and self.load is not None and self.load.in_flight <= 1:
            return fn(*args)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((loop, fut, fn, args))
        if not self._idle.acquire(blocking=False) and len(self._threads) < self._max:
            self._spawn()
        try:
            return await fut
        finally:
            # A failed call's traceback holds this frame, and so fut, and so the
            # exception: a cycle that would keep the call's views of guest memory
            # alive until the cyclic GC runs.
            del fut

    def _spawn(self) -> None:
        with self._lock:
            if len(self._threads) >= self._max:
                return
            t = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}",
                                 daemon=True)
            self._threads.append(t)
        t.start()

    def _work(self) -> None:
        get, idle = self._queue.get, self._idle
        while (item := get()) is not None:
            loop, fut, fn, args = item
            try:
                result = (True, fn(*args))
            except BaseException as exc:  # handed to the awaiting coroutine
                result = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, fut, *result)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            del item, fut, fn, args, result  # no view into guest memory may outlive the call
            idle.release()

    def shutdown(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()


# --- pinning and reopening --------------------------------------------------------------

def open_nofollow(dirfd: int, name: str, flags: int = os.O_PATH) -> int:
    """Open entry *name* of *dirfd* itself: a final symlink is not followed."""
    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)


def with_pinned(dirfd: int, name: str, fn: Callable[[int], T]) -> T:
    """Run ``fn(pinned_fd)`` on entry *name* of *dirfd*, without following a symlink."""
    pfd = open_nofollow(dirfd, name)
    try:
        return fn(pfd)
    finally:
        os.close(pfd)


def reopen(pfd: int, flags: int) -> int:
    """Open the pinned inode *pfd* with *flags* for I/O.

    Symlinks give ELOOP and special files ENXIO, so a guest can never open a
    host device or block on a FIFO (CVE-2023-2861); a directory only opens
    read-only.  The inode cannot change under us: it is the pinned one.
    """
    mode = os.fstat(pfd).st_mode
    if st_.S_ISLNK(mode):
        raise OSError(errno.ELOOP, "is a symlink")
    if not (st_.S_ISREG(mode) or st_.S_ISDIR(mode)):
        raise OSError(errno.ENXIO, "refusing to open a special file")
    if st_.S_ISDIR(mode) and flags & os.O_ACCMODE != os.O_RDONLY:
        raise OSError(errno.EISDIR, "is a directory")
    return os.open(fd_path(pfd), (flags & ~(os.O_NOFOLLOW | os.O_CREAT)) | os.O_CLOEXEC)


# --- attributes -------------------------------------------------------------------------

def apply_setattr(change: SetAttr, *, chown: Callable[[int, int], None],
                  chmod: Callable[[int], None], truncate: Callable[[int], None],
                  utimes: Callable[[tuple[int, int], tuple[int, int]], None],
                  current_mode: Callable[[], int]) -> None:
    """Apply a Tsetattr in the order Linux's notify_change would: owner
    (which clears set-id bits) before mode, then size, then times; a bare
    "ctime" request becomes a no-op chown, which touches exactly ctime.

    ``drop_setid`` (without a mode) clears the set-id bits of
    ``current_mode()``, the guest-visible mode, through *chmod*, so every
    back end and security model keeps the result where it keeps modes.
    """
    if change.uid is not None or change.gid is not None:
        chown(-1 if change.uid is None else change.uid, -1 if change.gid is None else change.gid)
    if change.mode is not None:
        chmod(change.mode)
    elif change.drop_setid:
        mode = current_mode()
        if bits := setid_bits_to_clear(mode):
            try:
                chmod(mode & 0o7777 & ~bits)
            except PermissionError:
                # A server that may not chmod the file (none, unprivileged)
                # lacks CAP_FSETID too: the host kernel clears the bits itself.
                pass
    if change.size is not None:
        truncate(change.size)
    if change.atime is not None or change.mtime is not None:
        utimes(change.atime or (0, UTIME_OMIT), change.mtime or (0, UTIME_OMIT))
    elif change.ctime and change.uid is None and change.gid is None and change.mode is None \
            and change.size is None:
        chown(-1, -1)


def truncate(fd: int, size: int) -> None:
    """Truncate the file of *fd*: an fd open for writing directly, else (read-only
    or pinned) through a fresh write-only open.  Only regular files (as truncate(2))."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        os.ftruncate(fd, size)
        return
    mode = os.fstat(fd).st_mode
    if st_.S_ISDIR(mode):
        raise OSError(errno.EISDIR, "is a directory")
    if not st_.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file")
    wfd = os.open(fd_path(fd), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.ftruncate(wfd, size)
    finally:
        os.close(wfd)


def chown_pinned(pfd: int, uid: int, gid: int) -> None:
    """lchown of the pinned inode (a symlink itself, not its target)."""
    os.chown(fd_path(pfd), uid, gid)


def chmod_pinned(pfd: int, mode: int) -> None:
    """chmod of the pinned inode; symlinks have no mode of their own (EOPNOTSUPP)."""
    if st_.S_ISLNK(os.fstat(pfd).st_mode):
        raise OSError(errno.EOPNOTSUPP, "cannot chmod a symlink")
    os.chmod(fd_path(pfd), mode)


def utimes_pinned(pfd: int, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    """utimensat on the pinned inode itself (works on O_PATH fds and symlinks)."""
    syscalls.utimensat(pfd, "", atime, mtime, syscalls.AT_EMPTY_PATH | syscalls.AT_SYMLINK_NOFOLLOW)


def statfs(fd: int) -> StatFs:
    """Tstatfs of the file system holding *fd* (fstatvfs works on O_PATH fds)."""
    s = os.fstatvfs(fd)
    return StatFs(V9FS_MAGIC, s.f_bsize, s.f_blocks, s.f_bfree, s.f_bavail, s.f_files,
                  s.f_ffree, s.f_fsid, s.f_namemax)


def readlink_pinned(pfd: int) -> str:
    """The target of the pinned symlink; EINVAL for anything else (as readlink(2))."""
    try:
        return os.readlink("", dir_fd=pfd)
    except FileNotFoundError:
        raise OSError(errno.EINVAL, "not a symlink") from None


# --- directories --------------------------------------------------------------------------

#: d_type -> qid type (DT_DIR, DT_LNK; everything else is a plain file).
_QTYPE_OF_DT = {4: QTDIR, 10: QTSYMLINK}
#: Largest getdents64 buffer: a Treaddir of a full msize (~512 KiB) in one call.
_DIRENT_BUFFER_MAX = 1 << 20


def read_dir(fd: int, lock: threading.Lock, offset: int, max_entries: int, qids: QidMapper, *,
             stat_entry: Callable[[int, str], Stat],
             root_stat: Callable[[], Stat] | None = None) -> list[DirEntry]:
    """Up to *max_entries* entries of open directory *fd* after cookie *offset*.

    Offsets are the file system's own getdents64 cookies, so they survive
    concurrent changes.  *root_stat* is given when *fd* is the export root:
    its ``..`` then names the root itself.  Under multidevs=remap every entry
    (``.`` and ``..`` too) is stat'ed, since only that reveals its device;
    otherwise the qid comes from ``d_ino`` for free.  The buffer is sized for
    the whole request, so a large listing takes one syscall and one round trip.
    """
    with lock:
        os.lseek(fd, offset, os.SEEK_SET)
        raw = syscalls.getdents64(fd, min(_DIRENT_BUFFER_MAX, max(4096, max_entries * 32)))
    del raw[max_entries:]
    if qids.mode != "remap":
        qtype = _QTYPE_OF_DT.get
        out = [DirEntry(Qid(qtype(dtype, QTFILE), 0, ino), off, dtype, name)
               for ino, off, dtype, name in raw]
        if root_stat is not None:
            for i, entry in enumerate(out):
                if entry.name == b"..":
                    out[i] = entry._replace(qid=qids.qid(root_stat()))
                    break
        return out
    out = []
    for _ino, off, dtype, name in raw:
        try:
            st = root_stat() if name == b".." and root_stat is not None else \
                stat_entry(fd, os.fsdecode(name))
            out.append(DirEntry(qids.qid(st), off, dtype, name))
        except OSError:
            continue  # vanished meanwhile
    return out


# --- locks --------------------------------------------------------------------------------

F_OFD_GETLK = 36
F_OFD_SETLK = 37
_FLOCK = struct.Struct("hhqqi4x")  # l_type, l_whence, l_start, l_len, l_pid
_LOCK_TO_HOST = {LOCK_TYPE_RDLCK: fcntl.F_RDLCK, LOCK_TYPE_WRLCK: fcntl.F_WRLCK,
                 LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
_LOCK_FROM_HOST = {v: k for k, v in _LOCK_TO_HOST.items()}


_OFF_MAX = (1 << 63) - 1


def _flock(ltype: int, start: int, length: int) -> bytes:
    """A struct flock for 9P's unsigned range; EINVAL where off_t can't hold it."""
    if start > _OFF_MAX or length > _OFF_MAX:
        raise OSError(errno.EINVAL, "lock range out of bounds")
    return _FLOCK.pack(_LOCK_TO_HOST[ltype], os.SEEK_SET, start, length, 0)


def ofd_lock(fd: int, ltype: int, start: int, length: int) -> int:
    """Take or drop an open-file-description lock; never blocks (the client
    retries on LOCK_BLOCKED), and the lock dies with the fd."""
    req = _flock(ltype, start, length)
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, req)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return LOCK_BLOCKED
        raise
    return LOCK_SUCCESS


def ofd_getlock(fd: int, ltype: int, start: int, length: int, proc_id: int,
                client_id: str) -> LockResult:
    """Tgetlock: the first conflicting lock, or the request back as unlocked."""
    htype, _, rstart, rlen, rpid = _FLOCK.unpack(
        fcntl.fcntl(fd, F_OFD_GETLK, _flock(ltype, start, length)))
    if htype == fcntl.F_UNLCK:
        return LockResult(LOCK_TYPE_UNLCK, start, length, proc_id, client_id)
    # An OFD lock has no owning process (l_pid -1): report pid 0.
    return LockResult(_LOCK_FROM_HOST[htype], rstart, rlen, max(rpid, 0), "")


# --- a back end's open-fd methods ------------------------------------------------------------

class OpenFdOps:
    """The Backend methods that need nothing but the node's open fd.

    A back end mixes this in (before :class:`~ninep.backends.base.Backend`)
    when its nodes keep the guest's open file in ``node.fd``, it runs
    blocking calls in ``self._pool`` and tracks live nodes in ``self._nodes``.
    """

    _pool: WorkerPool
    _nodes: Any  # a WeakSet of the back end's live nodes
    qids: QidMapper

    async def clunk(self, node: Any) -> None:
        """Forget the node and close its fd, which also drops the fd's OFD locks."""
        self._nodes.discard(node)
        fd, node.fd = node.fd, None
        if fd is not None:
            os.close(fd)

    @staticmethod
    def _check_not_open(node: Any) -> None:
        """A node holds one fd: opening it again would leak the first."""
        if node.fd is not None:
            raise OSError(errno.EINVAL, "already open")

    def _adopt_open(self, node: Any, fd: int, st: Stat) -> Qid:
        """Make *fd* the node's open file (directories get the lock readdir needs)."""
        node.fd = fd
        node.is_dir = st_.S_ISDIR(st.mode)
        node.dir_lock = threading.Lock() if node.is_dir else None
        return self.qids.qid(st)

    @staticmethod
    def _fd(node: Any) -> int:
        """The node's open fd; EBADF for a fid the guest never opened."""
        if node.fd is None:
            raise OSError(errno.EBADF, "not open")
        return node.fd

    async def read_into(self, node: Any, offset: int, views: list[memoryview]) -> int:
        return await self._pool.run(os.preadv, self._fd(node), views, offset)

    async def write_from(self, node: Any, offset: int, views: list[memoryview], *,
                         drop_setid: bool = False) -> int:
        if drop_setid:  # one worker call for both: a user's every write asks for it
            return await self._pool.run(self._write_dropping_setid, node, offset, views)
        return await self._pool.run(os.pwritev, self._fd(node), views, offset)

    def _write_dropping_setid(self, node: Any, offset: int, views: list[memoryview]) -> int:
        fd = self._fd(node)
        if self._may_have_setid(fd):
            self._setattr_now(node, SetAttr(drop_setid=True))
        return os.pwritev(fd, views, offset)

    def _may_have_setid(self, fd: int) -> bool:
        """A cheap look at the open file *fd* before the full drop_setid:
        False only when it surely has no set-id bits to clear."""
        return True

    def _setattr_now(self, node: Any, change: SetAttr) -> None:
        """Backend.setattr, in the calling (worker) thread."""
        raise NotImplementedError

    async def fsync(self, node: Any, datasync: bool) -> None:
        await self._pool.run(os.fdatasync if datasync else os.fsync, self._fd(node))

    async def lock(self, node: Any, ltype: int, start: int, length: int, proc_id: int,
                   client_id: str) -> int:
        return ofd_lock(self._fd(node), ltype, start, length)

    async def getlock(self, node: Any, ltype: int, start: int, length: int, proc_id: int,
                      client_id: str) -> LockResult:
        return ofd_getlock(self._fd(node), ltype, start, length, proc_id, client_id)
