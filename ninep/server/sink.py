"""Where the dispatcher puts a reply: the interface every transport implements.

A transport hands :meth:`~ninep.server.session.Session.submit` one request
(as segments: see :mod:`ninep.segments`) and a :class:`ReplySink`
for its reply, which either collects bytes to write to a socket or scatters
them straight into guest memory.  The dispatcher never knows which.  The
interface lives with the server, which defines what it needs of it; the
transports import it from here.
"""

from __future__ import annotations

from typing import Protocol


class ReplySink(Protocol):
    """Where exactly one reply to one request goes.

    A protocol, not a base class: the virtqueue's sink implements it without
    importing the server (the vhost-user layer knows nothing of 9P).
    """

    #: Most bytes a reply may have (virtqueue: the writable descriptors' total).
    capacity: int

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Deliver a fully encoded reply."""

    def reserve(self, size: int) -> list[memoryview]:
        """Writable views over the first *size* bytes of the reply, for
        zero-copy replies (Rread).  ``size <= capacity``."""

    def commit(self, length: int) -> None:
        """Deliver the first *length* bytes written through :meth:`reserve`."""

    def drop(self) -> None:
        """The request was flushed: deliver nothing if the transport allows it.

        Transports that must return every buffer (virtqueues) override this to
        complete the request with the Rlerror the dispatcher wrote beforehand.
        """
        return None  # a default for explicit subclasses, not an abstract member
