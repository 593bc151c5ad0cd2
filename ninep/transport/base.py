"""What the transports share: the in-memory reply sink a stream (and a test) uses.

The sink interface is the server's (:mod:`ninep.server.sink`), and the frame
and segment helpers are the protocol's (:mod:`ninep.protocol.framing`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..server.sink import ReplySink


class BufferSink(ReplySink):
    """A sink that collects the reply in memory and hands it to a callback.

    Used by the stream transport and by tests.
    """

    def __init__(self, deliver: Callable[[bytes | bytearray | memoryview], None],
                 capacity: int) -> None:
        self._deliver = deliver
        self.capacity = capacity
        self._buffer: bytearray | None = None

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self._deliver(data)

    def reserve(self, size: int) -> list[memoryview]:
        self._buffer = bytearray(size)
        return [memoryview(self._buffer)]

    def commit(self, length: int) -> None:
        assert self._buffer is not None
        buf = self._buffer
        self._buffer = None
        self._deliver(memoryview(buf)[:length] if length != len(buf) else buf)
