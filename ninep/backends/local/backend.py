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

import errno
import os
import stat as st_
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ... import syscalls
from ...protocol.ninep import Qid
from ..base import Backend, Credentials, DirEntry, RequestLoad, SetAttr, Stat, StatFs
from .. import fdops
from ..qid import QidMapper
from .secmodel import PassthroughModel, SecurityModel

T = TypeVar("T")

_HAVE_OPENAT2 = syscalls.have_openat2()
_PATH_MAX = 4096  # longest path one syscall takes, NUL included


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


class LocalBackend(fdops.OpenFdOps, Backend):
    """Serves *export* with a security model; blocking calls go to a thread pool."""

    def __init__(self, export: str, *, model: SecurityModel | None = None, multidevs: str = "warn",
                 threads: int = 8, use_openat2: bool | None = None,
                 inline: bool | None = None, load: RequestLoad | None = None) -> None:
        self.export = export
        self.model = model or PassthroughModel()
        self.root_fd = os.open(export, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        root_st = os.fstat(self.root_fd)
        self.qids = QidMapper(root_st.st_dev, multidevs)
        # inline and load: see WorkerPool; inline None decides by the export's file system.
        self._pool = fdops.WorkerPool(threads, "ninep-local", load=load, inline_when_alone=(
            fdops.export_is_local(export) if inline is None else inline))
        self._nodes: weakref.WeakSet[LocalNode] = weakref.WeakSet()
        self._openat2 = _HAVE_OPENAT2 if use_openat2 is None else use_openat2

    # --- plumbing ------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._pool.run(fn, *args)

    def _new_node(self, parts: tuple[str, ...]) -> LocalNode:
        node = LocalNode(parts)
        self._nodes.add(node)
        return node

    def _open_dir(self, parts: tuple[str, ...]) -> int:
        """An O_PATH fd of the directory *parts*, never leaving the export."""
        if not parts:
            return os.dup(self.root_fd)
        path = "/".join(parts)
        if self._openat2 and len(os.fsencode(path)) < _PATH_MAX:
            return syscalls.openat2(self.root_fd, path,
                                    os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                                    syscalls.RESOLVE_CONFINED)
        # No openat2, or a path too long for one syscall (deeper than PATH_MAX
        # is legal): one O_NOFOLLOW component at a time.
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

    def _at(self, node: LocalNode, fn: Callable[[int, str], T], *,
            fd_suffices: bool = False) -> T:
        """Run ``fn(parent_fd, name)`` on the node's entry (root: its own fd, '.').

        With *fd_suffices*, an open node whose directory can no longer be
        reached (removed, or moved on the host) gets ``fn(-1, "")``: the model
        then acts on the node's fd alone, as for any unlinked open file.
        """
        if not node.parts:
            return fn(self.root_fd, ".")
        if len(node.parts) == 1:  # in the export's root: no need for a dup to close
            return fn(self.root_fd, node.parts[0])
        try:
            dirfd = self._open_dir(node.parts[:-1])
        except OSError:
            if not fd_suffices or node.fd is None:
                raise
            return fn(-1, "")
        try:
            return fn(dirfd, node.parts[-1])
        finally:
            os.close(dirfd)

    def _in_dir(self, dnode: LocalNode, name: str, fn: Callable[[int, str], T]) -> T:
        """Run ``fn(dir_fd, name)`` for *name* inside directory node *dnode*."""
        if self.model.is_hidden(name):
            raise OSError(errno.EACCES, "reserved name")
        if not dnode.parts:
            return fn(self.root_fd, name)
        dirfd = self._open_dir(dnode.parts)
        try:
            return fn(dirfd, name)
        finally:
            os.close(dirfd)

    def _stat(self, node: LocalNode) -> Stat:
        if node.fd is not None:
            return self.model.fstat_open(node.fd, lambda fn: self._at(node, fn))
        return self._at(node, self.model.stat)  # the root as (root_fd, "."), which models may map

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
        for i, name in enumerate(names):
            try:
                if not is_dir:  # "." and ".." too: a file has neither
                    raise OSError(errno.ENOTDIR, "not a directory")
                if name == "..":
                    newparts = parts[:-1]
                elif name == ".":
                    newparts = parts
                elif self.model.is_hidden(name):
                    raise OSError(errno.ENOENT, "no such file")
                else:
                    newparts = parts + (name,)
                st = self._stat(LocalNode(newparts))
                qid = self.qids.qid(st)  # multidevs=forbid refuses here
            except OSError:
                if i == 0:
                    raise
                return qids, None
            qids.append(qid)
            parts = newparts
            is_dir = st_.S_ISDIR(st.mode)
        new = self._new_node(parts)
        new.is_dir = is_dir
        return qids, new

    # --- attributes -----------------------------------------------------------------

    async def getattr(self, node: LocalNode) -> tuple[Qid, Stat]:
        st = await self._run(self._stat, node)
        return self.qids.qid(st), st

    async def setattr(self, node: LocalNode, change: SetAttr) -> None:
        await self._run(self._setattr_now, node, change)

    def _may_have_setid(self, fd: int) -> bool:
        return self.model.may_have_setid(fd)

    def _setattr_now(self, node: LocalNode, change: SetAttr) -> None:
        fd = node.fd
        fdops.apply_setattr(
            change,
            chown=lambda uid, gid: self._at(node, lambda d, n: self.model.chown(d, n, fd, uid, gid),
                                            fd_suffices=True),
            chmod=lambda mode: self._at(node, lambda d, n: self.model.chmod(d, n, fd, mode),
                                        fd_suffices=True),
            truncate=lambda size: self._on_inode(node, lambda pfd: fdops.truncate(pfd, size)),
            utimes=lambda atime, mtime: self._on_inode(
                node, lambda pfd: fdops.utimes_pinned(pfd, atime, mtime)),
            current_mode=lambda: self._stat(node).mode)

    async def statfs(self, node: LocalNode) -> StatFs:
        return await self._run(fdops.statfs, self.root_fd)

    async def readlink(self, node: LocalNode) -> str:
        if not node.parts:
            raise OSError(errno.EINVAL, "not a symlink")
        return await self._run(self._at, node, self.model.readlink)

    # --- open / create ----------------------------------------------------------------

    async def open(self, node: LocalNode, flags: int) -> tuple[Qid, int]:
        self._check_not_open(node)
        return await self._run(self._open, node, flags)

    def _open(self, node: LocalNode, flags: int) -> tuple[Qid, int]:
        # Pin the inode without side effects, then reopen that very inode
        # (special files refused: CVE-2023-2861).
        fd = self._at(node, lambda d, n: fdops.with_pinned(
            d, n, lambda pfd: fdops.reopen(pfd, flags)))
        return self._adopt_open(node, fd, self.model.fstat(fd)), 0

    async def create(self, node: LocalNode, name: str, flags: int, mode: int,
                     cred: Credentials) -> tuple[Qid, int]:
        self._check_not_open(node)
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

    async def renameat(self, olddir: LocalNode, oldname: str, newdir: LocalNode,
                       newname: str) -> None:
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
        await self._run(self._in_dir, dnode, name,
                        lambda d, n: self.model.unlink(d, n, rmdir))

    async def remove(self, node: LocalNode) -> None:
        if not node.parts:
            raise OSError(errno.EBUSY, "cannot remove the root")

        def op(d: int, n: str) -> None:
            is_dir = st_.S_ISDIR(os.stat(n, dir_fd=d, follow_symlinks=False).st_mode)
            self.model.unlink(d, n, is_dir)
        await self._run(self._at, node, op)

    # --- directories (I/O, fsync and locks: fdops.OpenFdOps) ---------------------------

    async def readdir(self, node: LocalNode, offset: int, max_entries: int) -> list[DirEntry]:
        return await self._run(self._readdir, node, offset, max_entries)

    def _readdir(self, node: LocalNode, offset: int, max_entries: int) -> list[DirEntry]:
        fd = self._fd(node)
        if node.dir_lock is None:
            raise OSError(errno.ENOTDIR, "not an open directory")
        root_stat = None if node.parts else (lambda: self.model.fstat(self.root_fd))
        while batch := fdops.read_dir(fd, node.dir_lock, offset, max_entries, self.qids,
                                      stat_entry=self.model.stat, root_stat=root_stat):
            # Hidden names are dropped here, not in read_dir, so that a batch
            # of only hidden entries moves on instead of looking like the end.
            kept = self.model.visible_dirents(batch)
            if kept:
                return kept
            offset = batch[-1].offset
        return []

    # --- xattrs -----------------------------------------------------------------------

    def _on_inode(self, node: LocalNode, fn: Callable[[int], T]) -> T:
        """Run ``fn(fd)`` on an fd of the node's inode (its open fd, or a pinned one)."""
        if node.fd is not None:
            return fn(node.fd)
        if not node.parts:
            return fn(self.root_fd)
        return self._at(node, lambda d, n: fdops.with_pinned(d, n, fn))

    async def xattr_get(self, node: LocalNode, name: str) -> bytes:
        return await self._run(self._on_inode, node, lambda fd: self.model.xattr_get(fd, name))

    async def xattr_list(self, node: LocalNode) -> bytes:
        names = await self._run(self._on_inode, node, self.model.xattr_list)
        return b"".join(os.fsencode(n) + b"\0" for n in names)

    async def xattr_set(self, node: LocalNode, name: str, value: bytes, flags: int) -> None:
        await self._run(self._on_inode, node,
                        lambda fd: self.model.xattr_set(fd, name, value, flags))

    async def xattr_remove(self, node: LocalNode, name: str) -> None:
        await self._run(self._on_inode, node, lambda fd: self.model.xattr_remove(fd, name))

    def capabilities(self) -> frozenset[int]:
        return self.model.capabilities

    async def close(self) -> None:
        if self.root_fd < 0:  # closed already: never close a recycled fd number
            return
        self._pool.shutdown()
        for node in list(self._nodes):  # fids a session never clunked
            await self.clunk(node)
        root_fd, self.root_fd = self.root_fd, -1
        os.close(root_fd)
