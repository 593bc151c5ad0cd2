"""Where things are in a 9P frame, for the code that moves frames around.

A transport cuts frames out of a byte stream or finds them in descriptor
chains, and hands the dispatcher a frame as *segments* (a list of views that
together hold it: one for a stream, one per readable descriptor for a
virtqueue).  Everything that knows a byte offset inside a frame lives here,
sans-IO, so that neither the transports nor the dispatcher reads one
itself: the size prefix and the tags a stream needs to cut frames and drop a
flushed one, the header the dispatcher routes by, and the fixed heads of the
hot requests (Tread, Twrite) and of Rread, which is written in place, and
what the statistics read off a reply on its way out.
"""

from __future__ import annotations

from ..segments import Segments, gather, scatter, slice_segments, total_length
from .ninep import (FAST_FID_OFFSET_COUNT, FAST_TWRITE_HEAD, HEADER_SIZE, IOHDRSZ_REPLY,
                    ProtocolError, Tflush, decode_header, encode_rread_header)

#: Bytes of the size prefix, which counts the whole frame (itself included).
SIZE_BYTES = 4
#: The smallest frame there is: a header alone (size, type, tag).
MIN_FRAME_SIZE = HEADER_SIZE
_SIZE_OFFSET, _TYPE_OFFSET, _TAG_OFFSET = 0, 4, 5
_TFLUSH = Tflush.TYPE
_TFLUSH_OLDTAG = slice(HEADER_SIZE, HEADER_SIZE + 2)
_TWRITE_DATA = HEADER_SIZE + FAST_TWRITE_HEAD.size


# --- a stream's view: one contiguous frame -------------------------------------------------

def frame_size(buffer: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The size prefix of the frame that begins at *start* (at least
    :data:`SIZE_BYTES` must be there)."""
    return int.from_bytes(buffer[start:start + SIZE_BYTES], "little")


def is_tflush(frame: bytes | bytearray | memoryview) -> bool:
    return frame[_TYPE_OFFSET] == _TFLUSH


def tag_of(frame: bytes | bytearray | memoryview) -> int:
    """The tag of a whole frame (request or reply)."""
    return int.from_bytes(frame[_TAG_OFFSET:_TAG_OFFSET + 2], "little")


def flushed_tag(tflush: bytes | bytearray | memoryview) -> int:
    """The oldtag a whole Tflush frame names."""
    return int.from_bytes(tflush[_TFLUSH_OLDTAG], "little")


# --- the dispatcher's view: a request as segments ------------------------------------------

def peek_header(request: Segments) -> tuple[int, int, int]:
    """``(size, type, tag)`` of a request; ProtocolError if it is shorter than a header."""
    if len(request) == 1:
        return decode_header(request[0])
    return decode_header(gather(request, 0, min(HEADER_SIZE, total_length(request))))


def body_of(request: Segments) -> bytes | memoryview:
    """Everything after the header (a view when the request is one segment)."""
    if len(request) == 1:
        return request[0][HEADER_SIZE:]
    return gather(request, HEADER_SIZE, total_length(request) - HEADER_SIZE)


def tread_args(request: Segments) -> tuple[int, int, int]:
    """``(fid, offset, count)`` of a Tread, without building a message."""
    body = gather(request, HEADER_SIZE, total_length(request) - HEADER_SIZE)
    if len(body) != FAST_FID_OFFSET_COUNT.size:
        raise ProtocolError("malformed Tread")
    return FAST_FID_OFFSET_COUNT.unpack(body)


def twrite_args(request: Segments) -> tuple[int, int, int]:
    """``(fid, offset, count)`` of a Twrite whose count matches its frame."""
    length = total_length(request)
    head = gather(request, HEADER_SIZE, min(length - HEADER_SIZE, FAST_TWRITE_HEAD.size))
    if len(head) != FAST_TWRITE_HEAD.size:
        raise ProtocolError("truncated Twrite")
    fid, offset, count = FAST_TWRITE_HEAD.unpack(head)
    if _TWRITE_DATA + count != length:
        raise ProtocolError("Twrite count does not match its frame")
    return fid, offset, count


def twrite_data(request: Segments, count: int) -> list[memoryview]:
    """Views over the first *count* bytes of a Twrite's data, in place."""
    return slice_segments(request, _TWRITE_DATA, count)


# --- an Rread written in place -------------------------------------------------------------

def rread_size(count: int) -> int:
    """Bytes an Rread of *count* data bytes takes."""
    return IOHDRSZ_REPLY + count


def rread_data(reply: Segments, count: int) -> list[memoryview]:
    """Where an Rread's *count* data bytes go in the reply views."""
    return slice_segments(reply, IOHDRSZ_REPLY, count)


def finish_rread(reply: Segments, tag: int, count: int) -> int:
    """Write the Rread header for *count* data bytes; the frame's length."""
    scatter(reply, encode_rread_header(tag, count))
    return IOHDRSZ_REPLY + count



# --- a reply on its way out, for counting (server/stats.py) --------------------------------

def reply_type(frame: bytes | bytearray | memoryview) -> int:
    return frame[_TYPE_OFFSET]


def reply_word(frame: bytes | bytearray | memoryview) -> int:
    """The u32 that opens a reply's body: Rlerror's ecode, Rwrite's count."""
    return int.from_bytes(frame[HEADER_SIZE:HEADER_SIZE + 4], "little")


def rread_count(length: int) -> int:
    """The data bytes in an Rread frame *length* bytes long."""
    return length - IOHDRSZ_REPLY
