"""The connection to a proxy helper: requests out, replies and passed fds in.

One :class:`HelperConnection` is one socket, used by one caller at a time
(the protocol has no tags).  The reply helpers turn a helper's error status
into the ``OSError`` the back end raises; :class:`HelperLost` is what a
broken connection becomes (EIO for the guest).
"""

from __future__ import annotations

import array
import asyncio
import errno
import os
import socket
from collections.abc import Sequence
from typing import TypeVar

from ...protocol import proxy as P

T = TypeVar("T")

#: One recvmsg takes a whole reply (the largest is a header plus PROXY_MAX_IO_SZ).
_RECV_SIZE = P.PROXY_HDR_SZ + P.PROXY_MAX_IO_SZ
#: Room for a few fds; the helper sends at most one per reply.
_ANCILLARY_SIZE = socket.CMSG_SPACE(4 * array.array("i").itemsize)
#: Errnos that mean the helper is gone rather than that one request failed.
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNREFUSED, errno.ENOENT)


def os_error(code: int, what: str = "") -> OSError:
    """``OSError(code)`` as the right subclass (FileNotFoundError …)."""
    return OSError(code, f"{os.strerror(code)}{': ' + what if what else ''}")


class HelperLost(OSError):
    """The connection to the helper broke (EOF, reset, garbage): EIO for the guest."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EIO, f"proxy helper connection lost: {why}")


def reply_status(reply: P.Reply) -> int:
    """The status of a Status/FdReply; raises the helper's errno when negative."""
    status = reply.status  # type: ignore[union-attr]
    if status < 0:
        raise os_error(-status)
    return status


def expect_reply(reply: P.Reply, kind: type[T]) -> T:
    """*reply* as a *kind* payload; an error Status raises its errno."""
    if isinstance(reply, kind):
        return reply
    if isinstance(reply, P.Status):
        reply_status(reply)
    raise HelperLost(f"unexpected reply {type(reply).__name__}")


Replies = list[tuple[P.Reply, "int | None"]]


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class HelperConnection:
    """One socket to the helper, used by one caller at a time.

    :meth:`call` sends a batch of requests at once (the helper answers in
    order) and returns their replies, each with the fd that came with it.
    Any transport or protocol failure closes the connection for good and
    raises :class:`HelperLost`; a cancelled call closes it too, since its
    replies would otherwise answer the next caller's requests.
    """

    def __init__(self, sock: socket.socket, generation: int = 0) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.generation = generation
        self.broken = False
        #: The helper hung up (EOF, reset): other connections are likely dead too.
        self.helper_gone = False
        self._decoder = P.ReplyDecoder()
        self._fds: list[int] = []

    def idle_and_alive(self) -> bool:
        """False if the helper closed this connection while it sat idle."""
        if self.broken:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            pass
        return False  # EOF, or bytes nobody asked for

    def close(self) -> None:
        self.broken = True
        self.sock.close()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    async def call(self, requests: Sequence[P.Request]) -> Replies:
        try:
            data = b"".join(P.encode_request(r) for r in requests)
        except P.ProxyProtocolError:
            raise os_error(errno.EINVAL, "request does not fit the proxy protocol") from None
        if self.broken:
            raise HelperLost("connection closed")
        got: Replies = []
        try:
            for request in requests:
                self._decoder.expect(request)
            await self._send(data)
            await self._readable()  # the helper cannot have answered yet
            while len(got) < len(requests):
                msg = self._decoder.next_message()
                if msg is None:
                    await self._receive()
                    continue
                fd = None
                if isinstance(msg, P.FdReply) and msg.has_fd:
                    if not self._fds:
                        raise P.ProxyProtocolError("V9FS_FD_VALID came without an fd")
                    fd = self._fds.pop(0)
                got.append((msg, fd))
            if self._fds:
                raise P.ProxyProtocolError("an fd came with no reply that announced it")
            return got
        except BaseException as exc:
            for _, fd in got:
                if fd is not None:
                    os.close(fd)
            self.close()
            if isinstance(exc, (P.ProxyProtocolError, EOFError)):
                self.helper_gone = isinstance(exc, EOFError)
                raise HelperLost(str(exc) or "end of file") from None
            if isinstance(exc, OSError):
                self.helper_gone = exc.errno in _GONE
                raise HelperLost(exc.strerror or str(exc)) from None
            raise

    async def _send(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await asyncio.get_running_loop().sock_sendall(self.sock, memoryview(data)[sent:])

    async def _receive(self) -> None:
        """One recvmsg into the decoder; SCM_RIGHTS fds are kept in arrival order."""
        while True:
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(_RECV_SIZE, _ANCILLARY_SIZE,
                                                              socket.MSG_CMSG_CLOEXEC)
                break
            except BlockingIOError:
                await self._readable()
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise P.ProxyProtocolError("more fds than expected arrived")
        if not data:
            raise EOFError("the helper closed the connection")
        self._decoder.feed(data)

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = self.sock.fileno()
        loop.add_reader(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_reader(fd)
