"""Helpers for the dispatcher tests (importable by test modules, unlike conftest):
a back end whose calls wait at a gate, and a driver that talks to a Session
with no transport in between."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ninep.backends.local import LocalBackend
from ninep.protocol import ninep as p
from ninep.server.session import Session
from ninep.transport.base import BufferSink


class GatedBackend(LocalBackend):
    """A LocalBackend whose ``statfs`` and ``readlink`` wait for :attr:`gate`.

    ``entered`` counts the calls that reached the back end, so a test knows a
    request has *started* (and with ``max_inflight=1``, that others have not).
    """

    def __init__(self, export: str) -> None:
        super().__init__(export, threads=4)
        self.gate = asyncio.Event()
        self.entered = 0
        self._arrived = asyncio.Condition()

    async def _hold(self) -> None:
        async with self._arrived:
            self.entered += 1
            self._arrived.notify_all()
        await self.gate.wait()

    async def wait_entered(self, n: int) -> None:
        async with self._arrived:
            await self._arrived.wait_for(lambda: self.entered >= n)

    async def statfs(self, node: Any) -> Any:
        await self._hold()
        return await super().statfs(node)

    async def readlink(self, node: Any) -> str:
        await self._hold()
        return await super().readlink(node)


class FutureSink(BufferSink):
    """Collects the one reply to a request in a future; records a drop."""

    def __init__(self, capacity: int) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.dropped = False
        super().__init__(self._got, capacity)

    def _got(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.reply.done(), "a second reply to one request"
        self.reply.set_result(bytes(data))

    def drop(self) -> None:
        self.dropped = True


class Direct:
    """Talks to a :class:`Session` with no transport in between."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def submit(self, frame: bytes, capacity: int | None = None) -> FutureSink:
        sink = FutureSink(capacity or self.session.msize)
        self.session.submit([memoryview(bytearray(frame))], sink)
        return sink

    async def frame(self, frame: bytes, capacity: int | None = None) -> tuple[int, Any]:
        return p.decode(await self.submit(frame, capacity).reply)

    async def call(self, msg: Any, tag: int = 1, capacity: int | None = None) -> Any:
        """The reply message (Rlerror included) to *msg*."""
        reply_tag, reply = await self.frame(p.encode(msg, tag), capacity)
        assert reply_tag == tag
        return reply

    async def ok(self, msg: Any, **kw: Any) -> Any:
        reply = await self.call(msg, **kw)
        assert not isinstance(reply, p.Rlerror), f"{msg}: {os.strerror(reply.ecode)}"
        return reply
