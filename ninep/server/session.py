"""One 9P session: msize, fids, in-flight tags, flush; calls the back end.

A transport calls :meth:`Session.submit` with each complete request and a
:class:`~ninep.server.sink.ReplySink`; replies go out in completion order.
Back-end ``OSError``s become Rlerror (Rerror in 9P2000/9P2000.u); nothing
else escapes.  The dialect is chosen at Tversion: 9P2000.L's handlers are
this class's methods, 9P2000.u's and 9P2000's live in :mod:`.dialect_u` and
share this dispatcher and fid table.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..backends.base import (ACCESS, UTIME_NOW, Access, Backend, Credentials, RequestLoad,
                             SetAttr, Stat, qid_type)
from ..protocol import dotu as u
from ..protocol import framing
from ..protocol import ninep as p
from ..segments import Segments, scatter, total_length
from .fids import Fid, FidKind, FidTable
from .idmap import IdTranslation
from .sink import ReplySink
from .stats import Stats

log = logging.getLogger("ninep.session")
T = TypeVar("T")

XATTR_SIZE_MAX = 64 * 1024
_PAGE = 4096

# dotl open flag -> host flag; everything not listed is dropped.
_DOTL_TO_HOST = [
    (p.DOTL_TRUNC, os.O_TRUNC),
    (p.DOTL_APPEND, os.O_APPEND),
    (p.DOTL_NONBLOCK, os.O_NONBLOCK),
    (p.DOTL_DSYNC, os.O_DSYNC),
    (p.DOTL_LARGEFILE, 0),
    (p.DOTL_DIRECTORY, os.O_DIRECTORY),
    (p.DOTL_SYNC, os.O_SYNC),
    (p.DOTL_EXCL, os.O_EXCL),
]


def dotl_to_host_flags(flags: int, create: bool = False) -> int:
    """Linux dotl open flags -> this host's, minus what a server must not honour
    (O_NOCTTY, O_ASYNC, O_DIRECT, O_NOATIME, O_CLOEXEC) and plus O_NOFOLLOW."""
    acc = flags & 3
    host = {p.DOTL_RDONLY: os.O_RDONLY, p.DOTL_WRONLY: os.O_WRONLY,
            p.DOTL_RDWR: os.O_RDWR, p.DOTL_NOACCESS: os.O_RDWR}[acc]
    for dotl, hostbit in _DOTL_TO_HOST:
        if flags & dotl and (create or dotl != p.DOTL_EXCL):
            host |= hostbit
    if create:
        host |= os.O_CREAT
    return host | os.O_NOFOLLOW | os.O_CLOEXEC


def _check_name(name: str) -> None:
    """A single path component from the guest: not empty, no '/' or NUL."""
    if not name or "/" in name or "\0" in name:
        raise OSError(errno.ENOENT, "illegal name")


def _check_new_name(name: str, dot_errno: int = errno.EEXIST) -> None:
    _check_name(name)
    if name in (".", ".."):
        raise OSError(dot_errno, "illegal name")


_MODIFYING = frozenset({
    p.Tlcreate.TYPE, p.Tsymlink.TYPE, p.Tmknod.TYPE, p.Trename.TYPE, p.Tsetattr.TYPE,
    p.Txattrcreate.TYPE, p.Tlink.TYPE, p.Tmkdir.TYPE, p.Trenameat.TYPE, p.Tunlinkat.TYPE,
    p.Twrite.TYPE, u.Tcreate.TYPE, u.Twstat.TYPE,
})  # Tremove and Tl/open check for themselves: a refused Tremove still clunks.
#: Requests that _dispatch decodes itself (no handler-table entry) in every dialect.
_IO_TYPES = frozenset({p.Tread.TYPE, p.Twrite.TYPE, p.Treaddir.TYPE})

Handler = Callable[..., Coroutine[Any, Any, Any]]


@dataclass(slots=True)
class SessionConfig:
    msize: int = 512000
    readonly: bool = False
    max_fids: int = 65536
    #: Requests read but not yet answered; at the cap the transport stops reading.
    max_inflight: int = 1024
    #: Largest xattr value (or name list) a guest may read or set.
    max_xattr_size: int = XATTR_SIZE_MAX
    #: Where requests are counted (``--stats``); None counts nothing.
    stats: Stats | None = None
    #: Guest <-> host id translation (--translate-uid/gid, --all-squash); None: ids pass as is.
    ids: IdTranslation | None = None
    #: Where requests in flight are counted for the back end's worker pool (one per server).
    load: RequestLoad = field(default_factory=RequestLoad)


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task
    sink: ReplySink
    started: bool = False
    finished: bool = False  # _run ended (so it answered or dropped its sink)


class Session:
    """The state of one client connection (or one virtio device)."""

    def __init__(self, backend: Backend[Any], config: SessionConfig | None = None) -> None:
        self.backend = backend
        self.config = config or SessionConfig()
        self.msize = self.config.msize
        self.fids = FidTable(self.config.max_fids)
        self._inflight: dict[int, _InFlight] = {}
        self._admission = asyncio.Semaphore(self.config.max_inflight)
        self._outstanding = 0  # request tasks not yet finished (tagged, NOTAG and Tflush)
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        # Cached: on Python 3.11 each get_running_loop() is a getpid() syscall.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The dialect Tversion chose (9P2000.L until then).
        self.messages: p.MessageSet = p.DOTL
        self._dotl_handlers: dict[int, Handler] = {
            spec.type: getattr(self, "_" + spec.cls.__name__)
            for spec in p.BY_TYPE.values() if hasattr(self, "_" + spec.cls.__name__)
        }
        self._handlers = self._dotl_handlers
        #: 9P2000(.u) only: a Tread of an open directory returns stat entries.
        self._read_dir: Callable[[Fid, int, int], Coroutine[Any, Any, bytes]] | None = None
        self._stats = self.config.stats
        if self._stats is not None:
            self._stats.add_session(self)

    # --- entry points for transports -------------------------------------------------

    def submit(self, request: Segments, sink: ReplySink) -> None:
        """Start handling one complete request; its reply goes to *sink*.

        Every request gets exactly one reply, even on a closed session, so a
        virtqueue can always return its descriptor chain.
        """
        try:
            size, msgtype, tag = framing.peek_header(request)
        except p.ProtocolError:
            log.warning("dropping a request shorter than a 9P header")
            self._reply_error(sink, p.NOTAG, errno.EINVAL)
            return
        if size != total_length(request):
            log.warning("tag %d: size field %d != request length %d", tag, size,
                        total_length(request))
            self._reply_error(sink, tag, errno.EINVAL)
            return
        if self._closed:
            self._reply_error(sink, tag, errno.ECONNABORTED)
            return
        if self._stats is not None:
            sink = self._stats.watch(msgtype, sink)
        if msgtype == p.Tflush.TYPE:
            # Tflush is never queued behind the request it flushes.
            self._track(self._flush(request, tag, sink))
            return
        if tag in self._inflight and tag != p.NOTAG:
            self._reply_error(sink, tag, errno.EINVAL)
            return
        task = self._track(self._run(request, msgtype, tag, sink))
        if tag != p.NOTAG:
            self._inflight[tag] = _InFlight(task, sink)

    def _track(self, request: Coroutine[Any, Any, None]) -> asyncio.Task:
        """Start a request's task, counted against max_inflight until it ends."""
        loop = self._loop
        if loop is None:  # a Session may be built before its loop runs
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(request)
        self._outstanding += 1
        self.config.load.in_flight += 1
        if self._outstanding >= self.config.max_inflight:
            self._room.clear()
        task.add_done_callback(self._untrack)
        return task

    def _untrack(self, _task: asyncio.Task) -> None:
        self._outstanding -= 1
        self.config.load.in_flight -= 1
        if self._outstanding < self.config.max_inflight:
            self._room.set()

    @property
    def full(self) -> bool:
        """max_inflight requests are outstanding: a transport should read no more
        until :meth:`room` returns (so a guest cannot pile up unbounded frames)."""
        return self._outstanding >= self.config.max_inflight

    async def room(self) -> None:
        """Wait until fewer than max_inflight requests are outstanding."""
        await self._room.wait()

    async def close(self) -> None:
        """The transport is gone: stop in-flight requests and release every fid."""
        self._closed = True
        await self._abort_all()
        self._inflight.clear()
        if self._stats is not None:
            self._stats.remove_session(self)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` began: no new request is accepted."""
        return self._closed

    # --- request lifecycle ----------------------------------------------------------------

    async def _run(self, request: Segments, msgtype: int, tag: int, sink: ReplySink) -> None:
        entry = self._inflight.get(tag)
        try:
            async with self._admission:
                if entry is not None:
                    entry.started = True
                await self._dispatch(request, msgtype, tag, sink)
        except asyncio.CancelledError:
            self._reply_error(sink, tag, errno.EINTR, flushed=True)
        finally:
            if entry is not None:
                entry.finished = True
            if self._inflight.get(tag) is entry:
                self._inflight.pop(tag, None)

    async def _dispatch(self, request: Segments, msgtype: int, tag: int, sink: ReplySink) -> None:
        handler = self._handlers.get(msgtype)
        if handler is None and (msgtype not in _IO_TYPES or msgtype not in self.messages.table):
            self._reply_error(sink, tag, errno.EOPNOTSUPP)
            return
        try:
            if self.config.readonly and msgtype in _MODIFYING:
                raise OSError(errno.EROFS, "read-only export")
            if msgtype == p.Tread.TYPE:
                await self._tread(request, tag, sink)
                return
            if msgtype == p.Twrite.TYPE:
                reply = await self._twrite(request)
            else:
                assert handler is not None or msgtype == p.Treaddir.TYPE
                msg = self.messages.decode_body(msgtype, framing.body_of(request), tag)
                if msgtype == p.Treaddir.TYPE:
                    await self._treaddir(msg, tag, sink)
                    return
                reply = await handler(msg)  # type: ignore[misc]
            frame = p.encode_fast(reply, tag)  # in the try: an unencodable reply still answers
        except OSError as exc:
            self._reply_error(sink, tag, exc.errno or errno.EIO)
            return
        except p.ProtocolError as exc:
            log.warning("tag %d: %s", tag, exc)
            self._reply_error(sink, tag, errno.EINVAL)
            return
        except OverflowError:
            # A guest u32/u64 (size, offset, device number...) that the host's
            # signed C types cannot hold: the syscall would have said EINVAL.
            self._reply_error(sink, tag, errno.EINVAL)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tag %d: internal error handling %s", tag, p.NAMES.get(msgtype))
            self._reply_error(sink, tag, errno.EIO)
            return
        self._send(sink, frame)

    def _send(self, sink: ReplySink, frame: bytes) -> None:
        if len(frame) > sink.capacity:
            # Only a reply that outgrew the client's buffers: say so instead.
            frame = self.messages.encode_error(framing.tag_of(frame), errno.ERANGE)
        sink.send(frame)

    def _reply_error(self, sink: ReplySink, tag: int, err: int, flushed: bool = False) -> None:
        frame = self.messages.encode_error(tag, err)
        if flushed:
            scatter(sink.reserve(len(frame)), frame)
            sink.drop()
        else:
            sink.send(frame)

    async def _flush(self, request: Segments, tag: int, sink: ReplySink) -> None:
        try:
            msg = p.decode_body(p.Tflush.TYPE, framing.body_of(request), tag)
        except p.ProtocolError:
            self._reply_error(sink, tag, errno.EINVAL)
            return
        entry = self._inflight.get(msg.oldtag)
        if entry is not None and msg.oldtag != tag:
            if not entry.started:
                entry.task.cancel()
            # A flushed request never answers after its Rflush.
            await asyncio.gather(entry.task, return_exceptions=True)
            self._drop_unrun(msg.oldtag, entry)
        sink.send(p.encode(p.Rflush(), tag))

    def _drop_unrun(self, tag: int, entry: _InFlight) -> None:
        """A request cancelled before its task ever ran skipped _run's cleanup and
        never answered: forget its tag and drop its sink now (so a virtqueue
        still gets its buffers back)."""
        if self._inflight.get(tag) is entry:
            del self._inflight[tag]
        if not entry.finished:
            entry.finished = True
            self._reply_error(entry.sink, tag, errno.EINTR, flushed=True)

    async def _abort_all(self) -> None:
        """Cancel what has not started, wait for the rest, release every fid."""
        current = asyncio.current_task()
        others = [(t, e) for t, e in self._inflight.items() if e.task is not current]
        for _, entry in others:
            if not entry.started:
                entry.task.cancel()
        if others:
            await asyncio.gather(*(e.task for _, e in others), return_exceptions=True)
        for tag, entry in others:
            self._drop_unrun(tag, entry)
        for fid in self.fids.drain():
            await self._release(fid)

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``method(*args)`` with each :class:`Fid` in *args* replaced by its
        node, under the method's concurrency class (:data:`~ninep.backends.base.ACCESS`).

        The one way a handler reaches the back end: READ holds every fid
        given for the call; OPEN also refuses a second open of the fid while
        one runs (EINVAL), since the back end would leak the first fd; FINAL
        (clunk) waits until no call holds the fid, and nothing starts on it
        after.  A fid clunked meanwhile is EBADF, not a dead node.
        """
        kind = ACCESS[method.__name__]
        if kind is Access.FINAL:
            target, = args
            if target.__class__ is Fid:
                await target.release()
                target = target.node
            return await method(target)
        if kind is Access.OPEN:
            fid = args[0]
            if fid.opening:
                raise OSError(errno.EINVAL, "fid is already being opened")
            fid.hold()
            fid.opening = True
            try:
                return await method(fid.node, *args[1:], **kwargs)
            finally:
                fid.opening = False
                fid.let_go()
        held: list[Fid] = []
        try:
            nodes = []
            for arg in args:
                if arg.__class__ is Fid:
                    arg.hold()
                    held.append(arg)
                    arg = arg.node
                nodes.append(arg)
            return await method(*nodes, **kwargs)
        finally:
            for fid in held:
                fid.let_go()

    async def _release(self, fid: Fid) -> None:
        """Clunk *fid*'s node once no request uses it (the fid is out of the table)."""
        try:
            await self._call(self.backend.clunk, fid)
        except Exception:  # clunk must not fail, but never let it leak out
            log.exception("clunk failed")

    async def _install(self, fid_no: int, entry: Fid, replace: bool = False) -> None:
        """Put *entry* at *fid_no* (a new fid, or in place of the old one).

        The number was checked before the back-end call, but another request
        may have taken it meanwhile: then the new node is released, not leaked.
        """
        try:
            old = self.fids.pop(fid_no) if replace else None
            self.fids.add(fid_no, entry)
        except OSError:  # clunked, or taken, while the back end worked
            await self._release(entry)
            raise
        if old is not None:
            await self._release(old)

    # --- session messages -------------------------------------------------------------------

    async def _Tversion(self, msg: p.Tversion) -> p.Rversion:
        await self._abort_all()
        if msg.msize < 4096:
            raise OSError(errno.EINVAL, "msize too small")
        self.msize = min(msg.msize, self.config.msize)
        messages = dialect_of(msg.version)
        if messages is None:
            return p.Rversion(self.msize, "unknown")
        self.messages = messages
        if messages is p.DOTL:
            self._handlers, self._read_dir = self._dotl_handlers, None
        else:
            from .dialect_u import Dialect9P2000  # it builds on this module
            dialect = Dialect9P2000(self, messages)
            self._handlers, self._read_dir = dialect.handlers(), dialect.read_dir
        return p.Rversion(self.msize, messages.version)

    async def _Tauth(self, msg: p.Tauth) -> Any:
        # diod's answer: ENOENT means "no authentication needed, attach with
        # afid NOFID" to libnpclient (diodls, diodcat), which gives up on any
        # other error; the Linux client never sends Tauth.
        raise OSError(errno.ENOENT, "no authentication required")

    async def _Tattach(self, msg: p.Tattach) -> p.Rattach:
        if msg.afid != p.NOFID:
            raise OSError(errno.EINVAL, "no auth fid expected")
        self.fids.check_free(msg.fid)
        uid = msg.n_uname if msg.n_uname != p.NOFID else 0
        if self.config.ids is not None:
            uid = self.config.ids.uids.to_host(uid)
        node, qid = await self._call(self.backend.attach, msg.uname, uid, msg.aname)
        await self._install(msg.fid, Fid(node, uid, is_dir=True))
        return p.Rattach(qid)

    async def _Twalk(self, msg: p.Twalk) -> p.Rwalk:
        fid = self.fids.get(msg.fid)
        if fid.kind in (FidKind.XATTR_READ, FidKind.XATTR_WRITE):
            raise OSError(errno.EINVAL, "cannot walk an xattr fid")
        if len(msg.wnames) > p.MAX_WALK_ELEMENTS:
            raise OSError(errno.EINVAL, "too many walk elements")
        if msg.newfid != msg.fid:
            self.fids.check_free(msg.newfid)
        for name in msg.wnames:
            _check_name(name)
        qids, node = await self._call(self.backend.walk, fid, list(msg.wnames))
        if node is not None:
            is_dir = bool(qids[-1].type & p.QTDIR) if qids else fid.is_dir
            await self._install(msg.newfid, Fid(node, fid.uid, is_dir=is_dir),
                                replace=msg.newfid == msg.fid)
        return p.Rwalk(qids)

    async def _Tclunk(self, msg: p.Tclunk) -> p.Rclunk:
        fid = self.fids.pop(msg.fid)
        try:
            if fid.kind is FidKind.XATTR_WRITE:
                await self._commit_xattr(fid)
        finally:
            await self._release(fid)
        return p.Rclunk()

    async def _Tremove(self, msg: p.Tremove) -> p.Rremove:
        fid = self.fids.pop(msg.fid)
        try:
            if self.config.readonly:
                raise OSError(errno.EROFS, "read-only export")
            await self._call(self.backend.remove, fid)
        finally:
            await self._release(fid)
        return p.Rremove()

    # --- metadata --------------------------------------------------------------------------

    async def _Tgetattr(self, msg: p.Tgetattr) -> p.Rgetattr:
        fid = self.fids.get(msg.fid)
        qid, st = await self._call(self.backend.getattr, fid)
        reply = rgetattr(qid, st)
        if self.config.ids is not None:
            uid, gid = self.guest_ids(reply.uid, reply.gid)
            reply = reply._replace(uid=uid, gid=gid)
        return reply

    def guest_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """A file's host owner as the guest sees it (--translate-uid/gid, --all-squash)."""
        ids = self.config.ids
        return (uid, gid) if ids is None else (ids.uids.to_guest(uid), ids.gids.to_guest(gid))

    def host_owner(self, change: SetAttr) -> None:
        """Turn the guest ids a setattr or wstat asks for into host ids, in place."""
        if self.config.ids is not None:
            if change.uid is not None:
                change.uid = self.config.ids.uids.to_host(change.uid)
            if change.gid is not None:
                change.gid = self.config.ids.gids.to_host(change.gid)

    def _credentials(self, fid: Fid, gid: int) -> Credentials:
        """Whom a create-type request acts for, in host ids."""
        if self.config.ids is not None:
            gid = self.config.ids.gids.to_host(gid)
        return Credentials(fid.uid, gid)

    async def _Tsetattr(self, msg: p.Tsetattr) -> p.Rsetattr:
        fid = self.fids.get(msg.fid)
        v = msg.valid
        change = SetAttr(
            mode=msg.mode & 0o7777 if v & p.SETATTR_MODE else None,
            uid=msg.uid if v & p.SETATTR_UID else None,
            gid=msg.gid if v & p.SETATTR_GID else None,
            size=msg.size if v & p.SETATTR_SIZE else None,
            atime=((msg.atime_sec, msg.atime_nsec) if v & p.SETATTR_ATIME_SET else (0, UTIME_NOW))
            if v & p.SETATTR_ATIME else None,
            mtime=((msg.mtime_sec, msg.mtime_nsec) if v & p.SETATTR_MTIME_SET else (0, UTIME_NOW))
            if v & p.SETATTR_MTIME else None,
            ctime=bool(v & p.SETATTR_CTIME),
            drop_setid=bool(v & p.SETATTR_SIZE) and fid.clears_setid,
        )
        if change.uid == p.NOFID:
            change.uid = None
        if change.gid == p.NOFID:
            change.gid = None
        self.host_owner(change)
        await self._call(self.backend.setattr, fid, change)
        return p.Rsetattr()

    async def _Tstatfs(self, msg: p.Tstatfs) -> p.Rstatfs:
        fid = self.fids.get(msg.fid)
        return p.Rstatfs(*await self._call(self.backend.statfs, fid))

    async def _Treadlink(self, msg: p.Treadlink) -> p.Rreadlink:
        fid = self.fids.get(msg.fid)
        return p.Rreadlink(await self._call(self.backend.readlink, fid))

    # --- open / create ----------------------------------------------------------------------

    def _node_fid(self, fid_no: int) -> Fid:
        fid = self.fids.get(fid_no)
        if fid.kind is not FidKind.NODE:
            raise OSError(errno.EINVAL, "fid is already open")
        return fid

    def _dir_fid(self, fid_no: int) -> Fid:
        fid = self.fids.get(fid_no)
        if fid.kind in (FidKind.XATTR_READ, FidKind.XATTR_WRITE):
            raise OSError(errno.EINVAL, "xattr fid")
        if not fid.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        return fid

    async def _Tlopen(self, msg: p.Tlopen) -> p.Rlopen:
        fid = self._node_fid(msg.fid)
        return p.Rlopen(*await self.open_fid(fid, dotl_to_host_flags(msg.flags)))

    async def open_fid(self, fid: Fid, flags: int) -> tuple[p.Qid, int]:
        """Open *fid*'s node with host *flags* (Tlopen, Topen): ``(qid, iounit)``."""
        if self.config.readonly and (flags & 3 != os.O_RDONLY or flags & os.O_TRUNC):
            raise OSError(errno.EROFS, "read-only export")
        with fid.held():  # a clunk arriving meanwhile waits for the set-id drop too
            qid, iounit = await self._call(self.backend.open, fid, flags)
            fid.kind = FidKind.OPEN
            fid.is_dir = bool(qid.type & p.QTDIR)
            fid.open_flags = flags
            if flags & os.O_TRUNC and fid.clears_setid:
                await self._call(self.backend.setattr, fid, SetAttr(drop_setid=True))
        return qid, self._iounit(iounit)

    def _iounit(self, backend_iounit: int) -> int:
        """The largest read or write to ask for: whole pages that fit the msize (as
        QEMU rounds to the block size). The Linux client splits I/O at the iounit, so
        msize - 24 would make every request after the first start mid-page, and
        cost a dd bs=1M three requests per MiB instead of two."""
        limit = self.msize - p.IOHDRSZ
        if limit >= _PAGE:
            limit -= limit % _PAGE
        return min(backend_iounit, limit) if backend_iounit else limit

    async def _Tlcreate(self, msg: p.Tlcreate) -> p.Rlcreate:
        fid = self._node_fid(msg.fid)
        if not fid.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        _check_new_name(msg.name)
        flags = dotl_to_host_flags(msg.flags, True)
        return p.Rlcreate(*await self.create_fid(fid, msg.name, flags, msg.mode & 0o7777,
                                                 self._credentials(fid, msg.gid)))

    async def create_fid(self, fid: Fid, name: str, flags: int, mode: int,
                         cred: Credentials) -> tuple[p.Qid, int]:
        """Create and open *name* in *fid*'s directory; the fid becomes the new
        file, open (Tlcreate, Tcreate): ``(qid, iounit)``."""
        qid, iounit = await self._call(self.backend.create, fid, name, flags, mode, cred)
        fid.kind = FidKind.OPEN
        fid.is_dir = False
        fid.open_flags = flags
        return qid, self._iounit(iounit)

    async def _Tmkdir(self, msg: p.Tmkdir) -> p.Rmkdir:
        fid = self._dir_fid(msg.dfid)
        _check_new_name(msg.name)
        return p.Rmkdir(await self._call(self.backend.mkdir, fid, msg.name, msg.mode & 0o7777,
                                         self._credentials(fid, msg.gid)))

    async def _Tsymlink(self, msg: p.Tsymlink) -> p.Rsymlink:
        fid = self._dir_fid(msg.fid)
        _check_new_name(msg.name)
        if not msg.symtgt or "\0" in msg.symtgt:
            raise OSError(errno.ENOENT if not msg.symtgt else errno.EINVAL, "bad symlink target")
        return p.Rsymlink(await self._call(self.backend.symlink, fid, msg.name, msg.symtgt,
                                           self._credentials(fid, msg.gid)))

    async def _Tmknod(self, msg: p.Tmknod) -> p.Rmknod:
        fid = self._dir_fid(msg.dfid)
        _check_new_name(msg.name)
        rdev = os.makedev(msg.major, msg.minor)
        return p.Rmknod(await self._call(self.backend.mknod, fid, msg.name, msg.mode, rdev,
                                         self._credentials(fid, msg.gid)))

    async def _Tlink(self, msg: p.Tlink) -> p.Rlink:
        dfid = self._dir_fid(msg.dfid)
        fid = self.fids.get(msg.fid)
        _check_new_name(msg.name)
        if fid.is_dir:
            raise OSError(errno.EPERM, "hard link to a directory")
        await self._call(self.backend.link, dfid, fid, msg.name)
        return p.Rlink()

    async def _Trename(self, msg: p.Trename) -> p.Rrename:
        fid = self.fids.get(msg.fid)
        dfid = self._dir_fid(msg.dfid)
        _check_new_name(msg.name, errno.EISDIR)
        await self._call(self.backend.rename, fid, dfid, msg.name)
        return p.Rrename()

    async def _Trenameat(self, msg: p.Trenameat) -> p.Rrenameat:
        olddir = self._dir_fid(msg.olddirfid)
        newdir = self._dir_fid(msg.newdirfid)
        _check_new_name(msg.oldname, errno.EISDIR)
        _check_new_name(msg.newname, errno.EISDIR)
        await self._call(self.backend.renameat, olddir, msg.oldname, newdir, msg.newname)
        return p.Rrenameat()

    async def _Tunlinkat(self, msg: p.Tunlinkat) -> p.Runlinkat:
        fid = self._dir_fid(msg.dirfid)
        _check_name(msg.name)
        if msg.name == ".":
            raise OSError(errno.EINVAL, "cannot unlink .")
        if msg.name == "..":
            raise OSError(errno.ENOTEMPTY, "cannot unlink ..")
        if msg.flags & ~p.AT_REMOVEDIR:
            raise OSError(errno.EINVAL, "bad unlinkat flags")
        await self._call(self.backend.unlinkat, fid, msg.name, bool(msg.flags & p.AT_REMOVEDIR))
        return p.Runlinkat()

    async def _Tfsync(self, msg: p.Tfsync) -> p.Rfsync:
        fid = self.fids.get(msg.fid)
        if fid.kind is not FidKind.OPEN:
            raise OSError(errno.EBADF, "fid is not open")
        await self._call(self.backend.fsync, fid, bool(msg.datasync))
        return p.Rfsync()

    # --- I/O ------------------------------------------------------------------------------

    def _clamp(self, count: int, sink: ReplySink) -> int:
        return max(0, min(count, self.msize - p.IOHDRSZ, sink.capacity - p.IOHDRSZ_REPLY))

    async def _tread(self, request: Segments, tag: int, sink: ReplySink) -> None:
        fid_no, offset, count = framing.tread_args(request)
        fid = self.fids.get(fid_no)
        count = self._clamp(count, sink)
        if fid.kind is FidKind.XATTR_READ:
            value = fid.xattr_value
            data = bytes(value[offset:offset + count]) if offset < len(value) else b""
            self._send(sink, p.encode_rread_header(tag, len(data)) + data)
            return
        if fid.kind is not FidKind.OPEN:
            raise OSError(errno.EBADF, "fid is not open for reading")
        if fid.open_flags & 3 == os.O_WRONLY:
            raise OSError(errno.EBADF, "fid is open write-only")
        if fid.is_dir and self._read_dir is not None:
            with fid.held():
                data = await self._read_dir(fid, offset, count)
            self._send(sink, p.encode_rread_header(tag, len(data)) + data)
            return
        views = sink.reserve(framing.rread_size(count))
        n = await self._call(self.backend.read_into, fid, offset, framing.rread_data(views, count))
        sink.commit(framing.finish_rread(views, tag, n))

    async def _twrite(self, request: Segments) -> p.Rwrite:
        fid_no, offset, count = framing.twrite_args(request)
        fid = self.fids.get(fid_no)
        count = min(count, self.msize - p.IOHDRSZ)  # Rwrite tells the client how much
        if fid.kind is FidKind.XATTR_WRITE:
            data = b"".join(framing.twrite_data(request, count))
            return p.Rwrite(self._xattr_write(fid, offset, data))
        if fid.kind is not FidKind.OPEN:
            raise OSError(errno.EBADF, "fid is not open for writing")
        if fid.open_flags & 3 == os.O_RDONLY:
            raise OSError(errno.EBADF, "fid is open read-only")
        n = await self._call(self.backend.write_from, fid, offset,
                             framing.twrite_data(request, count),
                             drop_setid=count > 0 and fid.clears_setid)
        return p.Rwrite(n)

    async def _treaddir(self, msg: p.Treaddir, tag: int, sink: ReplySink) -> None:
        fid = self.fids.get(msg.fid)
        if fid.kind is not FidKind.OPEN or not fid.is_dir:
            raise OSError(errno.EBADF if fid.kind is not FidKind.OPEN else errno.ENOTDIR,
                          "fid is not an open directory")
        count = self._clamp(msg.count, sink)
        entries = await self._call(self.backend.readdir, fid, msg.offset, max(1, count // 24))
        data, _ = p.encode_dirents(entries, count)
        self._send(sink, p.encode_io_header(p.Rreaddir.TYPE, tag, len(data)) + data)

    # --- xattrs --------------------------------------------------------------------------

    async def _Txattrwalk(self, msg: p.Txattrwalk) -> p.Rxattrwalk:
        fid = self.fids.get(msg.fid)
        if msg.newfid != msg.fid:
            self.fids.check_free(msg.newfid)
        if "\0" in msg.name:
            raise OSError(errno.EINVAL, "bad xattr name")
        with fid.held():  # a clunk arriving meanwhile waits for the whole request
            if msg.name:
                value = await self._call(self.backend.xattr_get, fid, msg.name)
            else:
                value = await self._call(self.backend.xattr_list, fid)
            if len(value) > self.config.max_xattr_size:
                raise OSError(errno.E2BIG, "xattr larger than max_xattr_size")
            _, node = await self._call(self.backend.walk, fid, [])
        entry = Fid(node, fid.uid, kind=FidKind.XATTR_READ, xattr_name=msg.name,
                    xattr_value=bytearray(value))
        await self._install(msg.newfid, entry, replace=msg.newfid == msg.fid)
        return p.Rxattrwalk(len(value))

    async def _Txattrcreate(self, msg: p.Txattrcreate) -> p.Rxattrcreate:
        fid = self._node_fid(msg.fid)
        if msg.attr_size > self.config.max_xattr_size:
            raise OSError(errno.E2BIG, "xattr larger than max_xattr_size")
        if not msg.name or "\0" in msg.name:
            raise OSError(errno.EINVAL, "bad xattr name")
        fid.kind = FidKind.XATTR_WRITE
        fid.xattr_name = msg.name
        fid.xattr_size = msg.attr_size
        fid.xattr_flags = msg.flags
        fid.xattr_value = bytearray()
        return p.Rxattrcreate()

    def _xattr_write(self, fid: Fid, offset: int, data: bytes) -> int:
        if offset != len(fid.xattr_value) or offset + len(data) > fid.xattr_size:
            raise OSError(errno.EINVAL, "xattr write out of order or past its size")
        fid.xattr_value += data
        return len(data)

    async def _commit_xattr(self, fid: Fid) -> None:
        if len(fid.xattr_value) != fid.xattr_size:
            raise OSError(errno.EINVAL, "xattr value shorter than announced")
        if fid.xattr_size == 0:
            # Linux's removexattr is Txattrcreate(size 0, XATTR_REPLACE); QEMU
            # removes on any empty value, so a guest cannot set one either way.
            await self._call(self.backend.xattr_remove, fid, fid.xattr_name)
        else:
            await self._call(self.backend.xattr_set, fid, fid.xattr_name, bytes(fid.xattr_value),
                             fid.xattr_flags)

    # --- locks -------------------------------------------------------------------------

    async def _Tlock(self, msg: p.Tlock) -> p.Rlock:
        fid = self.fids.get(msg.fid)
        if fid.kind is not FidKind.OPEN:
            raise OSError(errno.EBADF, "fid is not open")
        if msg.type not in (p.LOCK_TYPE_RDLCK, p.LOCK_TYPE_WRLCK, p.LOCK_TYPE_UNLCK):
            raise OSError(errno.EINVAL, "bad lock type")
        status = await self._call(self.backend.lock, fid, msg.type, msg.start, msg.length,
                                  msg.proc_id, msg.client_id)
        return p.Rlock(status)

    async def _Tgetlock(self, msg: p.Tgetlock) -> p.Rgetlock:
        fid = self.fids.get(msg.fid)
        if fid.kind is not FidKind.OPEN:
            raise OSError(errno.EBADF, "fid is not open")
        if msg.type not in (p.LOCK_TYPE_RDLCK, p.LOCK_TYPE_WRLCK):
            raise OSError(errno.EINVAL, "bad lock type")
        res = await self._call(self.backend.getlock, fid, msg.type, msg.start, msg.length,
                               msg.proc_id, msg.client_id)
        return p.Rgetlock(*res)


def dialect_of(version: str) -> p.MessageSet | None:
    """The dialect a Tversion string asks for (None: none we speak).  A suffix
    after a known version (``9P2000.L.x``) still selects it, and an unknown
    ``9P2000.x`` falls back to plain 9P2000, as Plan 9 servers answer."""
    for messages in (p.DOTL, u.DOTU):
        if version == messages.version or version.startswith(messages.version + "."):
            return messages
    if version == u.VERSION_9P2000 or version.startswith(u.VERSION_9P2000 + "."):
        return u.PLAIN
    return None


def rgetattr(qid: p.Qid, st: Stat) -> p.Rgetattr:
    """Rgetattr for a stat, whatever the request mask asked.

    Like QEMU, the reply always carries every basic field (mode .. blocks),
    since one stat call yields them all and the mask is only a hint (Linux
    asks for GETATTR_ALL or GETATTR_BASIC anyway).  Of the rest only btime is
    reported, when the back end knows it; gen and data_version never are.
    """
    valid = p.GETATTR_BASIC | (p.GETATTR_BTIME if st.btime_ns else 0)
    return p.Rgetattr(
        valid, qid, st.mode, st.uid, st.gid, st.nlink, st.rdev, st.size, st.blksize,
        st.blocks, *_timespec(st.atime_ns), *_timespec(st.mtime_ns), *_timespec(st.ctime_ns),
        *_timespec(st.btime_ns), 0, 0)


def _timespec(ns: int) -> tuple[int, int]:
    """(sec, nsec) of a host time.  Times before 1970 go out as the u64 two's
    complement of the seconds, as QEMU sends them and Linux's client reads them."""
    return (ns // 10**9) & 0xFFFFFFFFFFFFFFFF, ns % 10**9


__all__ = ["Session", "SessionConfig", "dialect_of", "dotl_to_host_flags", "rgetattr", "qid_type"]
