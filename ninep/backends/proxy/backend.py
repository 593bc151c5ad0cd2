"""The proxy back end itself: 9P's back-end calls as proxy requests (see the
package's docstring for what goes to the helper and what is done here)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import os
import stat as st_
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ... import syscalls
from ...protocol import proxy as P
from ...protocol.ninep import Qid
from .. import fdops
from ..base import Backend, Credentials, DirEntry, SetAttr, Stat, StatFs, setid_bits_to_clear
from ..qid import QidMapper
from .channel import HelperLost, expect_reply, os_error, reply_status
from .connectors import Connector, FdConnector, SocketConnector
from .helper_process import SpawnedHelper
from .pool import HelperPool

#: A readlink buffer: PATH_MAX, so the helper returns up to 4095 bytes.
_READLINK_SIZE = 4096
#: The longest chroot path sent: two must fit in one request (T_RENAME, T_LINK).
#: Longer than PATH_MAX is fine: the helper resolves such a path piece by piece.
_PATH_LIMIT = (P.PROXY_MAX_IO_SZ - 2 * 2) // 2
_U32_KEEP = 0xFFFFFFFF  # (uid_t)-1: "leave unchanged" in T_CHOWN
_SET_ID_BITS = st_.S_ISUID | st_.S_ISGID
_OPEN_ADDED = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


def stat_from_proxy(r: P.ProxyStat) -> Stat:
    return Stat(r.st_mode, r.st_uid, r.st_gid, r.st_nlink, r.st_rdev, r.st_size, r.st_blksize,
                r.st_blocks, r.st_atim_sec * 1_000_000_000 + r.st_atim_nsec,
                r.st_mtim_sec * 1_000_000_000 + r.st_mtim_nsec,
                r.st_ctim_sec * 1_000_000_000 + r.st_ctim_nsec, r.st_dev, r.st_ino)


def statfs_from_proxy(r: P.ProxyStatFS) -> StatFs:
    """As statvfs(3) composes f_fsid from the two halves."""
    fsid = (r.f_fsid0 & 0xFFFFFFFF) | ((r.f_fsid1 & 0xFFFFFFFF) << 32)
    return StatFs(fdops.V9FS_MAGIC, r.f_bsize, r.f_blocks, r.f_bfree, r.f_bavail, r.f_files,
                  r.f_ffree, fsid, r.f_namelen)


class ProxyNode:
    """One fid's file: its path components inside the export, the file type
    its last lookup saw, and once open, the fd the helper passed."""

    __slots__ = ("parts", "mode", "fd", "is_dir", "dir_lock", "__weakref__")

    def __init__(self, parts: tuple[str, ...], mode: int) -> None:
        self.parts = parts
        self.mode = mode
        self.is_dir = st_.S_ISDIR(mode)
        self.fd: int | None = None
        self.dir_lock: threading.Lock | None = None

    def __repr__(self) -> str:
        return f"ProxyNode({'/'.join(self.parts)!r}, fd={self.fd})"


def _path(parts: tuple[str, ...]) -> bytes:
    """The chroot path of *parts* (``/`` for the root)."""
    path = b"/" + b"/".join(os.fsencode(p) for p in parts)
    if len(path) > _PATH_LIMIT:
        raise os_error(errno.ENAMETOOLONG)
    return path


def _child(parts: tuple[str, ...], name: str) -> tuple[str, ...]:
    """*parts* after walking *name*: ``..`` is arithmetic, clamped at the root."""
    if name == "..":
        return parts[:-1]
    if name == ".":
        return parts
    return parts + (name,)


class ProxyBackend(fdops.OpenFdOps, Backend):
    """Serves the export of a proxy helper (see the package docstring)."""

    def __init__(self, connector: Connector, *, multidevs: str = "warn", threads: int = 8,
                 pool_size: int | None = None) -> None:
        """Nothing is started here: :meth:`start` reaches the helper."""
        try:
            QidMapper(0, multidevs)  # refuse a bad --multidevs before starting anything
        except BaseException:
            connector.close()
            raise
        self._multidevs = multidevs
        self.pool = HelperPool(connector, pool_size or min(threads, 16))
        self._pool = fdops.WorkerPool(threads, "ninep-proxy")
        self._nodes: weakref.WeakSet[ProxyNode] = weakref.WeakSet()
        self._starting = asyncio.Lock()
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Reach the helper (start it, for :meth:`spawn`) on the server's loop and
        learn the export's device.  A one-line OSError says why not, and then the
        back end is closed, whatever it started stopped again."""
        async with self._starting:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("the proxy back end is closed")
            try:
                root = stat_from_proxy(await self.pool.start())
            except BaseException:
                await self.close()
                raise
            self.qids = QidMapper(root.dev, self._multidevs)
            self._started = True

    # --- construction from options -------------------------------------------------------

    @classmethod
    def spawn(cls, export: str, argv: Sequence[str] | None = None, *,
              per_connection: bool = False, **options: Any) -> ProxyBackend:
        """Serve *export* through a helper (ours by default) that :meth:`start` starts."""
        return cls(SpawnedHelper(export, argv, per_connection=per_connection), **options)

    @classmethod
    def from_args(cls, args: Any) -> ProxyBackend:
        """``--backend proxy``: ``--proxy-socket``, ``--proxy-fd``, or else a
        ninep-proxy-helper of our own on ``--export``.  The pool has
        ``--threads`` connections (at most 16; one with ``--proxy-fd``)."""
        if getattr(args, "security_model", None) is not None:
            raise ValueError("Invalid argument security_model specified with proxy fsdriver")
        options = {"multidevs": args.multidevs, "threads": args.threads}
        if args.proxy_socket is not None and args.proxy_fd is not None:
            raise ValueError("--proxy-socket and --proxy-fd cannot be used together")
        if args.proxy_socket is not None:
            return cls(SocketConnector(args.proxy_socket), **options)
        if args.proxy_fd is not None:
            return cls(FdConnector(args.proxy_fd), **options)
        return cls.spawn(args.export, **options)

    # --- plumbing --------------------------------------------------------------------------

    async def _one(self, request: P.Request) -> tuple[P.Reply, int | None]:
        return (await self.pool.call(request))[0]

    async def _lstat(self, parts: tuple[str, ...]) -> Stat:
        reply, _ = await self._one(P.Lstat(_path(parts)))
        return stat_from_proxy(expect_reply(reply, P.ProxyStat))

    async def _ok(self, request: P.Request) -> None:
        """Send a status request; raise its errno if it failed."""
        reply_status((await self._one(request))[0])

    def _new_node(self, parts: tuple[str, ...], mode: int) -> ProxyNode:
        node = ProxyNode(parts, mode)
        self._nodes.add(node)
        return node

    async def _name_is_gone(self, node: ProxyNode) -> bool:
        """For an open node: is its path no longer the open file (unlinked,
        replaced, moved on the host)?  Then only its fd reaches the file."""
        assert node.fd is not None
        own = os.fstat(node.fd)
        if own.st_nlink == 0:
            return True
        try:
            named = await self._lstat(node.parts)
        except OSError as exc:
            if isinstance(exc, HelperLost):
                raise
            return True
        return (named.dev, named.ino) != (own.st_dev, own.st_ino)

    async def _orphan_fd(self, node: ProxyNode) -> int | None:
        """The node's fd when only that fd reaches its file, else None."""
        if node.fd is not None and await self._name_is_gone(node):
            return node.fd
        return None

    # --- attach / walk (clunk: fdops.OpenFdOps) ------------------------------------

    async def attach(self, uname: str, uid: int, aname: str) -> tuple[ProxyNode, Qid]:
        if not self._started:
            raise RuntimeError("ProxyBackend.start() must be awaited before serving")
        st = await self._lstat(())
        return self._new_node((), st.mode), self.qids.qid(st)

    async def walk(self, node: ProxyNode, names: list[str]) -> tuple[list[Qid], ProxyNode | None]:
        if not names:
            return [], self._new_node(node.parts, node.mode)
        if not node.is_dir:  # "." and ".." too: a file has neither
            raise os_error(errno.ENOTDIR)
        steps: list[tuple[str, ...]] = []
        parts = node.parts
        for name in names:
            parts = _child(parts, name)
            steps.append(parts)
        replies = await self.pool.call(*[P.Lstat(_path(p)) for p in steps])
        qids: list[Qid] = []
        mode = node.mode
        for reply, _ in replies:
            if qids and not st_.S_ISDIR(mode):
                break  # never through a symlink or a file, whatever the helper resolved
            try:
                st = stat_from_proxy(expect_reply(reply, P.ProxyStat))
                qids.append(self.qids.qid(st))  # multidevs=forbid refuses here
            except OSError:
                if not qids:
                    raise  # the first name's error is the walk's
                break
            mode = st.mode
        if len(qids) < len(steps):
            return qids, None
        return qids, self._new_node(steps[-1], mode)

    # --- attributes ------------------------------------------------------------------------

    async def getattr(self, node: ProxyNode) -> tuple[Qid, Stat]:
        if node.fd is not None:
            st = Stat.from_os(os.fstat(node.fd))  # an fstat of a local fd does not block
        else:
            st = await self._lstat(node.parts)
        node.mode = st.mode
        return self.qids.qid(st), st

    async def setattr(self, node: ProxyNode, change: SetAttr) -> None:
        if change.only_drops_setid() and node.fd is not None \
                and not setid_bits_to_clear(os.fstat(node.fd).st_mode):
            return  # a write's usual case: nothing to clear, so no helper round trip
        fd = await self._orphan_fd(node)
        if fd is not None:
            await self._pool.run(self._setattr_fd, fd, change)
            return
        path = _path(node.parts)
        current = 0  # the mode now, for drop_setid
        if change.mode is not None or change.size is not None or change.drop_setid:
            current = (await self._lstat(node.parts)).mode
            kind = st_.S_IFMT(current)
            # T_CHMOD and T_TRUNCATE follow a final symlink: refuse those first.
            if kind == st_.S_IFLNK and (change.mode is not None or change.size is not None):
                raise os_error(errno.EOPNOTSUPP if change.mode is not None else errno.EINVAL)
            if change.size is not None and kind == st_.S_IFDIR:
                raise os_error(errno.EISDIR)
        requests: list[P.Request] = []
        fdops.apply_setattr(
            change,
            chown=lambda uid, gid: requests.append(P.Chown(
                path, _U32_KEEP if uid == -1 else uid, _U32_KEEP if gid == -1 else gid)),
            chmod=lambda mode: requests.append(P.Chmod(path, mode)),
            truncate=lambda size: requests.append(P.Truncate(path, size)),
            utimes=lambda atime, mtime: requests.append(P.Utime(path, *atime, *mtime)),
            current_mode=lambda: current)
        for request in requests:  # one by one: a failure stops the rest, as in notify_change
            await self._ok(request)

    async def write_from(self, node: ProxyNode, offset: int, views: list[memoryview], *,
                         drop_setid: bool = False) -> int:
        if drop_setid:  # a helper request, and only when the fd's mode has set-id bits
            await self.setattr(node, SetAttr(drop_setid=True))
        return await super().write_from(node, offset, views)

    @staticmethod
    def _setattr_fd(fd: int, change: SetAttr) -> None:
        fdops.apply_setattr(
            change,
            chown=lambda uid, gid: fdops.chown_pinned(fd, uid, gid),
            chmod=lambda mode: fdops.chmod_pinned(fd, mode),
            truncate=lambda size: fdops.truncate(fd, size),
            utimes=lambda atime, mtime: fdops.utimes_pinned(fd, atime, mtime),
            current_mode=lambda: os.fstat(fd).st_mode)

    async def statfs(self, node: ProxyNode) -> StatFs:
        reply, _ = await self._one(P.Statfs(b"/"))
        return statfs_from_proxy(expect_reply(reply, P.ProxyStatFS))

    async def readlink(self, node: ProxyNode) -> str:
        if not node.parts:
            raise os_error(errno.EINVAL, "not a symlink")
        reply, _ = await self._one(P.Readlink(_path(node.parts), _READLINK_SIZE))
        return os.fsdecode(expect_reply(reply, P.ReadlinkReply).target)

    # --- open / create ---------------------------------------------------------------------

    def _adopt_passed_fd(self, node: ProxyNode, fd: int, flags: int) -> Qid:
        """Serve the helper's *fd* as the node's open file: only a regular file
        or directory, with the guest's O_NONBLOCK choice restored."""
        try:
            st = Stat.from_os(os.fstat(fd))
            kind = st_.S_IFMT(st.mode)
            if kind not in (st_.S_IFREG, st_.S_IFDIR):
                raise os_error(errno.ELOOP if kind == st_.S_IFLNK else errno.ENXIO)
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        node.mode = st.mode
        return self._adopt_open(node, fd, st)

    async def _open_request(self, request: P.Request) -> int:
        reply, fd = await self._one(request)
        reply_status(reply)
        if fd is None:
            raise HelperLost("T_OPEN succeeded without an fd")
        return fd

    async def open(self, node: ProxyNode, flags: int) -> tuple[Qid, int]:
        self._check_not_open(node)
        kind = st_.S_IFMT(node.mode)
        if kind == st_.S_IFLNK:
            raise os_error(errno.ELOOP)
        if kind not in (st_.S_IFREG, st_.S_IFDIR):  # never ask the helper for a FIFO or device
            raise os_error(errno.ENXIO, "refusing to open a special file")
        host_flags = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)) | _OPEN_ADDED
        if kind == st_.S_IFDIR:
            host_flags |= os.O_DIRECTORY
        fd = await self._open_request(P.Open(_path(node.parts), host_flags))
        return self._adopt_passed_fd(node, fd, flags), 0

    async def create(self, node: ProxyNode, name: str, flags: int, mode: int,
                     cred: Credentials) -> tuple[Qid, int]:
        self._check_not_open(node)
        parts = node.parts + (name,)
        host_flags = (flags & ~os.O_CLOEXEC) | os.O_CREAT | _OPEN_ADDED
        fd = await self._open_request(P.Create(_path(parts), host_flags, mode & 0o7777,
                                               cred.uid, cred.gid))
        qid = self._adopt_passed_fd(node, fd, flags)
        node.parts = parts
        return qid, 0

    async def _make(self, parts: tuple[str, ...], request: P.Request, mode: int) -> Qid:
        """Run a creating request, set the set-id bits the kernel strips at
        creation, and return the new entry's qid."""
        if mode & _SET_ID_BITS:
            await self._ok(request)
            await self._ok(P.Chmod(_path(parts), mode & 0o7777))
            return self.qids.qid(await self._lstat(parts))
        (made, _), (stat_reply, _) = await self.pool.call(request, P.Lstat(_path(parts)))
        reply_status(made)
        return self.qids.qid(stat_from_proxy(expect_reply(stat_reply, P.ProxyStat)))

    async def mkdir(self, node: ProxyNode, name: str, mode: int, cred: Credentials) -> Qid:
        parts = node.parts + (name,)
        return await self._make(parts, P.Mkdir(cred.uid, cred.gid, _path(parts), mode & 0o7777),
                                mode)

    async def symlink(self, node: ProxyNode, name: str, target: str, cred: Credentials) -> Qid:
        parts = node.parts + (name,)
        return await self._make(parts, P.Symlink(cred.uid, cred.gid, os.fsencode(target),
                                                 _path(parts)), 0)

    async def mknod(self, node: ProxyNode, name: str, mode: int, rdev: int,
                    cred: Credentials) -> Qid:
        parts = node.parts + (name,)
        return await self._make(parts, P.Mknod(cred.uid, cred.gid, _path(parts), mode, rdev),
                                mode)

    # --- namespace changes -----------------------------------------------------------------

    async def link(self, dnode: ProxyNode, node: ProxyNode, name: str) -> None:
        if not node.parts:
            raise os_error(errno.EPERM, "cannot link the root")
        await self._ok(P.Link(_path(node.parts), _path(dnode.parts + (name,))))

    async def rename(self, node: ProxyNode, dnode: ProxyNode, name: str) -> None:
        if not node.parts:
            raise os_error(errno.EBUSY, "cannot rename the root")
        await self._rename(node.parts, dnode.parts + (name,))

    async def renameat(self, olddir: ProxyNode, oldname: str, newdir: ProxyNode,
                       newname: str) -> None:
        await self._rename(olddir.parts + (oldname,), newdir.parts + (newname,))

    async def _rename(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        await self._ok(P.Rename(_path(old), _path(new)))
        cut = len(old)  # re-point every live node at or below *old*
        for other in list(self._nodes):
            if other.parts[:cut] == old:
                other.parts = new + other.parts[cut:]

    async def unlinkat(self, dnode: ProxyNode, name: str, rmdir: bool) -> None:
        parts = dnode.parts + (name,)
        # T_REMOVE removes whichever it finds; unlinkat must refuse the wrong kind.
        is_dir = st_.S_ISDIR((await self._lstat(parts)).mode)
        if rmdir and not is_dir:
            raise os_error(errno.ENOTDIR)
        if is_dir and not rmdir:
            raise os_error(errno.EISDIR)
        await self._ok(P.Remove(_path(parts)))

    async def remove(self, node: ProxyNode) -> None:
        if not node.parts:
            raise os_error(errno.EBUSY, "cannot remove the root")
        await self._ok(P.Remove(_path(node.parts)))

    # --- directories (I/O, fsync and locks: fdops.OpenFdOps) ----------------------------------

    async def readdir(self, node: ProxyNode, offset: int, max_entries: int) -> list[DirEntry]:
        fd = self._fd(node)
        if node.dir_lock is None:
            raise os_error(errno.ENOTDIR, "not an open directory")
        root_stat = None if node.parts else (lambda: Stat.from_os(os.fstat(fd)))
        return await self._pool.run(functools.partial(
            fdops.read_dir, fd, node.dir_lock, offset, max_entries, self.qids,
            stat_entry=_stat_entry, root_stat=root_stat))

    # --- xattrs ----------------------------------------------------------------------------

    async def xattr_get(self, node: ProxyNode, name: str) -> bytes:
        fd = await self._orphan_fd(node)
        if fd is not None:
            return await self._pool.run(os.getxattr, fd, name)
        path, raw = _path(node.parts), os.fsencode(name)
        return await self._sized(lambda size: P.Lgetxattr(size, path, raw))

    async def xattr_list(self, node: ProxyNode) -> bytes:
        fd = await self._orphan_fd(node)
        if fd is not None:
            names = await self._pool.run(os.listxattr, fd)
            return b"".join(os.fsencode(n) + b"\0" for n in names)
        path = _path(node.parts)
        return await self._sized(lambda size: P.Llistxattr(size, path))

    async def _sized(self, request: Callable[[int], P.Request]) -> bytes:
        """T_LGETXATTR/T_LLISTXATTR: ask the size (size 0), then fetch that
        much; again if the value grew in between (ERANGE)."""
        while True:
            size = reply_status((await self._one(request(0)))[0])
            if size == 0:
                return b""
            try:
                reply, _ = await self._one(request(size))
                return expect_reply(reply, P.XattrReply).value
            except OSError as exc:
                if exc.errno != errno.ERANGE:
                    raise

    async def xattr_set(self, node: ProxyNode, name: str, value: bytes, flags: int) -> None:
        fd = await self._orphan_fd(node)
        if fd is not None:
            await self._pool.run(os.setxattr, fd, name, value, flags)
            return
        path, raw = _path(node.parts), os.fsencode(name)
        if 2 + len(path) + 2 + len(raw) + 2 + len(value) + 8 > P.PROXY_MAX_IO_SZ:
            raise os_error(errno.E2BIG, "xattr value too large for one proxy request")
        await self._ok(P.Lsetxattr(path, raw, bytes(value), len(value), flags))

    async def xattr_remove(self, node: ProxyNode, name: str) -> None:
        fd = await self._orphan_fd(node)
        if fd is not None:
            await self._pool.run(os.removexattr, fd, name)
            return
        await self._ok(P.Lremovexattr(_path(node.parts), os.fsencode(name)))

    def capabilities(self) -> frozenset[int]:
        """Only CAP_FSETID: the helper does everything privileged, but ninep writes
        through the fds it hands over, and without CAP_FSETID the host kernel would
        clear set-id bits on every write, the guest's root's included (Linux keeps
        them for root; a write by anyone else clears them either way)."""
        return frozenset({syscalls.CAP_FSETID})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown()
        for node in list(self._nodes):  # fids a session never clunked
            await self.clunk(node)
        self.pool.close()


def _stat_entry(dirfd: int, name: str) -> Stat:
    """lstat of an entry of a directory the helper opened (multidevs=remap readdir)."""
    return Stat.from_os(os.stat(name, dir_fd=dirfd, follow_symlinks=False))
