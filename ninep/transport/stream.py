"""Stream transport: 9P over a Unix or TCP socket, or an inherited fd.

Serves the Linux client's ``trans=unix``, ``trans=tcp`` and ``trans=fd`` and
any tool.  Frames are read by their size prefix; a bad size closes that
connection with a one-line log and the others carry on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..backends.base import Backend
from ..protocol.ninep import Tflush
from ..server.session import Session, SessionConfig
from .base import BufferSink

log = logging.getLogger("ninep.stream")

_SIZE = struct.Struct("<I")
_TFLUSH = Tflush.TYPE


@dataclass(frozen=True, slots=True)
class ListenAddress:
    kind: str  # "unix" | "tcp" | "fd"
    path: str = ""
    host: str = ""
    port: int = 0
    fd: int = -1

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """``unix:PATH``, ``tcp:HOST:PORT`` (host defaults to 127.0.0.1) or ``fd:N``."""
        kind, _, rest = text.partition(":")
        if kind == "unix" and rest:
            return cls("unix", path=rest)
        if kind == "tcp" and rest:
            host, _, port = rest.rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            if port.isdigit() and 0 <= int(port) < 65536:
                return cls("tcp", host=host, port=int(port))
        if kind == "fd" and rest.isdigit():
            return cls("fd", fd=int(rest))
        raise ValueError(f"--listen: expected unix:PATH, tcp:HOST:PORT or fd:N, not {text!r}")

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "tcp":
            return f"tcp:[{self.host}]:{self.port}" if ":" in self.host else \
                f"tcp:{self.host}:{self.port}"
        return f"fd:{self.fd}"


class StreamConnection:
    """One client connection: reads frames, feeds a Session, writes replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session: Session) -> None:
        self.reader = reader
        self.writer = writer
        self.session = session

    def _deliver(self, data: bytes | bytearray | memoryview) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        """End the connection from our side: :meth:`run` then sees EOF and
        cleans up as after a client disconnect (the session releases its fids)."""
        self.writer.close()

    async def run(self) -> None:
        """Read frames until EOF; submit them, holding back those over max_inflight.

        Frames the session has no room for wait in a queue of max_inflight
        more; only when that is full too does reading stop, so memory stays
        bounded while a disconnect is still noticed.  A Tflush never waits:
        it removes its target if still queued here, else goes to the session.
        """
        peer = self.writer.get_extra_info("peername") or "a local peer"
        waiting: collections.deque[bytearray] = collections.deque()
        queued = asyncio.Event()
        submitter = asyncio.ensure_future(self._submit_when_room(waiting, queued))
        try:
            while True:
                head = await self.reader.readexactly(4)
                (size,) = _SIZE.unpack(head)
                if size < 7 or size > self.session.msize:
                    log.warning("closing connection from %s: bad frame size %d (msize %d)",
                                peer, size, self.session.msize)
                    break
                frame = bytearray(size)
                frame[:4] = head
                frame[4:] = await self.reader.readexactly(size - 4)
                if frame[4] == _TFLUSH:
                    _forget_queued(waiting, frame)
                    self._submit(frame)
                elif not waiting and not self.session.full:
                    self._submit(frame)
                else:
                    waiting.append(frame)
                    queued.set()
                    while len(waiting) > self.session.config.max_inflight:
                        await self.session.room()
                        await asyncio.sleep(0)  # let the submitter move the queue on
                if self.writer.transport.get_write_buffer_size() > 4 * self.session.msize:
                    await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            submitter.cancel()
            await asyncio.gather(submitter, return_exceptions=True)
            await self.session.close()
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    def _submit(self, frame: bytearray) -> None:
        self.session.submit([memoryview(frame)], BufferSink(self._deliver, self.session.msize))

    async def _submit_when_room(self, waiting: collections.deque[bytearray],
                                queued: asyncio.Event) -> None:
        while True:
            await queued.wait()
            while waiting:
                await self.session.room()
                if waiting:
                    self._submit(waiting.popleft())
            queued.clear()


def _forget_queued(waiting: collections.deque[bytearray], tflush: bytearray) -> None:
    """Drop the queued request a Tflush names: it never reached the session,
    so it never answers, and the Rflush alone completes it."""
    oldtag = tflush[7:9]
    for frame in waiting:
        if frame[5:7] == oldtag:
            waiting.remove(frame)
            return


class StreamServer:
    """Accepts connections on one listen address; one Session each."""

    def __init__(self, backend_factory: Callable[[], Backend], config: SessionConfig) -> None:
        self.backend_factory = backend_factory
        self.config = config
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()
        self._streams: set[StreamConnection] = set()
        self._unix_path: str | None = None
        self._closing = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if self._closing:
                writer.close()
                return
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = StreamConnection(reader, writer, Session(self.backend_factory(), self.config))
            self._streams.add(conn)
            try:
                await conn.run()
            finally:
                self._streams.discard(conn)
        except asyncio.CancelledError:
            pass  # the loop is going away; a cancelled handler makes asyncio log noise
        finally:
            self._connections.discard(task)

    async def start(self, address: ListenAddress) -> None:
        limit = self.config.msize + 4096
        if address.kind == "unix":
            sock = _listening_unix_socket(address.path)
            self._server = await asyncio.start_unix_server(self._handle, sock=sock, limit=limit)
            self._unix_path = address.path
        elif address.kind == "tcp":
            self._server = await asyncio.start_server(self._handle, address.host, address.port,
                                                      limit=limit)
        else:
            sock = socket.socket(fileno=address.fd)
            if sock.type != socket.SOCK_STREAM:
                sock.close()
                raise ValueError(f"--listen fd:{address.fd} is not a stream socket")
            try:
                sock.getpeername()
                connected = True
            except OSError:
                connected = False
            if connected:
                reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
                task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
                self._connections.add(task)
            else:
                self._server = await asyncio.start_server(self._handle, sock=sock, limit=limit)

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server else []

    @property
    def sessions(self) -> list[Session]:
        """The sessions of the connections open now."""
        return [conn.session for conn in self._streams]

    async def serve_forever(self) -> None:
        if self._server is not None:
            await self._server.serve_forever()
        else:
            await self.join_connections()

    async def join_connections(self) -> None:
        """Wait until every connection has ended (and its session released its fids).

        Cancelling the wait leaves the connections alone (unlike ``gather``),
        so a cancelled serve_forever never interrupts a session's cleanup.
        """
        while self._connections:
            await asyncio.wait(set(self._connections))

    async def close(self) -> None:
        """Stop listening, end every connection, remove our Unix socket."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        # Closing (not cancelling) lets each session finish and release its fids.
        for conn in list(self._streams):
            conn.close()
        await self.join_connections()
        if self._server is not None:
            await self._server.wait_closed()
        if self._unix_path is not None:
            _remove_stale_socket(self._unix_path)
            self._unix_path = None


def _listening_unix_socket(path: str) -> socket.socket:
    """A socket listening at *path*, which appears only once it accepts.

    It is bound at ``path~`` and renamed into place after listen(), so a
    client (or QEMU, or a test) that waits for the path to exist never meets
    a refused connection.
    """
    _remove_stale_socket(path)
    tmp = path + "~"
    _remove_stale_socket(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        sock.listen(socket.SOMAXCONN)
        os.rename(tmp, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    """Unlink a leftover socket at *path*; refuse to clobber anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    os.unlink(path)
