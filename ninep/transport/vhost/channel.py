"""The vhost-user socket: messages in with their SCM_RIGHTS fds, replies out.

A front end's connection is a Unix stream socket; each message's fds come as
ancillary data with its bytes.  :class:`VhostUserChannel` reads whole
:class:`~ninep.transport.vhost.messages.Message` objects off it (fds received
close-on-exec, and closed again if the message is torn) and writes replies,
including the REPLY_ACK u64 a ``need_reply`` request without a reply of its own
expects.  What the messages mean is the device's business.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

from .messages import (ACK_FAILURE, ACK_SUCCESS, HEADER, MAX_FDS, MAX_PAYLOAD, Message,
                       decode_header, encode_reply, request_name)


class ConnectionDropped(Exception):
    """The connection cannot continue (a reply that cannot be given, a torn message)."""


class VhostUserChannel:
    """Reads and writes vhost-user messages on a non-blocking Unix stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()

    async def _wait_readable(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = self.sock.fileno()

        def readable() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_reader(fd, readable)
        try:
            await fut
        finally:
            self._loop.remove_reader(fd)

    async def _recv(self, n: int, fds: list[int]) -> bytes:
        """Exactly *n* bytes (b"" at a clean EOF before any), collecting passed fds."""
        chunks: list[bytes] = []
        got = 0
        while got < n:
            try:
                data, ancdata, msg_flags, _ = self.sock.recvmsg(
                    n - got, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable()
                continue
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(cdata) - len(cdata) % 4
                    fds.extend(struct.unpack(f"<{usable // 4}i", cdata[:usable]))
            if msg_flags & socket.MSG_CTRUNC:
                raise ConnectionDropped("more fds than any message carries")
            if not data:
                if got:
                    raise ConnectionDropped("connection closed in the middle of a message")
                return b""
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    async def read_message(self) -> Message | None:
        """The next message, or None when the front end has gone."""
        fds: list[int] = []
        try:
            head = await self._recv(HEADER.size, fds)
            if not head:
                return None
            request, flags, size = decode_header(head)
            if size > MAX_PAYLOAD:
                raise ConnectionDropped(f"{request_name(request)} with a {size}-byte payload")
            payload = await self._recv(size, fds) if size else b""
            if size and not payload:
                raise ConnectionDropped("connection closed in the middle of a message")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Message(request, flags, payload, fds)

    async def send_reply(self, request: int, payload: bytes) -> None:
        await self._loop.sock_sendall(self.sock, encode_reply(request, payload))

    async def send_ack(self, request: int, ok: bool) -> None:
        """REPLY_ACK: u64 0 for success, 1 for failure."""
        await self.send_reply(request, ACK_SUCCESS if ok else ACK_FAILURE)


__all__ = ["VhostUserChannel", "ConnectionDropped"]
