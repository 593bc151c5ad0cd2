"""The per-session fid table and what a fid can be."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..backends.base import Node


class FidKind(enum.Enum):
    NODE = "node"  # walked or attached, not open
    OPEN = "open"  # Tlopen/Tlcreate done: reads, writes, readdir
    XATTR_READ = "xattr-read"  # Txattrwalk result: Tread returns the value
    XATTR_WRITE = "xattr-write"  # Txattrcreate: Twrite fills the value, clunk sets it


@dataclass(slots=True)
class Fid:
    node: Node
    uid: int
    kind: FidKind = FidKind.NODE
    is_dir: bool = False
    open_flags: int = 0
    xattr_name: str = ""
    xattr_value: bytearray = field(default_factory=bytearray)
    xattr_size: int = 0
    xattr_flags: int = 0
    #: 9P2000(.u) only: the path walked from the root (a stat's name), where
    #: the next directory read goes on (its byte offset and the back end's
    #: cookie there), and whether clunk removes the file (ORCLOSE).
    path: tuple[str, ...] = ()
    dir_pos: int = 0
    dir_cookie: int = 0
    remove_on_clunk: bool = False
    #: Back-end calls using this fid's node right now (see :meth:`hold`).
    users: int = 0
    #: A back-end open/create of the node is running (Access.OPEN).
    opening: bool = False
    #: The clunk began: once no call uses the node, nothing may start on it.
    released: bool = False
    idle: asyncio.Event | None = None

    @property
    def clears_setid(self) -> bool:
        """Does Linux clear set-id bits when this fid's user writes or truncates?
        It does for a user without CAP_FSETID: in the guest, anyone but root."""
        return self.uid != 0

    def hold(self) -> None:
        """Count a use of the node (Access.READ); :meth:`let_go` ends it.  The
        clunk waits for every use, so the node (its fd) cannot go while a
        back-end call has it.  EBADF once the node is gone, or going with
        nothing holding it."""
        if self.released and not self.users:
            raise OSError(errno.EBADF, "fid was clunked")
        self.users += 1

    def let_go(self) -> None:
        self.users -= 1
        if not self.users and self.idle is not None:
            self.idle.set()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """:meth:`hold` the node across several back-end calls of one request,
        so that a clunk arriving between them waits for all of them."""
        self.hold()
        try:
            yield
        finally:
            self.let_go()

    async def release(self) -> None:
        """Start the clunk: no new use may begin once the node is idle; wait
        until it is (Access.FINAL)."""
        self.released = True
        while self.users:
            self.idle = self.idle or asyncio.Event()
            self.idle.clear()
            await self.idle.wait()


class FidTable:
    """fid number -> :class:`Fid`, with a cap and 9P's errors.

    An unknown fid is EBADF; a fid number already in use is EBADF too.
    """

    def __init__(self, max_fids: int) -> None:
        self._fids: dict[int, Fid] = {}
        self.max_fids = max_fids

    def __len__(self) -> int:
        return len(self._fids)

    def get(self, fid: int) -> Fid:
        try:
            return self._fids[fid]
        except KeyError:
            raise OSError(errno.EBADF, f"unknown fid {fid}") from None

    def check_free(self, fid: int) -> None:
        if fid in self._fids:
            raise OSError(errno.EBADF, f"fid {fid} already in use")
        if len(self._fids) >= self.max_fids:
            raise OSError(errno.EMFILE, "too many fids in this session")

    def add(self, fid: int, entry: Fid) -> None:
        self.check_free(fid)
        self._fids[fid] = entry

    def pop(self, fid: int) -> Fid:
        try:
            return self._fids.pop(fid)
        except KeyError:
            raise OSError(errno.EBADF, f"unknown fid {fid}") from None

    def drain(self) -> list[Fid]:
        entries = list(self._fids.values())
        self._fids.clear()
        return entries
