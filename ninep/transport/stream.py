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
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from ..backends.base import Backend
from ..protocol import framing
from ..server.session import Session, SessionConfig
from .base import BufferSink

log = logging.getLogger("ninep.stream")


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


class StreamConnection(asyncio.BufferedProtocol):
    """One client connection: frames out of the byte stream into a Session.

    A protocol rather than a StreamReader coroutine: the loop hands us bytes
    and we cut frames with no await per frame.  Small frames are read in bulk
    into one receive buffer and copied out; a frame larger than that buffer
    is read by the kernel straight into its own bytearray, so a Twrite's data
    reaches ``pwritev`` without a reassembly copy (bench/OPTIMISATIONS.md).

    Frames the session has no room for wait in a queue of max_inflight more;
    only when that is full too does reading pause, so memory stays bounded.
    Reading also pauses while the replies the peer is not collecting exceed
    4 msize.  A Tflush never waits: it removes its target if still queued
    here, else goes to the session.
    """

    RECV_BUFFER = 64 * 1024

    def __init__(self, session: Session) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.peer = "a local peer"
        self._buf = bytearray(self.RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte in _buf
        self._end = 0  # end of the received bytes in _buf
        self._big: bytearray | None = None  # a large frame being read in place
        self._big_got = 0
        self._waiting: collections.deque[bytes | bytearray] = collections.deque()
        self._paused: set[str] = set()
        self._submitter: asyncio.Task | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- asyncio.BufferedProtocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport, but alike).
        self.transport = stream = cast(asyncio.Transport, transport)
        if "lost" in self._paused:  # the server was closing when this one arrived
            transport.close()
            return
        self.peer = transport.get_extra_info("peername") or "a local peer"
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream.set_write_buffer_limits(high=4 * self.session.msize)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_got:]
        if self._end == len(self._buf):
            self._compact()
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_got += nbytes
            if self._big_got < len(self._big):
                return
            frame, self._big = self._big, None
            self._frame(frame)
        else:
            self._end += nbytes
        self._cut_frames()

    def eof_received(self) -> bool:
        return False  # close our side too: the session ends with the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._paused.add("lost")
        self._big = None
        self._waiting.clear()
        if self._submitter is not None:
            self._submitter.cancel()
        asyncio.get_running_loop().create_task(self._finish())

    def pause_writing(self) -> None:
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")

    # --- frames -------------------------------------------------------------------------

    def _cut_frames(self) -> None:
        """Submit every complete frame in the receive buffer; start reading a
        large partial one in place."""
        buf, msize = self._buf, self.session.msize
        while "lost" not in self._paused and self._end - self._start >= framing.SIZE_BYTES:
            size = framing.frame_size(buf, self._start)
            if size < framing.MIN_FRAME_SIZE or size > msize:
                log.warning("closing connection from %s: bad frame size %d (msize %d)",
                            self.peer, size, msize)
                self.close()
                return
            have = self._end - self._start
            if have >= size:
                frame = bytes(self._view[self._start:self._start + size])
                self._start += size
                self._frame(frame)
            elif size > len(buf):
                self._big = bytearray(size)
                self._big[:have] = self._view[self._start:self._end]
                self._big_got = have
                self._start = self._end = 0
                return
            else:
                break
        if self._start == self._end:
            self._start = self._end = 0

    def _compact(self) -> None:
        """Move a partial frame to the front of the receive buffer."""
        n = self._end - self._start
        self._buf[:n] = self._view[self._start:self._end]
        self._start, self._end = 0, n

    def _frame(self, frame: bytes | bytearray) -> None:
        if framing.is_tflush(frame):
            _forget_queued(self._waiting, frame)
            self._submit(frame)
        elif not self._waiting and not self.session.full:
            self._submit(frame)
        else:
            self._waiting.append(frame)
            if self._submitter is None or self._submitter.done():
                self._submitter = asyncio.get_running_loop().create_task(self._submit_when_room())
            if len(self._waiting) > self.session.config.max_inflight:
                self._pause("inflight")

    def _submit(self, frame: bytes | bytearray) -> None:
        self.session.submit([memoryview(frame)], BufferSink(self._deliver, self.session.msize))

    async def _submit_when_room(self) -> None:
        while self._waiting:
            await self.session.room()
            if self._waiting:
                self._submit(self._waiting.popleft())
                if len(self._waiting) <= self.session.config.max_inflight:
                    self._resume("inflight")

    def _deliver(self, data: bytes | bytearray | memoryview) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # --- flow control and end -------------------------------------------------------------

    def _pause(self, why: str) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused.add(why)

    def _resume(self, why: str) -> None:
        if why in self._paused:
            self._paused.discard(why)
            if not self._paused and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        """End the connection from our side; the session then releases its fids
        as after a client disconnect."""
        self._paused.add("lost")
        if self.transport is not None:
            self.transport.close()

    async def _finish(self) -> None:
        try:
            if self._submitter is not None:
                await asyncio.gather(self._submitter, return_exceptions=True)
            await self.session.close()
        finally:
            if not self.done.done():
                self.done.set_result(None)


def _forget_queued(waiting: collections.deque[bytes | bytearray],
                   tflush: bytes | bytearray) -> None:
    """Drop the queued request a Tflush names: it never reached the session,
    so it never answers, and the Rflush alone completes it."""
    oldtag = framing.flushed_tag(tflush)
    for frame in waiting:
        if framing.tag_of(frame) == oldtag:
            waiting.remove(frame)
            return


class StreamServer:
    """Accepts connections on one listen address; one Session each."""

    def __init__(self, backend_factory: Callable[[], Backend], config: SessionConfig) -> None:
        self.backend_factory = backend_factory
        self.config = config
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Future[None]] = set()
        self._streams: set[StreamConnection] = set()
        self._unix_path: str | None = None
        self._closing = False
        #: An inherited connected socket, served from serve_forever() (``serving=False``).
        self._unserved: socket.socket | None = None

    def _connection(self) -> StreamConnection:
        """Protocol factory: a new connection with its own Session."""
        conn = StreamConnection(Session(self.backend_factory(), self.config))
        self._streams.add(conn)
        self._connections.add(conn.done)
        conn.done.add_done_callback(lambda _: self._forget(conn))
        if self._closing:
            conn.close()
        return conn

    def _forget(self, conn: StreamConnection) -> None:
        """A connection ended: it no longer counts as open."""
        self._streams.discard(conn)
        self._connections.discard(conn.done)

    async def start(self, address: ListenAddress, *, serving: bool = True) -> None:
        """Listen on *address*.  With ``serving=False`` the socket is bound and
        listening but nothing is accepted until :meth:`start_serving`, nor an
        inherited connection read until :meth:`serve_forever`: the CLI
        confines the process in between."""
        loop = asyncio.get_running_loop()
        if address.kind == "unix":
            sock = _listening_unix_socket(address.path)
            self._server = await loop.create_unix_server(self._connection, sock=sock,
                                                         start_serving=serving)
            self._unix_path = address.path
        elif address.kind == "tcp":
            self._server = await loop.create_server(self._connection, address.host, address.port,
                                                    start_serving=serving)
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
            if not connected:
                self._server = await loop.create_server(self._connection, sock=sock,
                                                        start_serving=serving)
            elif serving:
                await loop.connect_accepted_socket(self._connection, sock)
            else:
                self._unserved = sock

    def start_serving(self) -> None:
        """Accept from the loop's next pass on (after ``start(serving=False)``)."""
        if self._server is not None:
            start_serving_now(self._server)

    @property
    def sockets(self) -> list[socket.socket]:
        # asyncio.Server's, which AbstractServer (the annotation) does not declare.
        return list(getattr(self._server, "sockets", ())) if self._server else []

    @property
    def sessions(self) -> list[Session]:
        """The sessions of the connections open now."""
        return [conn.session for conn in self._streams]

    async def serve_forever(self) -> None:
        if self._unserved is not None:
            sock, self._unserved = self._unserved, None
            await asyncio.get_running_loop().connect_accepted_socket(self._connection, sock)
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
        if self._unserved is not None:
            self._unserved.close()
            self._unserved = None
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


def start_serving_now(server: asyncio.AbstractServer) -> None:
    """``server.start_serving()`` without letting the loop run.

    Starting calls listen(2) again, so it must precede the seccomp filter,
    while the first accept must follow confinement: asyncio's start_serving
    then skips a loop pass, in which a waiting connection would be accepted,
    so the coroutine is run to that pause only (uvloop's never pauses).
    """
    starting = server.start_serving()
    try:
        starting.send(None)
    except StopIteration:
        return
    starting.close()


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
