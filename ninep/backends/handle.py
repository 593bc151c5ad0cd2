"""The handle back end: fids hold kernel file handles instead of paths.

A node keeps the ``name_to_handle_at(2)`` handle of its file, and every
operation re-opens that handle with ``open_by_handle_at(2)`` against a
non-``O_PATH`` fd on the file's mount (the export root for the export's own
mount).  A handle names an inode, not a path, so a file the host renames or
moves keeps working through every fid that holds it, and the back end keeps
no paths (only each node's last-seen name, as a re-checked hint).  That needs
``CAP_DAC_READ_SEARCH`` and a file system that can encode and decode handles;
the constructor checks both.

Semantics are the local back end's with the passthrough model (which this
back end uses for ownership of new files), and the fd-level work is shared
with it through :mod:`ninep.backends.fdops`.

Confinement: a guest only ever names single components below a node it
holds, looked up with ``O_NOFOLLOW`` so no symlink is followed.  The one
lookup that climbs, ``..``, is checked: the parent must have the export root
among its ancestors (compared by device and inode), else the walk fails.
Operations that need a file's parent and name (Trename, Tremove) find them
from the node: its parent directory's handle and name as last seen (hints,
re-checked against the inode before use), ``..`` for directories, and a scan
of the parent for the inode when the hint went stale.  A non-directory the
host moved to *another* directory can therefore not be Trename'd/Tremove'd
through an old fid (ENOENT); everything else about it keeps working.
"""

from __future__ import annotations

import errno
import os
import stat as st_
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

from .. import syscalls
from ..protocol.ninep import Qid
from . import fdops
from .base import Backend, Credentials, DirEntry, RequestLoad, SetAttr, Stat, StatFs
from .local.secmodel import PassthroughModel
from .qid import QidMapper

T = TypeVar("T")

_PIN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: More ``..`` steps than this while looking for the export root means "not below it".
_MAX_DEPTH = 4096


class FileHandle(NamedTuple):
    """A file's kernel handle and the mount it was taken on."""

    type: int
    data: bytes
    mount_id: int


class HandleNode:
    """One fid's file: its handle, where it was last seen, and its fd once open.

    ``parent``/``name`` are hints for Trename/Tremove; they are kept current
    for renames done through this back end and re-checked before every use.
    """

    __slots__ = ("fh", "parent", "name", "is_dir", "fd", "dir_lock", "__weakref__")

    def __init__(self, fh: FileHandle, is_dir: bool, parent: FileHandle | None = None,
                 name: str | None = None) -> None:
        self.fh = fh
        self.is_dir = is_dir
        self.parent = parent
        self.name = name
        self.fd: int | None = None
        self.dir_lock: threading.Lock | None = None

    def __repr__(self) -> str:
        return f"HandleNode(type={self.fh.type}, {len(self.fh.data)} bytes, fd={self.fd})"


class HandleBackend(fdops.OpenFdOps, Backend):
    """Serves *export* through file handles; blocking calls go to a thread pool."""

    def __init__(self, export: str, *, multidevs: str = "warn", threads: int = 8,
                 inline: bool | None = None, load: RequestLoad | None = None) -> None:
        self.export = export
        self.model = PassthroughModel()
        # open_by_handle_at refuses O_PATH mount fds, so the root is opened for reading.
        self._mount_fds: dict[int, int] = {}
        self._mounts_lock = threading.Lock()
        self.root_fd = os.open(export, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            root_st = os.fstat(self.root_fd)
            self.root_id = (root_st.st_dev, root_st.st_ino)
            self.qids = QidMapper(root_st.st_dev, multidevs)
            self.root_fh = self._check_handles(export)
        except BaseException:
            self._close_mounts()
            raise
        self.handle_size = len(self.root_fh.data)
        self._pool = fdops.WorkerPool(threads, "ninep-handle", load=load, inline_when_alone=(
            fdops.export_is_local(export) if inline is None else inline))
        self._nodes: weakref.WeakSet[HandleNode] = weakref.WeakSet()

    # --- start-up ----------------------------------------------------------------------

    def _check_handles(self, export: str) -> FileHandle:
        """The export root's handle, once we know handles work here (one-line errors)."""
        effective, _, _ = syscalls.capget()
        if not effective & (1 << syscalls.CAP_DAC_READ_SEARCH):
            raise OSError("--backend handle needs CAP_DAC_READ_SEARCH (run as root or grant it) "
                          "to open files by handle")
        try:
            htype, data, mount_id = syscalls.name_to_handle_at(self.root_fd, "",
                                                               syscalls.AT_EMPTY_PATH)
        except OSError as exc:
            raise OSError(f"--export {export}: its file system cannot export file handles "
                          f"({os.strerror(exc.errno or errno.EOPNOTSUPP)}); use --backend local"
                          ) from None
        if not data:
            raise OSError(f"--export {export}: its file system gives empty file handles; "
                          f"use --backend local")
        self._mount_fds[mount_id] = self.root_fd
        fh = FileHandle(htype, data, mount_id)
        try:
            fd = self._open_fh(fh, _PIN_FLAGS)
        except OSError as exc:
            reason = ("permission denied: --backend handle needs CAP_DAC_READ_SEARCH"
                      if exc.errno == errno.EPERM else os.strerror(exc.errno or errno.EIO))
            raise OSError(f"--export {export}: cannot reopen a file handle: {reason}") from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if (st.st_dev, st.st_ino) != self.root_id:
            raise OSError(f"--export {export}: a file handle reopened another file; "
                          f"use --backend local")
        return fh

    # --- handles and fds ---------------------------------------------------------------

    def _mount_fd(self, mount_id: int) -> int:
        try:
            return self._mount_fds[mount_id]
        except KeyError:
            raise OSError(errno.ESTALE, "handle of an unknown mount") from None

    def _open_fh(self, fh: FileHandle, flags: int) -> int:
        """open_by_handle_at; a file that is gone gives ENOENT, as a path would.

        An unlinked inode that something still holds in memory can be reopened
        by handle, so a link count of 0 also counts as gone (a guest's open
        fid keeps using its own fd and never comes here).
        """
        try:
            fd = syscalls.open_by_handle_at(self._mount_fd(fh.mount_id), fh.type, fh.data, flags)
        except OSError as exc:
            if exc.errno == errno.ESTALE:
                raise OSError(errno.ENOENT, "file no longer exists") from None
            raise
        try:
            if os.fstat(fd).st_nlink == 0:
                raise OSError(errno.ENOENT, "file no longer exists")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _handle_of(self, fd: int) -> FileHandle:
        """The handle of the file *fd* pins, registering its mount when new."""
        htype, data, mount_id = syscalls.name_to_handle_at(fd, "", syscalls.AT_EMPTY_PATH)
        if mount_id not in self._mount_fds:
            self._add_mount(mount_id, fd)
        return FileHandle(htype, data, mount_id)

    def _add_mount(self, mount_id: int, pfd: int) -> None:
        """Keep a readable fd on the mount that *pfd* lives on, to decode its handles."""
        mode = os.fstat(pfd).st_mode
        if st_.S_ISDIR(mode):
            flags = os.O_RDONLY | os.O_DIRECTORY
        elif st_.S_ISREG(mode):
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
        else:
            raise OSError(errno.EXDEV, "special file on another mount")
        mfd = os.open(fdops.fd_path(pfd), flags | os.O_CLOEXEC)
        with self._mounts_lock:
            if mount_id in self._mount_fds:
                os.close(mfd)
            else:
                self._mount_fds[mount_id] = mfd

    def _close_mounts(self) -> None:
        for fd in set(self._mount_fds.values()) | {self.root_fd}:
            os.close(fd)
        self._mount_fds.clear()

    @contextmanager
    def _pinned(self, node: HandleNode) -> Iterator[int]:
        """An fd on the node's inode: its open fd, else an O_PATH fd from its handle."""
        if node.fd is not None:
            yield node.fd
            return
        fd = self._open_fh(node.fh, _PIN_FLAGS)
        try:
            yield fd
        finally:
            os.close(fd)

    def _with(self, node: HandleNode, fn: Callable[[int], T]) -> T:
        with self._pinned(node) as fd:
            return fn(fd)

    def _in_dir(self, dnode: HandleNode, fn: Callable[[int], T]) -> T:
        """Run ``fn(dir_fd)`` in directory node *dnode*."""
        if not dnode.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        return self._with(dnode, fn)

    def _is_root(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) == self.root_id

    def _below_root(self, dfd: int) -> bool:
        """True when directory *dfd* is the export root or has it as an ancestor."""
        st = os.fstat(dfd)
        cur = dfd
        try:
            for _ in range(_MAX_DEPTH):
                if self._is_root(st):
                    return True
                up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
                if cur != dfd:
                    os.close(cur)
                cur = up
                up_st = os.fstat(cur)
                if (up_st.st_dev, up_st.st_ino) == (st.st_dev, st.st_ino):
                    return False  # reached the top of the host's tree
                st = up_st
            return False
        finally:
            if cur != dfd:
                os.close(cur)

    def _parent_of_dir(self, dfd: int) -> int:
        """An O_PATH fd on the parent of directory *dfd*, never above the export."""
        up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        try:
            if not self._below_root(up):
                raise OSError(errno.ENOENT, "the parent is outside the export")
        except BaseException:
            os.close(up)
            raise
        return up

    def _new_node(self, fh: FileHandle, is_dir: bool, parent: FileHandle | None = None,
                  name: str | None = None) -> HandleNode:
        node = HandleNode(fh, is_dir, parent, name)
        self._nodes.add(node)
        return node

    # --- attach / walk / clunk ---------------------------------------------------------------

    async def attach(self, uname: str, uid: int, aname: str) -> tuple[HandleNode, Qid]:
        node = self._new_node(self.root_fh, True)
        return node, self.qids.qid(Stat.from_os(await self._pool.run(os.fstat, self.root_fd)))

    async def walk(self, node: HandleNode, names: list[str]) -> tuple[list[Qid], HandleNode | None]:
        if not names:
            return [], self._new_node(node.fh, node.is_dir, node.parent, node.name)
        return await self._pool.run(self._walk, node, names)

    def _walk(self, node: HandleNode, names: list[str]) -> tuple[list[Qid], HandleNode | None]:
        qids: list[Qid] = []
        fh: FileHandle | None = node.fh  # the current position's handle, once known
        parent_at: int | None = None  # index in fds of the last name's directory
        pname = node.name
        fds = [self._open_fh(node.fh, _PIN_FLAGS)]  # every position, for the parent hint
        try:
            st = os.fstat(fds[0])
            for i, name in enumerate(names):
                try:
                    if not st_.S_ISDIR(st.st_mode):
                        raise OSError(errno.ENOTDIR, "not a directory")
                    same = name == "." or (name == ".." and self._is_root(st))  # .. at the root
                    if same:
                        fds.append(os.dup(fds[-1]))
                    elif name == "..":
                        fds.append(self._parent_of_dir(fds[-1]))
                    else:
                        fds.append(os.open(name, _PIN_FLAGS, dir_fd=fds[-1]))
                    nst = st if same else os.fstat(fds[-1])
                    qid = self.qids.qid(Stat.from_os(nst))
                    nfh = fh if same else None
                    if nfh is None and i == len(names) - 1:
                        nfh = self._handle_of(fds[-1])
                except OSError:
                    if i == 0:
                        raise
                    return qids, None
                if name == "..":
                    parent_at, pname = None, None
                elif name != ".":
                    parent_at, pname = len(fds) - 2, name
                qids.append(qid)
                st, fh = nst, nfh
            parent = node.parent if parent_at is None and pname is not None else (
                self._hint_handle(node, fds, parent_at))
        finally:
            for fd in fds:
                os.close(fd)
        assert fh is not None
        return qids, self._new_node(fh, st_.S_ISDIR(st.st_mode), parent, pname)

    def _hint_handle(self, node: HandleNode, fds: list[int], at: int | None) -> FileHandle | None:
        """The handle of position *at* of a walk from *node*, as a best-effort hint."""
        if at is None:
            return None
        if at == 0:
            return node.fh
        try:
            return self._handle_of(fds[at])
        except OSError:
            return None

    # --- attributes ----------------------------------------------------------------------

    def _stat(self, node: HandleNode) -> Stat:
        return self._with(node, self.model.fstat)

    async def getattr(self, node: HandleNode) -> tuple[Qid, Stat]:
        st = await self._pool.run(self._stat, node)
        return self.qids.qid(st), st

    async def setattr(self, node: HandleNode, change: SetAttr) -> None:
        await self._pool.run(self._setattr_now, node, change)

    def _may_have_setid(self, fd: int) -> bool:
        return self.model.may_have_setid(fd)

    def _setattr_now(self, node: HandleNode, change: SetAttr) -> None:
        self._with(node, lambda fd: fdops.apply_setattr(
            change,
            chown=lambda uid, gid: fdops.chown_pinned(fd, uid, gid),
            chmod=lambda mode: fdops.chmod_pinned(fd, mode),
            truncate=lambda size: fdops.truncate(fd, size),
            utimes=lambda atime, mtime: fdops.utimes_pinned(fd, atime, mtime),
            current_mode=lambda: self.model.fstat(fd).mode))

    async def statfs(self, node: HandleNode) -> StatFs:
        return await self._pool.run(self._with, node, fdops.statfs)

    async def readlink(self, node: HandleNode) -> str:
        return await self._pool.run(self._with, node, fdops.readlink_pinned)

    # --- open / create -------------------------------------------------------------------

    async def open(self, node: HandleNode, flags: int) -> tuple[Qid, int]:
        return await self._pool.run(self._open, node, flags)

    def _open(self, node: HandleNode, flags: int) -> tuple[Qid, int]:
        self._check_not_open(node)
        return self._adopt(node, self._with(node, lambda pfd: fdops.reopen(pfd, flags))), 0

    def _adopt(self, node: HandleNode, fd: int, created_in: FileHandle | None = None,
               name: str | None = None) -> Qid:
        """Make *fd* the node's open file; after Tlcreate (*created_in* set) the
        node also becomes the new file *name* of that directory."""
        try:
            st = self.model.fstat(fd)
            if created_in is not None:
                node.fh, node.parent, node.name = self._handle_of(fd), created_in, name
        except BaseException:
            os.close(fd)
            raise
        return self._adopt_open(node, fd, st)

    async def create(self, node: HandleNode, name: str, flags: int, mode: int,
                     cred: Credentials) -> tuple[Qid, int]:
        return await self._pool.run(self._create, node, name, flags, mode, cred)

    def _create(self, node: HandleNode, name: str, flags: int, mode: int,
                cred: Credentials) -> tuple[Qid, int]:
        self._check_not_open(node)
        fd = self._in_dir(node, lambda d: self.model.create_file(d, name, flags, mode, cred))
        return self._adopt(node, fd, node.fh, name), 0

    def _make(self, dnode: HandleNode, name: str, make: Callable[[int], None]) -> Qid:
        """Create entry *name* with ``make(dir_fd)``; its qid."""
        def op(d: int) -> Qid:
            make(d)
            return self.qids.qid(self.model.stat(d, name))
        return self._in_dir(dnode, op)

    async def mkdir(self, node: HandleNode, name: str, mode: int, cred: Credentials) -> Qid:
        return await self._pool.run(self._make, node, name,
                                    lambda d: self.model.mkdir(d, name, mode, cred))

    async def symlink(self, node: HandleNode, name: str, target: str, cred: Credentials) -> Qid:
        return await self._pool.run(self._make, node, name,
                                    lambda d: self.model.symlink(d, name, target, cred))

    async def mknod(self, node: HandleNode, name: str, mode: int, rdev: int,
                    cred: Credentials) -> Qid:
        return await self._pool.run(self._make, node, name,
                                    lambda d: self.model.mknod(d, name, mode, rdev, cred))

    # --- namespace changes ---------------------------------------------------------------

    async def link(self, dnode: HandleNode, node: HandleNode, name: str) -> None:
        await self._pool.run(self._link, dnode, node, name)

    def _link(self, dnode: HandleNode, node: HandleNode, name: str) -> None:
        if node.fh == self.root_fh:
            raise OSError(errno.EPERM, "cannot link the root")

        def in_dir(d: int) -> None:
            # linkat(AT_SYMLINK_FOLLOW) through the magic link: links the pinned inode itself.
            with self._pinned(node) as pfd:
                os.link(fdops.fd_path(pfd), name, dst_dir_fd=d, follow_symlinks=True)
        self._in_dir(dnode, in_dir)

    def _locate(self, node: HandleNode) -> tuple[int, str]:
        """(O_PATH fd of the parent directory, name) of the node's file, inside the export.

        A directory's parent is its ``..``; another file's is the directory it
        was last seen in, which must still be below the export root.
        """
        with self._pinned(node) as pfd:
            st = os.fstat(pfd)
            if self._is_root(st):
                raise OSError(errno.EBUSY, "the export root")
            if st_.S_ISDIR(st.st_mode):
                dfd = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            elif node.parent is None:
                raise OSError(errno.ENOENT, "parent unknown")
            else:
                dfd = self._open_fh(node.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not self._below_root(dfd):
                raise OSError(errno.ENOENT, "no longer inside the export")
            return dfd, self._name_in(dfd, st, node.name)
        except BaseException:
            os.close(dfd)
            raise

    @staticmethod
    def _name_in(dfd: int, st: os.stat_result, hint: str | None) -> str:
        """The name of inode *st* in directory *dfd*: *hint* if still right, else a scan."""
        def is_it(name: str) -> bool:
            try:
                est = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            return (est.st_dev, est.st_ino) == (st.st_dev, st.st_ino)

        if hint is not None and is_it(hint):
            return hint
        rfd = os.open(fdops.fd_path(dfd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            while batch := syscalls.getdents64(rfd):
                for ino, _, _, raw in batch:
                    name = os.fsdecode(raw)
                    if ino == st.st_ino and raw not in (b".", b"..") and is_it(name):
                        return name
        finally:
            os.close(rfd)
        raise OSError(errno.ENOENT, "no longer in its directory")

    async def rename(self, node: HandleNode, dnode: HandleNode, name: str) -> None:
        await self._pool.run(self._rename, node, dnode, name)

    def _rename(self, node: HandleNode, dnode: HandleNode, name: str) -> None:
        odir, oname = self._locate(node)
        try:
            self._in_dir(dnode, lambda ndir: os.rename(oname, name, src_dir_fd=odir,
                                                       dst_dir_fd=ndir))
        finally:
            os.close(odir)
        node.parent, node.name = dnode.fh, name

    async def renameat(self, olddir: HandleNode, oldname: str, newdir: HandleNode,
                       newname: str) -> None:
        await self._pool.run(self._renameat, olddir, oldname, newdir, newname)

    def _renameat(self, olddir: HandleNode, oldname: str, newdir: HandleNode, newname: str) -> None:
        self._in_dir(olddir, lambda odir: self._in_dir(
            newdir, lambda ndir: os.rename(oldname, newname, src_dir_fd=odir, dst_dir_fd=ndir)))
        for other in list(self._nodes):
            if other.name == oldname and other.parent == olddir.fh:
                other.parent, other.name = newdir.fh, newname

    async def unlinkat(self, dnode: HandleNode, name: str, rmdir: bool) -> None:
        await self._pool.run(self._in_dir, dnode, lambda d: self.model.unlink(d, name, rmdir))

    async def remove(self, node: HandleNode) -> None:
        await self._pool.run(self._remove, node)

    def _remove(self, node: HandleNode) -> None:
        dfd, name = self._locate(node)
        try:
            is_dir = st_.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
            self.model.unlink(dfd, name, is_dir)
        finally:
            os.close(dfd)

    # --- directories and xattrs (I/O, fsync and locks: fdops.OpenFdOps) --------------------

    async def readdir(self, node: HandleNode, offset: int, max_entries: int) -> list[DirEntry]:
        fd, lock = self._fd(node), node.dir_lock
        if lock is None:
            raise OSError(errno.ENOTDIR, "not a directory")
        root_stat = (lambda: self.model.fstat(self.root_fd)) if node.fh == self.root_fh else None
        return await self._pool.run(lambda: fdops.read_dir(
            fd, lock, offset, max_entries, self.qids, stat_entry=self.model.stat,
            root_stat=root_stat))

    async def xattr_get(self, node: HandleNode, name: str) -> bytes:
        return await self._pool.run(self._with, node, lambda fd: self.model.xattr_get(fd, name))

    async def xattr_list(self, node: HandleNode) -> bytes:
        names = await self._pool.run(self._with, node, self.model.xattr_list)
        return b"".join(os.fsencode(n) + b"\0" for n in names)

    async def xattr_set(self, node: HandleNode, name: str, value: bytes, flags: int) -> None:
        await self._pool.run(self._with, node,
                             lambda fd: self.model.xattr_set(fd, name, value, flags))

    async def xattr_remove(self, node: HandleNode, name: str) -> None:
        await self._pool.run(self._with, node, lambda fd: self.model.xattr_remove(fd, name))

    def capabilities(self) -> frozenset[int]:
        """The model's, and CAP_DAC_READ_SEARCH for open_by_handle_at."""
        return self.model.capabilities | {syscalls.CAP_DAC_READ_SEARCH}

    async def close(self) -> None:
        self._pool.shutdown()
        for node in list(self._nodes):
            await self.clunk(node)
        self._close_mounts()

