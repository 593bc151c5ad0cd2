"""Stream transport: 9P over a Unix or TCP socket, or an inherited fd.

Serves the Linux client's ``trans=unix``, ``trans=tcp`` and ``trans=fd`` and
any tool.  Frames are read by their size prefix; a bad size closes that
connection with a one-line log and the others carry on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ..backends.base import Backend
from ..server.session import Session, SessionConfig
from .base import BufferSink

log = logging.getLogger("ninep.stream")

_SIZE = struct.Struct("<I")


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

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername") or "fd"
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
                sink = BufferSink(self._deliver, self.session.msize)
                self.session.submit([memoryview(frame)], sink)
                if self.writer.transport.get_write_buffer_size() > 4 * self.session.msize:
                    await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await self.session.close()
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class StreamServer:
    """Accepts connections on one listen address; one Session each."""

    def __init__(self, backend_factory: Callable[[], Backend], config: SessionConfig) -> None:
        self.backend_factory = backend_factory
        self.config = config
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = StreamConnection(reader, writer, Session(self.backend_factory(), self.config))
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await conn.run()
        finally:
            self._connections.discard(task)

    async def start(self, address: ListenAddress) -> None:
        limit = self.config.msize + 4096
        if address.kind == "unix":
            if os.path.exists(address.path):
                os.unlink(address.path)
            self._server = await asyncio.start_unix_server(self._handle, address.path, limit=limit)
        elif address.kind == "tcp":
            self._server = await asyncio.start_server(self._handle, address.host, address.port,
                                                      limit=limit)
        else:
            sock = socket.socket(fileno=address.fd)
            if sock.type != socket.SOCK_STREAM:
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

    async def serve_forever(self) -> None:
        if self._server is not None:
            await self._server.serve_forever()
        else:
            while self._connections:
                await asyncio.gather(*self._connections, return_exceptions=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
