"""A message spread over several buffers: views, and copies in and out of them.

A request arrives as *segments* (one view for a stream, one per readable
descriptor for a virtqueue) and a reply may be written into segments of
guest memory.  These helpers know nothing of what the bytes mean, so the
protocol's framing, the dispatcher and the device-agnostic virtqueue all
use them.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import accumulate

Segments = Sequence[memoryview]


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
