"""The local back end: serves a host directory.

Confinement: a node is a path *relative to the export*, kept as checked
components.  Every host operation opens the parent directory with
``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS)`` from
the export's root fd (or component by component with ``O_NOFOLLOW`` where
openat2 is missing), then acts on one name with a ``*at`` call that does not
follow a final symlink.  ``..`` is path arithmetic, never a host lookup.

Files the guest holds open are used through their fd, so they keep working
after being unlinked or renamed away.  Owner and mode storage is the
:class:`~ninep.backends.local.secmodel.SecurityModel`'s business.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import stat as st_
import struct
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ... import syscalls
from ...protocol.ninep import (LOCK_BLOCKED, LOCK_SUCCESS, LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK,
                               LOCK_TYPE_WRLCK, QTDIR, QTFILE, QTSYMLINK, Qid)
from ..base import (UTIME_OMIT, Backend, Credentials, DirEntry, LockResult, SetAttr, Stat, StatFs,
                    Views)
from ..qid import QidMapper
from .secmodel import PassthroughModel, SecurityModel, proc_path

T = TypeVar("T")

F_OFD_GETLK = 36
F_OFD_SETLK = 37
_FLOCK = struct.Struct("hhqqi4x")  # l_type, l_whence, l_start, l_len, l_pid
_LOCK_TO_HOST = {LOCK_TYPE_RDLCK: fcntl.F_RDLCK, LOCK_TYPE_WRLCK: fcntl.F_WRLCK,
                 LOCK_TYPE_UNLCK: fcntl.F_UNLCK}
_LOCK_FROM_HOST = {v: k for k, v in _LOCK_TO_HOST.items()}
_DT_FROM_MODE = {st_.S_IFDIR: 4, st_.S_IFREG: 8, st_.S_IFLNK: 10, st_.S_IFCHR: 2,
                 st_.S_IFBLK: 6, st_.S_IFIFO: 1, st_.S_IFSOCK: 12}
_HAVE_OPENAT2 = syscalls.have_openat2()


class LocalNode:
    """One fid's view of a file: its path in the export and, once open, its fd."""

    __slots__ = ("parts", "fd", "is_dir", "dir_lock", "__weakref__")

    def __init__(self, parts: tuple[str, ...]) -> None:
        self.parts = parts
        self.fd: int | None = None
        self.is_dir = False
        self.dir_lock: threading.Lock | None = None

    @property
    def path(self) -> str:
        return "/".join(self.parts)

    def __repr__(self) -> str:
        return f"LocalNode({self.path!r}, fd={self.fd})"


class LocalBackend(Backend):
    """Serves *export* with a security model; blocking calls go to a thread pool."""

    def __init__(self, export: str, *, model: SecurityModel | None = None, multidevs: str = "warn",
                 threads: int = 8, use_openat2: bool | None = None) -> None:
        self.export = export
        self.model = model or PassthroughModel()
        self.root_fd = os.open(export, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        root_st = os.fstat(self.root_fd)
        self.qids = QidMapper(root_st.st_dev, multidevs)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ninep-local")
        self._nodes: weakref.WeakSet[LocalNode] = weakref.WeakSet()
        self._openat2 = _HAVE_OPENAT2 if use_openat2 is None else use_openat2

    # --- plumbing ------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _new_node(self, parts: tuple[str, ...]) -> LocalNode:
        node = LocalNode(parts)
        self._nodes.add(node)
        return node

    def _open_dir(self, parts: tuple[str, ...]) -> int:
        """An O_PATH fd of the directory *parts*, never leaving the export."""
        if not parts:
            return os.dup(self.root_fd)
        if self._openat2:
            return syscalls.openat2(self.root_fd, "/".join(parts),
                                    os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                                    syscalls.RESOLVE_CONFINED)
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _at(self, node: LocalNode, fn: Callable[[int, str], T]) -> T:
        """Run ``fn(parent_fd, name)`` on the node's entry (root: its own fd, '.')."""
        if not node.parts:
            return fn(self.root_fd, ".")
        dirfd = self._open_dir(node.parts[:-1])
        try:
            return fn(dirfd, node.parts[-1])
        finally:
            os.close(dirfd)

    def _in_dir(self, dnode: LocalNode, name: str, fn: Callable[[int, str], T]) -> T:
        """Run ``fn(dir_fd, name)`` for *name* inside directory node *dnode*."""
        if self.model.is_hidden(name):
            raise OSError(errno.EACCES, "reserved name")
        dirfd = self._open_dir(dnode.parts)
        try:
            return fn(dirfd, name)
        finally:
            os.close(dirfd)

    def _stat(self, node: LocalNode) -> Stat:
        if node.fd is not None:
            return self.model.fstat(node.fd)
        if not node.parts:
            return self.model.fstat(self.root_fd)
        return self._at(node, self.model.stat)

    def _qid_of(self, dirfd: int, name: str) -> Qid:
        return self.qids.qid(self.model.stat(dirfd, name))

    # --- attach / walk / clunk ----------------------------------------------------------

    async def attach(self, uname: str, uid: int, aname: str) -> tuple[LocalNode, Qid]:
        node = self._new_node(())
        node.is_dir = True
        return node, self.qids.qid(await self._run(self._stat, node))

    async def walk(self, node: LocalNode, names: list[str]) -> tuple[list[Qid], LocalNode | None]:
        if not names:
            clone = self._new_node(node.parts)
            clone.is_dir = node.is_dir
            return [], clone
        return await self._run(self._walk, node, names)

    def _walk(self, node: LocalNode, names: list[str]) -> tuple[list[Qid], LocalNode | None]:
        parts = node.parts
        qids: list[Qid] = []
        is_dir = node.is_dir
        dirfd = self._open_dir(parts[:-1]) if parts else os.dup(self.root_fd)
        try:
            for i, name in enumerate(names):
                try:
                    if name == "..":
                        newparts = parts[:-1]
                    elif name == ".":
                        newparts = parts
                    else:
                        if not is_dir:
                            raise OSError(errno.ENOTDIR, "not a directory")
                        if self.model.is_hidden(name):
                            raise OSError(errno.ENOENT, "no such file")
                        newparts = parts + (name,)
                    # re-anchor dirfd at the parent of newparts
                    os.close(dirfd)
                    dirfd = -1
                    dirfd = self._open_dir(newparts[:-1]) if newparts else os.dup(self.root_fd)
                    st = (self.model.stat(dirfd, newparts[-1]) if newparts
                          else self.model.fstat(self.root_fd))
                except OSError:
                    if i == 0:
                        raise
                    return qids, None
                qids.append(self.qids.qid(st))
                parts = newparts
                is_dir = st_.S_ISDIR(st.mode)
        finally:
            if dirfd >= 0:
                os.close(dirfd)
        new = self._new_node(parts)
        new.is_dir = is_dir
        return qids, new

    async def clunk(self, node: LocalNode) -> None:
        self._nodes.discard(node)
        fd, node.fd = node.fd, None
        if fd is not None:
            os.close(fd)  # also drops the fd's OFD locks

    # --- attributes -----------------------------------------------------------------

    async def getattr(self, node: LocalNode) -> tuple[Qid, Stat]:
        st = await self._run(self._stat, node)
        return self.qids.qid(st), st

    async def setattr(self, node: LocalNode, change: SetAttr) -> None:
        await self._run(self._setattr, node, change)

    def _setattr(self, node: LocalNode, change: SetAttr) -> None:
        fd = node.fd
        if change.uid is not None or change.gid is not None:
            uid = -1 if change.uid is None else change.uid
            gid = -1 if change.gid is None else change.gid
            self._at(node, lambda d, n: self.model.chown(d, n, fd, uid, gid))
        if change.mode is not None:
            self._at(node, lambda d, n: self.model.chmod(d, n, fd, change.mode))
        if change.size is not None:
            if fd is not None and node.is_dir is False and self._writable(fd):
                os.ftruncate(fd, change.size)
            else:
                self._at(node, lambda d, n: self._truncate_at(d, n, change.size))
        if change.atime is not None or change.mtime is not None:
            atime = change.atime or (0, UTIME_OMIT)
            mtime = change.mtime or (0, UTIME_OMIT)
            if fd is not None:
                syscalls.utimensat(fd, None, atime, mtime)
            else:
                self._at(node, lambda d, n: syscalls.utimensat(
                    d, n, atime, mtime, syscalls.AT_SYMLINK_NOFOLLOW))
        elif change.ctime and change.uid is None and change.gid is None and change.mode is None \
                and change.size is None:
            # Only "touch ctime": a no-op chown does exactly that.
            self._at(node, lambda d, n: self.model.chown(d, n, fd, -1, -1))

    @staticmethod
    def _writable(fd: int) -> bool:
        return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY

    @staticmethod
    def _truncate_at(dirfd: int, name: str, size: int) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dirfd)
        try:
            if not st_.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    async def statfs(self, node: LocalNode) -> StatFs:
        s = await self._run(os.statvfs, proc_path(self.root_fd))
        return StatFs(0x01021997, s.f_bsize, s.f_blocks, s.f_bfree, s.f_bavail, s.f_files,
                      s.f_ffree, s.f_fsid, s.f_namemax)

    async def readlink(self, node: LocalNode) -> str:
        if not node.parts:
            raise OSError(errno.EINVAL, "not a symlink")
        return await self._run(self._at, node, self.model.readlink)

    # --- open / create ----------------------------------------------------------------

    async def open(self, node: LocalNode, flags: int) -> tuple[Qid, int]:
        return await self._run(self._open, node, flags)

    def _open(self, node: LocalNode, flags: int) -> tuple[Qid, int]:
        def opener(dirfd: int, name: str) -> int:
            # First pin the inode without side effects, refuse special files
            # (CVE-2023-2861), then reopen that very inode with the real flags.
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            try:
                mode = os.fstat(pfd).st_mode
                if st_.S_ISLNK(mode):
                    raise OSError(errno.ELOOP, "is a symlink")
                if not (st_.S_ISREG(mode) or st_.S_ISDIR(mode)):
                    raise OSError(errno.ENXIO, "refusing to open a special file")
                if st_.S_ISDIR(mode) and flags & os.O_ACCMODE != os.O_RDONLY:
                    raise OSError(errno.EISDIR, "is a directory")
                return os.open(proc_path(pfd), (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC)
            finally:
                os.close(pfd)

        fd = self._at(node, opener)
        st = self.model.fstat(fd)
        node.fd = fd
        node.is_dir = st_.S_ISDIR(st.mode)
        if node.is_dir:
            node.dir_lock = threading.Lock()
        return self.qids.qid(st), 0

    async def create(self, node: LocalNode, name: str, flags: int, mode: int,
                     cred: Credentials) -> tuple[Qid, int]:
        return await self._run(self._create, node, name, flags, mode, cred)

    def _create(self, node: LocalNode, name: str, flags: int, mode: int,
                cred: Credentials) -> tuple[Qid, int]:
        fd = self._in_dir(node, name, lambda d, n: self.model.create_file(d, n, flags, mode, cred))
        node.parts = node.parts + (name,)
        node.fd = fd
        node.is_dir = False
        return self.qids.qid(self.model.fstat(fd)), 0

    async def mkdir(self, node: LocalNode, name: str, mode: int, cred: Credentials) -> Qid:
        def op(d: int, n: str) -> Qid:
            self.model.mkdir(d, n, mode, cred)
            return self._qid_of(d, n)
        return await self._run(self._in_dir, node, name, op)

    async def symlink(self, node: LocalNode, name: str, target: str, cred: Credentials) -> Qid:
        def op(d: int, n: str) -> Qid:
            self.model.symlink(d, n, target, cred)
            return self._qid_of(d, n)
        return await self._run(self._in_dir, node, name, op)

    async def mknod(self, node: LocalNode, name: str, mode: int, rdev: int,
                    cred: Credentials) -> Qid:
        def op(d: int, n: str) -> Qid:
            self.model.mknod(d, n, mode, rdev, cred)
            return self._qid_of(d, n)
        return await self._run(self._in_dir, node, name, op)

    # --- namespace changes -------------------------------------------------------------

    async def link(self, dnode: LocalNode, node: LocalNode, name: str) -> None:
        await self._run(self._link, dnode, node, name)

    def _link(self, dnode: LocalNode, node: LocalNode, name: str) -> None:
        if not node.parts:
            raise OSError(errno.EPERM, "cannot link the root")

        def in_old(odir: int, oname: str) -> None:
            def in_new(ndir: int, nname: str) -> None:
                os.link(oname, nname, src_dir_fd=odir, dst_dir_fd=ndir, follow_symlinks=False)
                self.model.on_link(odir, oname, ndir, nname)
            self._in_dir(dnode, name, in_new)
        self._at(node, in_old)

    async def rename(self, node: LocalNode, dnode: LocalNode, name: str) -> None:
        if not node.parts:
            raise OSError(errno.EBUSY, "cannot rename the root")
        parent = self._new_node(node.parts[:-1])
        try:
            await self.renameat(parent, node.parts[-1], dnode, name)
        finally:
            self._nodes.discard(parent)

    async def renameat(self, olddir: LocalNode, oldname: str, newdir: LocalNode, newname: str) -> None:
        await self._run(self._renameat, olddir, oldname, newdir, newname)

    def _renameat(self, olddir: LocalNode, oldname: str, newdir: LocalNode, newname: str) -> None:
        def in_old(odir: int, oname: str) -> None:
            def in_new(ndir: int, nname: str) -> None:
                os.rename(oname, nname, src_dir_fd=odir, dst_dir_fd=ndir)
                self.model.on_rename(odir, oname, ndir, nname)
            self._in_dir(newdir, newname, in_new)
        self._in_dir(olddir, oldname, in_old)
        self._moved(olddir.parts + (oldname,), newdir.parts + (newname,))

    def _moved(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        """Re-point every live node at or below *old* (QEMU's fid path fix-up)."""
        n = len(old)
        for other in list(self._nodes):
            if other.parts[:n] == old:
                other.parts = new + other.parts[n:]

    async def unlinkat(self, dnode: LocalNode, name: str, rmdir: bool) -> None:
        def op(d: int, n: str) -> None:
            if rmdir:
                os.rmdir(n, dir_fd=d)
            else:
                os.unlink(n, dir_fd=d)
            self.model.on_unlink(d, n, rmdir)
        await self._run(self._in_dir, dnode, name, op)

    async def remove(self, node: LocalNode) -> None:
        if not node.parts:
            raise OSError(errno.EBUSY, "cannot remove the root")

        def op(d: int, n: str) -> None:
            is_dir = st_.S_ISDIR(os.stat(n, dir_fd=d, follow_symlinks=False).st_mode)
            if is_dir:
                os.rmdir(n, dir_fd=d)
            else:
                os.unlink(n, dir_fd=d)
            self.model.on_unlink(d, n, is_dir)
        await self._run(self._at, node, op)

    # --- I/O ------------------------------------------------------------------------

    def _fd(self, node: LocalNode) -> int:
        if node.fd is None:
            raise OSError(errno.EBADF, "not open")
        return node.fd

    async def read_into(self, node: LocalNode, offset: int, views: Views) -> int:
        return await self._run(os.preadv, self._fd(node), views, offset)

    async def write_from(self, node: LocalNode, offset: int, views: Views) -> int:
        return await self._run(os.pwritev, self._fd(node), views, offset)

    async def fsync(self, node: LocalNode, datasync: bool) -> None:
        await self._run(os.fdatasync if datasync else os.fsync, self._fd(node))

    async def readdir(self, node: LocalNode, offset: int, max_entries: int) -> list[DirEntry]:
        return await self._run(self._readdir, node, offset, max_entries)

    def _readdir(self, node: LocalNode, offset: int, max_entries: int) -> list[DirEntry]:
        fd = self._fd(node)
        assert node.dir_lock is not None
        with node.dir_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            raw = syscalls.getdents64(fd, min(65536, max(4096, max_entries * 64)))
        out = []
        remap = self.qids.mode == "remap"
        for ino, off, dtype, name in raw[:max_entries]:
            sname = os.fsdecode(name)
            if self.model.is_hidden(sname):
                continue
            if name == b".." and not node.parts:
                st = self.model.fstat(self.root_fd)
                qid = self.qids.qid(st)
            elif remap and name not in (b".", b".."):
                try:
                    qid = self.qids.qid(self.model.stat(fd, sname))
                except OSError:
                    continue  # vanished meanwhile
            else:
                qid = Qid(_qtype_from_dt(dtype), 0, self.qids.path(self.qids.root_dev, ino))
            out.append(DirEntry(qid, off, dtype, name))
        return out

    # --- xattrs -----------------------------------------------------------------------

    def _xattr_target(self, node: LocalNode, fn: Callable[[str], T]) -> T:
        if node.fd is not None:
            return fn(proc_path(node.fd))
        if not node.parts:
            return fn(proc_path(self.root_fd))
        return self._at(node, lambda d, n: fn(proc_path(d, n)))

    async def xattr_get(self, node: LocalNode, name: str) -> bytes:
        host = self.model.xattr_host_name(name)
        return await self._run(self._xattr_target, node,
                               lambda path: os.getxattr(path, host, follow_symlinks=False))

    async def xattr_list(self, node: LocalNode) -> bytes:
        names = await self._run(self._xattr_target, node,
                                lambda path: os.listxattr(path, follow_symlinks=False))
        return b"".join(os.fsencode(n) + b"\0" for n in self.model.xattr_guest_names(names))

    async def xattr_set(self, node: LocalNode, name: str, value: bytes, flags: int) -> None:
        host = self.model.xattr_host_name(name)
        await self._run(self._xattr_target, node,
                        lambda path: os.setxattr(path, host, value, flags, follow_symlinks=False))

    async def xattr_remove(self, node: LocalNode, name: str) -> None:
        host = self.model.xattr_host_name(name)
        await self._run(self._xattr_target, node,
                        lambda path: os.removexattr(path, host, follow_symlinks=False))

    # --- locks --------------------------------------------------------------------------

    async def lock(self, node: LocalNode, ltype: int, start: int, length: int, proc_id: int,
                   client_id: str) -> int:
        fd = self._fd(node)
        req = _FLOCK.pack(_LOCK_TO_HOST[ltype], os.SEEK_SET, start, length, 0)
        try:
            fcntl.fcntl(fd, F_OFD_SETLK, req)  # never blocks: the client retries
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return LOCK_BLOCKED
            raise
        return LOCK_SUCCESS

    async def getlock(self, node: LocalNode, ltype: int, start: int, length: int, proc_id: int,
                      client_id: str) -> LockResult:
        fd = self._fd(node)
        req = _FLOCK.pack(_LOCK_TO_HOST[ltype], os.SEEK_SET, start, length, 0)
        res = fcntl.fcntl(fd, F_OFD_GETLK, req)
        htype, _, rstart, rlen, rpid = _FLOCK.unpack(res)
        if htype == fcntl.F_UNLCK:
            return LockResult(LOCK_TYPE_UNLCK, start, length, proc_id, client_id)
        return LockResult(_LOCK_FROM_HOST[htype], rstart, rlen, rpid, "")

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        os.close(self.root_fd)


def _qtype_from_dt(dtype: int) -> int:
    return QTDIR if dtype == 4 else QTSYMLINK if dtype == 10 else QTFILE
