"""virtio-rng (device id 4) over vhost-user: the smallest device this layer can carry.

It has no config space, no feature bits of its own and one queue, whose
chains are all device-writable buffers: each is filled with ``os.urandom``
bytes and returned whole.  Beside the 9p device it shows what a device is on
top of :mod:`ninep.transport.vhost`: a handler per queue and a few arguments,
nothing of the protocol.  QEMU's ``vhost-user-rng`` device is its front end.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ..base import ReplySink
from .device import VhostUserDevice
from .listener import serve_front_ends

VIRTIO_ID_RNG = 4


def fill_with_entropy(readable: list[memoryview], sink: ReplySink) -> None:
    """A virtio-rng request: every writable byte gets random data (readable ones are ignored)."""
    size = sink.capacity
    for view in sink.reserve(size):
        view[:] = os.urandom(len(view))
    sink.commit(size)


def virtio_rng_device(**options: Any) -> VhostUserDevice:
    """A fresh virtio-rng device for one front end; *options* go to :class:`VhostUserDevice`."""
    return VhostUserDevice([fill_with_entropy], name="virtio-rng", **options)


async def serve_vhost_user_rng(*, socket_path: str | None, listen_fd: int | None,
                               **options: Any) -> None:
    """Serve virtio-rng to one front end after another, until cancelled."""

    async def serve(conn: socket.socket) -> None:
        await virtio_rng_device(**options).run(conn)

    await serve_front_ends(serve, socket_path=socket_path, listen_fd=listen_fd,
                           what="virtio-rng")


__all__ = ["VIRTIO_ID_RNG", "fill_with_entropy", "virtio_rng_device", "serve_vhost_user_rng"]
