"""A small async 9P client on the same codec, for tests and scripts.

>>> async with await Client.connect_unix("/run/ninep.sock") as c:
...     root = await c.attach()
...     fid = await c.walk_open(root, ["etc", "hostname"])
...     data = await c.read(fid, 0, 4096)

Requests may be issued concurrently; replies are matched by tag.  An Rlerror
(or Rerror) raises ``OSError(ecode)``.  It speaks 9P2000.L unless told
``version=dotu.VERSION_9P2000U`` (or ``"9P2000"``) at connect: then the
replies decode in that dialect and :meth:`Client.topen`, :meth:`Client.tcreate`,
:meth:`Client.stat`, :meth:`Client.wstat` and :meth:`Client.read_dir` apply.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import socket
import struct
from typing import Any

from .protocol import dotu as u
from .protocol import ninep as p

_SIZE = struct.Struct("<I")


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.msize = 8192
        #: The dialect the server agreed to (replies decode with it).
        self.messages: p.MessageSet = p.DOTL
        self._tags = itertools.cycle(range(0, 0xFFFF))
        self._fids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        #: Why the connection is gone (set once the read loop has ended).
        self._lost: Exception | None = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    # --- connection -----------------------------------------------------------------

    @classmethod
    async def connect_unix(cls, path: str, msize: int = 512000,
                           version: str = p.VERSION_9P2000L) -> Client:
        r, w = await asyncio.open_unix_connection(path, limit=msize + 4096)
        c = cls(r, w)
        await c.version(msize, version)
        return c

    @classmethod
    async def connect_tcp(cls, host: str, port: int, msize: int = 512000,
                          version: str = p.VERSION_9P2000L) -> Client:
        r, w = await asyncio.open_connection(host, port, limit=msize + 4096)
        c = cls(r, w)
        await c.version(msize, version)
        return c

    @classmethod
    async def connect_socket(cls, sock: socket.socket, msize: int = 512000,
                             version: str = p.VERSION_9P2000L) -> Client:
        """A client over an already connected stream socket (e.g. a socketpair end)."""
        r, w = await asyncio.open_connection(sock=sock, limit=msize + 4096)
        c = cls(r, w)
        await c.version(msize, version)
        return c

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        self._reader_task.cancel()
        await asyncio.gather(self._reader_task, return_exceptions=True)

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(4)
                (size,) = _SIZE.unpack(head)
                if not p.HEADER_SIZE <= size <= max(self.msize, 8192):
                    raise p.ProtocolError(f"server sent a frame of size {size} "
                                          f"(msize {self.msize})")
                frame = head + await self.reader.readexactly(size - 4)
                tag, msg = self.messages.decode(frame)
                fut = self._pending.pop(tag, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, p.ProtocolError) as exc:
            self._fail_pending(ConnectionError(f"connection lost: {exc}"))
        finally:
            # Cancelled by close(), or anything unexpected: nobody may wait forever.
            self._fail_pending(ConnectionError("connection closed"))

    def _fail_pending(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    # --- raw requests --------------------------------------------------------------------

    def new_fid(self) -> int:
        return next(self._fids)

    def send_raw(self, frame: bytes) -> None:
        self.writer.write(frame)

    def new_tag(self) -> int:
        """A tag no request of this client is waiting on."""
        tag = next(self._tags)
        while tag in self._pending:
            tag = next(self._tags)
        return tag

    def start(self, msg: Any, tag: int | None = None) -> tuple[int, asyncio.Future]:
        """Send *msg* without waiting; returns (tag, future of the reply message)."""
        tag = self.new_tag() if tag is None else tag
        return tag, self.start_frame(p.encode(msg, tag), tag)

    def start_frame(self, frame: bytes, tag: int) -> asyncio.Future:
        """Send an already encoded (possibly malformed) *frame*; the future gets
        the reply to *tag*, or ConnectionError once the connection is gone."""
        if self._lost is not None:
            raise ConnectionError(f"not connected: {self._lost}")
        fut = asyncio.get_running_loop().create_future()
        self._pending[tag] = fut
        self.writer.write(frame)
        return fut

    async def rpc(self, msg: Any) -> Any:
        _, fut = self.start(msg)
        reply = await fut
        if isinstance(reply, p.Rlerror):
            raise OSError(reply.ecode, f"{type(msg).__name__}: {os.strerror(reply.ecode)}")
        if isinstance(reply, (u.Rerror, u.RerrorPlain)):
            ecode = u.errno_of(reply)
            raise OSError(ecode, f"{type(msg).__name__}: {reply.ename}")
        return reply

    # --- conveniences --------------------------------------------------------------------

    async def version(self, msize: int = 512000, version: str = p.VERSION_9P2000L) -> p.Rversion:
        _, fut = self.start(p.Tversion(msize, version), tag=p.NOTAG)
        reply = await fut
        self.msize = reply.msize
        self.messages = {m.version: m for m in (p.DOTL, u.DOTU, u.PLAIN)}.get(
            reply.version, self.messages)
        return reply

    @property
    def dotl(self) -> bool:
        return self.messages is p.DOTL

    async def attach(self, uname: str = "root", n_uname: int = 0, aname: str = "") -> int:
        fid = self.new_fid()
        if self.messages is u.PLAIN:
            await self.rpc(u.TattachPlain(fid, p.NOFID, uname, aname))
        else:
            await self.rpc(p.Tattach(fid, p.NOFID, uname, aname, n_uname))
        return fid

    async def walk(self, fid: int, names: list[str], newfid: int | None = None) -> int:
        newfid = self.new_fid() if newfid is None else newfid
        reply = await self.rpc(p.Twalk(fid, newfid, names))
        if len(reply.wqids) != len(names):
            raise OSError(errno.ENOENT, f"walk stopped after {len(reply.wqids)} of {names}")
        return newfid

    async def clunk(self, fid: int) -> None:
        await self.rpc(p.Tclunk(fid))

    async def open(self, fid: int, flags: int = p.DOTL_RDONLY) -> p.Rlopen:
        return await self.rpc(p.Tlopen(fid, flags))

    async def walk_open(self, fid: int, names: list[str], flags: int = p.DOTL_RDONLY) -> int:
        newfid = await self.walk(fid, names)
        await self.open(newfid, flags)
        return newfid

    async def create(self, dfid: int, name: str, flags: int = p.DOTL_RDWR, mode: int = 0o644,
                     gid: int = 0) -> tuple[int, p.Rlcreate]:
        """Create *name* in *dfid*'s directory with a fresh fid; returns (fid, reply)."""
        fid = await self.walk(dfid, [])
        return fid, await self.rpc(p.Tlcreate(fid, name, flags, mode, gid))

    async def read(self, fid: int, offset: int, count: int) -> bytes:
        return (await self.rpc(p.Tread(fid, offset, count))).data

    async def write(self, fid: int, offset: int, data: bytes) -> int:
        return (await self.rpc(p.Twrite(fid, offset, data))).count

    async def read_all(self, fid: int) -> bytes:
        out = bytearray()
        chunk = self.msize - p.IOHDRSZ
        while True:
            data = await self.read(fid, len(out), chunk)
            if not data:
                return bytes(out)
            out += data

    async def getattr(self, fid: int, mask: int = p.GETATTR_ALL) -> p.Rgetattr:
        return await self.rpc(p.Tgetattr(fid, mask))

    async def readdir_all(self, fid: int, count: int = 8192) -> list[tuple[p.Qid, int, int, str]]:
        entries: list[tuple[p.Qid, int, int, str]] = []
        offset = 0
        while True:
            data = (await self.rpc(p.Treaddir(fid, offset, count))).data
            if not data:
                return entries
            batch = p.decode_dirents(data)
            entries.extend(batch)
            offset = batch[-1][1]

    async def mkdir(self, dfid: int, name: str, mode: int = 0o755, gid: int = 0) -> p.Qid:
        return (await self.rpc(p.Tmkdir(dfid, name, mode, gid))).qid

    async def unlinkat(self, dfid: int, name: str, flags: int = 0) -> None:
        await self.rpc(p.Tunlinkat(dfid, name, flags))

    # --- 9P2000.u / 9P2000 -------------------------------------------------------------

    async def topen(self, fid: int, mode: int = u.OREAD) -> u.Ropen:
        return await self.rpc(u.Topen(fid, mode))

    async def tcreate(self, dfid: int, name: str, perm: int = 0o644, mode: int = u.ORDWR,
                      extension: str = "") -> tuple[int, u.Rcreate]:
        """Tcreate *name* in *dfid*'s directory with a fresh fid; returns (fid, reply)."""
        fid = await self.walk(dfid, [])
        if self.messages is u.PLAIN:
            return fid, await self.rpc(u.TcreatePlain(fid, name, perm, mode))
        return fid, await self.rpc(u.Tcreate(fid, name, perm, mode, extension))

    async def stat(self, fid: int) -> u.Dir | u.DirU:
        return (await self.rpc(u.Tstat(fid))).stat

    async def wstat(self, fid: int, **changes: Any) -> None:
        """Twstat changing only *changes* (every other field "don't touch")."""
        if self.messages is u.PLAIN:
            await self.rpc(u.TwstatPlain(fid, u.DONT_TOUCH_PLAIN._replace(**changes)))
        else:
            await self.rpc(u.Twstat(fid, u.DONT_TOUCH._replace(**changes)))

    async def read_dir(self, fid: int, count: int = 8192) -> list[u.Dir | u.DirU]:
        """Every stat of an open directory, reading on from where each read ended."""
        out: list[u.Dir | u.DirU] = []
        offset = 0
        while data := await self.read(fid, offset, count):
            out += u.decode_dirs(data, dotu=self.messages is u.DOTU)
            offset += len(data)
        return out

