"""What a transport hands the dispatcher: a request and a sink for its reply.

A request is a list of readable memoryviews that together hold exactly one
9P frame (one view for a stream, one per readable descriptor for a
virtqueue).  The reply goes into a :class:`ReplySink`, which either collects
bytes to write to a socket or scatters them straight into guest memory.  The
dispatcher never knows which.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate

Segments = Sequence[memoryview]


class ReplySink(ABC):
    """Where exactly one reply to one request goes."""

    #: Most bytes a reply may have (virtqueue: the writable descriptors' total).
    capacity: int

    @abstractmethod
    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Deliver a fully encoded reply."""

    @abstractmethod
    def reserve(self, size: int) -> list[memoryview]:
        """Writable views over the first *size* bytes of the reply, for
        zero-copy replies (Rread).  ``size <= capacity``."""

    @abstractmethod
    def commit(self, length: int) -> None:
        """Deliver the first *length* bytes written through :meth:`reserve`."""

    def drop(self) -> None:
        """The request was flushed: deliver nothing if the transport allows it.

        Transports that must return every buffer (virtqueues) override this to
        complete the request with the Rlerror the dispatcher wrote beforehand.
        """


def total_length(segments: Segments) -> int:
    return sum(len(s) for s in segments)


def slice_segments(segments: Segments, start: int, length: int) -> list[memoryview]:
    """Views covering bytes ``[start, start+length)`` of the concatenated segments.

    Whole segments are handed back as they are and only the two ends are cut;
    the lookup runs in C (accumulate, bisect), as a 512 KiB Tread's reply has
    over a hundred segments.
    """
    if length <= 0 or start < 0:
        return []
    ends = list(accumulate(map(len, segments)))
    first = bisect_right(ends, start)  # the segment holding byte *start*
    if first == len(ends):
        return []
    stop = start + length
    last = min(bisect_left(ends, stop), len(ends) - 1)  # the one holding byte stop-1
    out = list(segments[first:last + 1])
    head_skip = start - (ends[first] - len(segments[first]))
    tail_cut = ends[last] - stop
    if first == last:
        seg = out[0]
        out[0] = seg[head_skip:len(seg) - max(tail_cut, 0)] if head_skip or tail_cut > 0 else seg
        return out
    if head_skip:
        out[0] = out[0][head_skip:]
    if tail_cut > 0:
        out[-1] = out[-1][:len(out[-1]) - tail_cut]
    return out


def scatter(segments: Segments, data: bytes | memoryview, start: int = 0) -> None:
    """Copy *data* into the segments beginning at byte *start*."""
    pos = 0
    for view in slice_segments(segments, start, len(data)):
        n = len(view)
        view[:] = data[pos:pos + n]
        pos += n


def gather(segments: Segments, start: int, length: int) -> bytes:
    """Copy bytes ``[start, start+length)`` of the segments into one bytes object."""
    views = slice_segments(segments, start, length)
    if len(views) == 1:
        return bytes(views[0])
    return b"".join(views)


class BufferSink(ReplySink):
    """A sink that collects the reply in memory and hands it to a callback.

    Used by the stream transport and by tests.
    """

    def __init__(self, deliver, capacity: int) -> None:
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
