"""A Tclunk racing every request that uses a fid, in both dialect families.

The request is held inside its back-end call on the fid's node; then the
fid is clunked.  The back end must never see that node again after its
clunk, nor have it clunked while a call still uses it (the fd would close,
and its number could be reused, under the call), and both requests must be
answered.  Nothing is timed: the back end waits at a gate the test opens.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ninep.backends.base import Backend
from ninep.backends.local import LocalBackend
from ninep.protocol import dotu as u
from ninep.protocol import ninep as p
from ninep.server.session import Session
from session_helpers import Direct

#: Every method the back-end contract has (clunk included).
METHODS = sorted(Backend.__abstractmethods__)


class RacingBackend(LocalBackend):
    """A LocalBackend that holds the first call on :attr:`watch` at a gate and
    records every use of a node during or after its clunk."""

    def __init__(self, export: str) -> None:
        super().__init__(export, threads=4)
        self.watch: Any = None
        self.held_in = ""
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.violations: list[str] = []
        self._busy: dict[int, list[str]] = {}  # id(node) -> calls running on it
        self._clunked: list[Any] = []  # kept alive, so ids are not reused

    async def _observe(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        nodes = [a for a in args if hasattr(a, "parts")]  # LocalNode
        for node in nodes:
            if any(node is dead for dead in self._clunked):
                self.violations.append(f"{name} on {node} after its clunk")
        if name == "clunk":
            if self._busy.get(id(args[0])):
                self.violations.append(f"clunk of {args[0]} under {self._busy[id(args[0])]}")
            self._clunked.append(args[0])
        for node in nodes:
            self._busy.setdefault(id(node), []).append(name)
        try:
            if (name != "clunk" and self.watch is not None and not self.entered.is_set()
                    and any(node is self.watch for node in nodes)):
                self.held_in = name
                self.entered.set()
                await self.gate.wait()
            return await getattr(LocalBackend, name)(self, *args, **kwargs)
        finally:
            for node in nodes:
                self._busy[id(node)].remove(name)


def _observed(name: str) -> Any:
    async def method(self: RacingBackend, *args: Any, **kwargs: Any) -> Any:
        return await self._observe(name, args, kwargs)
    method.__name__ = name
    return method


for _name in METHODS:
    setattr(RacingBackend, _name, _observed(_name))


# --- the requests ---------------------------------------------------------------------------

ROOT, F, D, L, R2, NEW = 0, 1, 2, 3, 4, 9  # root, file, directory, symlink, root clone, new fid


@dataclass
class Case:
    """*request* is held in the back end on *racing*'s node while Tclunk(*racing*) arrives."""

    name: str
    request: Any
    racing: list[int]
    #: Requests that prepare the fids (after the attach and walks every case gets).
    setup: list[Any] = field(default_factory=list)
    #: Reply classes that are right for the request; errnos that are right instead.
    replies: tuple[type, ...] = ()
    errnos: tuple[int, ...] = ()
    #: The fid the request binds to a new node at its end: clunked meanwhile,
    #: it is gone, and the request says so (EBADF) after its back-end calls.
    rebinds: int | None = None


def _dotl_cases() -> list[Case]:
    rdwr = [p.Tlopen(F, p.DOTL_RDWR)]
    opendir = [p.Tlopen(D, p.DOTL_RDONLY)]
    lock = (p.LOCK_TYPE_WRLCK, 0, 10, 1, "race")  # type, start, length, proc_id, client_id
    return [
        Case("Twalk", p.Twalk(D, NEW, ["g"]), [D], replies=(p.Rwalk,)),
        # The clunk took the fid away under the walk: nothing to replace.
        Case("Twalk-same-fid", p.Twalk(D, D, ["g"]), [D], rebinds=D),
        Case("Tgetattr", p.Tgetattr(F, p.GETATTR_BASIC), [F], replies=(p.Rgetattr,)),
        Case("Tsetattr", p.Tsetattr(F, p.SETATTR_MODE, 0o600, 0, 0, 0, 0, 0, 0, 0), [F],
             replies=(p.Rsetattr,)),
        Case("Tstatfs", p.Tstatfs(F), [F], replies=(p.Rstatfs,)),
        Case("Treadlink", p.Treadlink(L), [L], replies=(p.Rreadlink,)),
        Case("Tlopen", p.Tlopen(F, p.DOTL_RDONLY), [F], replies=(p.Rlopen,)),
        Case("Tlcreate", p.Tlcreate(D, "new", p.DOTL_RDWR, 0o644, 0), [D], replies=(p.Rlcreate,)),
        Case("Tmkdir", p.Tmkdir(D, "sub", 0o755, 0), [D], replies=(p.Rmkdir,)),
        Case("Tsymlink", p.Tsymlink(D, "sl", "g", 0), [D], replies=(p.Rsymlink,)),
        Case("Tmknod", p.Tmknod(D, "fifo", stat.S_IFIFO | 0o644, 0, 0, 0), [D],
             replies=(p.Rmknod,)),
        Case("Tlink", p.Tlink(D, F, "hard"), [D, F], replies=(p.Rlink,)),
        Case("Trename", p.Trename(F, D, "moved"), [F, D], replies=(p.Rrename,)),
        Case("Trenameat", p.Trenameat(D, "g", R2, "g2"), [D, R2], replies=(p.Rrenameat,)),
        Case("Tunlinkat", p.Tunlinkat(D, "g", 0), [D], replies=(p.Runlinkat,)),
        Case("Tremove", p.Tremove(F), [F], replies=(p.Rremove,)),
        Case("Tfsync", p.Tfsync(F, 0), [F], rdwr, replies=(p.Rfsync,)),
        Case("Tread", p.Tread(F, 0, 100), [F], rdwr, replies=(p.Rread,)),
        Case("Twrite", p.Twrite(F, 0, b"xyz"), [F], rdwr, replies=(p.Rwrite,)),
        Case("Treaddir", p.Treaddir(D, 0, 4096), [D], opendir, replies=(p.Rreaddir,)),
        Case("Tlock", p.Tlock(F, lock[0], 0, *lock[1:]), [F], rdwr, replies=(p.Rlock,)),
        Case("Tgetlock", p.Tgetlock(F, *lock), [F], rdwr, replies=(p.Rgetlock,)),
        # The xattr is there when the file system takes user xattrs; else ENODATA/EOPNOTSUPP.
        Case("Txattrwalk", p.Txattrwalk(F, NEW, "user.race"), [F], replies=(p.Rxattrwalk,),
             errnos=(errno.EOPNOTSUPP, errno.ENODATA)),
        Case("Txattrwalk-list", p.Txattrwalk(F, NEW, ""), [F], replies=(p.Rxattrwalk,),
             errnos=(errno.EOPNOTSUPP,)),
    ]


def _dotu_cases() -> list[Case]:
    keep = u.DONT_TOUCH
    rdwr = [u.Topen(F, u.ORDWR)]
    return [
        Case("Twalk", p.Twalk(D, NEW, ["g"]), [D], replies=(p.Rwalk,)),
        Case("Topen", u.Topen(F, u.OREAD), [F], replies=(u.Ropen,)),
        Case("Tcreate-file", u.Tcreate(D, "new", 0o644, u.ORDWR, ""), [D], replies=(u.Rcreate,)),
        Case("Tcreate-dir", u.Tcreate(D, "sub", u.DMDIR | 0o755, u.OREAD, ""), [D],
             replies=(u.Rcreate,), rebinds=D),
        Case("Tcreate-symlink", u.Tcreate(D, "sl", u.DMSYMLINK | 0o777, u.OREAD, "g"), [D],
             replies=(u.Rcreate,), rebinds=D),
        Case("Tcreate-fifo", u.Tcreate(D, "fifo", u.DMNAMEDPIPE | 0o644, u.OREAD, ""), [D],
             replies=(u.Rcreate,), rebinds=D),
        Case("Tcreate-link", u.Tcreate(D, "hard", u.DMLINK | 0o644, u.OREAD, f"{F}\n"), [D, F],
             replies=(u.Rcreate,), rebinds=D),
        Case("Tstat", u.Tstat(F), [F], replies=(u.Rstat,)),
        Case("Tstat-symlink", u.Tstat(L), [L], replies=(u.Rstat,)),
        Case("Twstat-mode", u.Twstat(F, keep._replace(mode=0o600)), [F], replies=(u.Rwstat,)),
        Case("Twstat-rename", u.Twstat(F, keep._replace(name="renamed")), [F],
             replies=(u.Rwstat,)),
        Case("Twstat-sync", u.Twstat(F, keep), [F], rdwr, replies=(u.Rwstat,)),
        Case("Tremove", p.Tremove(F), [F], replies=(p.Rremove,)),
        Case("Tread", p.Tread(F, 0, 100), [F], rdwr, replies=(p.Rread,)),
        Case("Tread-dir", p.Tread(D, 0, 4096), [D], [u.Topen(D, u.OREAD)], replies=(p.Rread,)),
        Case("Twrite", p.Twrite(F, 0, b"xyz"), [F], rdwr, replies=(p.Rwrite,)),
    ]


def _params(dialect: str, cases: list[Case]) -> list[Any]:
    return [pytest.param(dialect, case, racing, id=f"{dialect}-{case.name}-fid{racing}")
            for case in cases for racing in case.racing]


# --- the race -------------------------------------------------------------------------------

async def _prepare(direct: Direct, dialect: str, case: Case) -> None:
    if dialect == p.VERSION_9P2000L:
        await direct.ok(p.Tattach(ROOT, p.NOFID, "root", "", 0))
        ok = direct.ok
    else:
        assert (await direct.ok(p.Tversion(8192 * 8, dialect))).version == dialect
        await direct.ok(p.Tattach(ROOT, p.NOFID, "root", "", 0))

        async def ok(msg: Any) -> Any:
            tag, reply = u.DOTU.decode(await direct.submit(p.encode(msg, 1)).reply)
            assert not isinstance(reply, u.Rerror), f"{msg}: {reply}"
            return reply
    for fid, names in ((F, ["f"]), (D, ["d"]), (L, ["l"]), (R2, [])):
        await ok(p.Twalk(ROOT, fid, names))
    for msg in case.setup:
        await ok(msg)


def _errno(reply: Any) -> int | None:
    if isinstance(reply, p.Rlerror):
        return reply.ecode
    if isinstance(reply, u.Rerror):
        return reply.errno
    return None


@pytest.mark.parametrize("dialect, case, racing",
                         _params(p.VERSION_9P2000L, _dotl_cases())
                         + _params(u.VERSION_9P2000U, _dotu_cases()))
async def test_clunk_racing_a_request_waits_for_its_back_end_call(
        xattr_export: Path, dialect: str, case: Case, racing: int, fd_count) -> None:
    (xattr_export / "f").write_bytes(b"payload")
    (xattr_export / "d").mkdir()
    (xattr_export / "d" / "g").write_bytes(b"")
    (xattr_export / "l").symlink_to("f")
    try:
        os.setxattr(xattr_export / "f", "user.race", b"value")
    except OSError:
        pass  # the case accepts ENODATA/EOPNOTSUPP then
    before = fd_count()
    backend = RacingBackend(str(xattr_export))
    session = Session(backend)
    direct = Direct(session)
    decode = p.decode if dialect == p.VERSION_9P2000L else u.DOTU.decode
    try:
        await _prepare(direct, dialect, case)
        backend.watch = session.fids.get(racing).node
        request = direct.submit(p.encode(case.request, 5))
        await asyncio.wait_for(backend.entered.wait(), 10)
        clunk = direct.submit(p.encode(p.Tclunk(racing), 6))
        for _ in range(20):  # let the clunk run as far as it will
            await asyncio.sleep(0.001)
        # Tremove took the fid out of the table itself: that clunk is EBADF at once.
        assert clunk.reply.done() == isinstance(case.request, p.Tremove), \
            "Tclunk finished under a back-end call on its fid"
        assert backend.violations == []
        backend.gate.set()
        tag, reply = decode(await asyncio.wait_for(request.reply, 10))
        assert tag == 5
        if racing == case.rebinds:
            assert _errno(reply) == errno.EBADF, reply
        else:
            assert isinstance(reply, case.replies) or _errno(reply) in case.errnos, reply
        tag, reply = decode(await asyncio.wait_for(clunk.reply, 10))
        assert tag == 6
        if isinstance(case.request, p.Tremove):
            assert _errno(reply) == errno.EBADF
        else:
            assert isinstance(reply, p.Rclunk), reply
        assert backend.violations == [], f"held in {backend.held_in}"
    finally:
        backend.gate.set()  # a failed check must not leave the request held
        await session.close()
        await backend.close()
    assert backend.violations == []
    assert fd_count() == before


# --- the table itself, and OPEN's one-at-a-time -------------------------------------------

def test_every_backend_method_declares_its_concurrency_class() -> None:
    from ninep.backends.base import ACCESS, Access
    assert set(ACCESS) == set(METHODS)
    assert ACCESS["clunk"] is Access.FINAL and ACCESS["attach"] is Access.NONE
    assert {m for m, kind in ACCESS.items() if kind is Access.OPEN} == {"open", "create"}


async def test_a_second_open_of_a_fid_being_opened_is_refused(export: Path, fd_count) -> None:
    """The back end would leak the first open's fd: the second never reaches it."""
    (export / "f").write_bytes(b"payload")
    before = fd_count()
    backend = RacingBackend(str(export))
    session = Session(backend)
    direct = Direct(session)
    try:
        await direct.ok(p.Tattach(ROOT, p.NOFID, "root", "", 0))
        await direct.ok(p.Twalk(ROOT, F, ["f"]))
        backend.watch = session.fids.get(F).node
        first = direct.submit(p.encode(p.Tlopen(F, p.DOTL_RDONLY), 5))
        await asyncio.wait_for(backend.entered.wait(), 10)
        assert await direct.call(p.Tlopen(F, p.DOTL_RDWR), tag=6) == p.Rlerror(errno.EINVAL)
        backend.gate.set()
        assert isinstance(p.decode(await first.reply)[1], p.Rlopen)
        assert await direct.call(p.Tread(F, 0, 100), tag=7) == p.Rread(b"payload")
        await direct.ok(p.Tclunk(F))
        assert backend.violations == []
    finally:
        backend.gate.set()
        await session.close()
        await backend.close()
    assert fd_count() == before
