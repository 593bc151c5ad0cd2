"""A measurement-only back end that answers from memory: the transport's floor.

Run as a vhost-user (or stream) server by ``python -m bench.floor_server``,
it shows what a guest workload costs when the back end does no host
syscall at all: what is left is the transport, the session's Python and the
guest. Subtracting it from the real back end's time says how much of a
workload is host file-system work.

It keeps names, modes, sizes and times, never data: a read returns zeros up
to the file's size and a write only moves the size. Enough for the
benchmark's sequential, 4 KiB, metadata, listing and parallel workloads;
not for anything that reads back what it wrote (untar).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from dataclasses import dataclass, field

from ninep.backends.base import (
    Backend,
    Credentials,
    DirEntry,
    LockResult,
    SetAttr,
    Stat,
    StatFs,
    Views,
    qid_type,
)
from ninep.protocol.ninep import LOCK_SUCCESS, Qid

_DT_DIR, _DT_REG = 4, 8
_inodes = itertools.count(2)


@dataclass(slots=True, eq=False)
class _Inode:
    mode: int
    uid: int
    gid: int
    ino: int = field(default_factory=lambda: next(_inodes))
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    children: dict[str, _Inode] | None = None
    parent: _Inode | None = None

    def qid(self) -> Qid:
        return Qid(qid_type(self.mode), self.mtime_ns & 0xFFFFFFFF, self.ino)

    def stat(self) -> Stat:
        nlink = 2 if self.children is not None else 1
        blocks = (self.size + 511) // 512
        return Stat(self.mode, self.uid, self.gid, nlink, 0, self.size, 4096, blocks,
                    self.mtime_ns, self.mtime_ns, self.mtime_ns, 1, self.ino)

    def child(self, name: str) -> _Inode:
        if self.children is None:
            raise OSError(errno.ENOTDIR, name)
        try:
            return self.children[name]
        except KeyError:
            raise OSError(errno.ENOENT, name) from None

    def add(self, name: str, inode: _Inode) -> _Inode:
        if self.children is None:
            raise OSError(errno.ENOTDIR, name)
        if name in self.children:
            raise OSError(errno.EEXIST, name)
        inode.parent = self
        self.children[name] = inode
        self.mtime_ns = time.time_ns()
        return inode


class _Node:
    """Per fid: the inode it names."""

    __slots__ = ("inode",)

    def __init__(self, inode: _Inode) -> None:
        self.inode = inode


class FloorBackend(Backend):
    """An in-memory tree, optionally seeded with the names (and sizes) under a directory."""

    def __init__(self, seed: str | None = None) -> None:
        self.root = _Inode(stat.S_IFDIR | 0o755, 0, 0, children={})
        if seed is not None:
            self._seed(seed, self.root)

    def _seed(self, path: str, into: _Inode) -> None:
        with os.scandir(path) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    self._seed(entry.path, into.add(entry.name, _Inode(st.st_mode, 0, 0, children={})))
                elif entry.is_file(follow_symlinks=False):
                    into.add(entry.name, _Inode(st.st_mode, 0, 0, size=st.st_size))

    # --- the contract -----------------------------------------------------------------

    async def attach(self, uname: str, uid: int, aname: str) -> tuple[_Node, Qid]:
        return _Node(self.root), self.root.qid()

    async def walk(self, node: _Node, names: list[str]) -> tuple[list[Qid], _Node | None]:
        inode, qids = node.inode, []
        for name in names:
            try:
                inode = (inode.parent or inode) if name == ".." else inode.child(name)
            except OSError:
                if not qids:
                    raise
                return qids, None
            qids.append(inode.qid())
        return qids, _Node(inode)

    async def clunk(self, node: _Node) -> None:
        return None

    async def getattr(self, node: _Node) -> tuple[Qid, Stat]:
        return node.inode.qid(), node.inode.stat()

    async def setattr(self, node: _Node, change: SetAttr) -> None:
        inode = node.inode
        if change.mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | (change.mode & 0o7777)
        if change.uid is not None:
            inode.uid = change.uid
        if change.gid is not None:
            inode.gid = change.gid
        if change.size is not None:
            inode.size = change.size
        inode.mtime_ns = time.time_ns()

    async def open(self, node: _Node, flags: int) -> tuple[Qid, int]:
        return node.inode.qid(), 0

    async def create(self, node: _Node, name: str, flags: int, mode: int,
                     cred: Credentials) -> tuple[Qid, int]:
        node.inode = node.inode.add(name, _Inode(stat.S_IFREG | (mode & 0o7777), cred.uid, cred.gid))
        return node.inode.qid(), 0

    async def read_into(self, node: _Node, offset: int, views: Views) -> int:
        want = max(0, min(sum(len(v) for v in views), node.inode.size - offset))
        left = want
        for v in views:  # zeros, as a sparse file would give
            n = min(left, len(v))
            v[:n] = bytes(n)
            left -= n
            if not left:
                break
        return want

    async def write_from(self, node: _Node, offset: int, views: Views, *, drop_setid: bool = False) -> int:
        n = sum(len(v) for v in views)
        node.inode.size = max(node.inode.size, offset + n)
        node.inode.mtime_ns = time.time_ns()
        return n

    async def readdir(self, node: _Node, offset: int, max_entries: int) -> list[DirEntry]:
        children = node.inode.children
        if children is None:
            raise OSError(errno.ENOTDIR, "readdir")
        names = list(children.items())[offset:offset + max_entries]
        return [DirEntry(c.qid(), offset + i + 1, _DT_DIR if c.children is not None else _DT_REG,
                         name.encode()) for i, (name, c) in enumerate(names)]

    async def statfs(self, node: _Node) -> StatFs:
        return StatFs(0x01021997, 4096, 1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19, 0, 255)

    async def mkdir(self, node: _Node, name: str, mode: int, cred: Credentials) -> Qid:
        return node.inode.add(name, _Inode(stat.S_IFDIR | (mode & 0o7777), cred.uid, cred.gid,
                                           children={})).qid()

    async def unlinkat(self, dnode: _Node, name: str, rmdir: bool) -> None:
        victim = dnode.inode.child(name)
        if rmdir and victim.children is None:
            raise OSError(errno.ENOTDIR, name)
        if not rmdir and victim.children is not None:
            raise OSError(errno.EISDIR, name)
        if victim.children:
            raise OSError(errno.ENOTEMPTY, name)
        del dnode.inode.children[name]  # type: ignore[union-attr]

    async def remove(self, node: _Node) -> None:
        parent = node.inode.parent
        if parent is None or parent.children is None:
            raise OSError(errno.EBUSY, "remove")
        for name, inode in list(parent.children.items()):
            if inode is node.inode:
                await self.unlinkat(_Node(parent), name, inode.children is not None)
                return

    async def fsync(self, node: _Node, datasync: bool) -> None:
        return None

    async def xattr_get(self, node: _Node, name: str) -> bytes:
        raise OSError(errno.ENODATA, name)

    async def xattr_list(self, node: _Node) -> bytes:
        return b""

    async def lock(self, node: _Node, ltype: int, start: int, length: int, proc_id: int,
                   client_id: str) -> int:
        return LOCK_SUCCESS

    async def getlock(self, node: _Node, ltype: int, start: int, length: int, proc_id: int,
                      client_id: str) -> LockResult:
        return LockResult(2, start, length, proc_id, client_id)  # LOCK_TYPE_UNLCK: nothing held

    # Not needed by the benchmark's workloads.
    async def symlink(self, node: _Node, name: str, target: str, cred: Credentials) -> Qid:
        raise OSError(errno.EOPNOTSUPP, "symlink")

    async def mknod(self, node: _Node, name: str, mode: int, rdev: int, cred: Credentials) -> Qid:
        raise OSError(errno.EOPNOTSUPP, "mknod")

    async def link(self, dnode: _Node, node: _Node, name: str) -> None:
        raise OSError(errno.EOPNOTSUPP, "link")

    async def rename(self, node: _Node, dnode: _Node, name: str) -> None:
        raise OSError(errno.EOPNOTSUPP, "rename")

    async def renameat(self, olddir: _Node, oldname: str, newdir: _Node, newname: str) -> None:
        raise OSError(errno.EOPNOTSUPP, "renameat")

    async def readlink(self, node: _Node) -> str:
        raise OSError(errno.EINVAL, "readlink")

    async def xattr_set(self, node: _Node, name: str, value: bytes, flags: int) -> None:
        raise OSError(errno.EOPNOTSUPP, name)

    async def xattr_remove(self, node: _Node, name: str) -> None:
        raise OSError(errno.ENODATA, name)
