"""virtio-rng (device id 4) over vhost-user: the smallest device this layer can carry.

It has no config space, no feature bits of its own and one queue, whose
chains are all device-writable buffers: each is filled with random bytes
(``os.urandom`` unless another *source* is given) and returned whole.  Beside
the 9p device it shows what a device is on top of
:mod:`ninep.transport.vhost`: a handler per queue and a few arguments, nothing
of the protocol.  QEMU's ``vhost-user-rng-pci`` device is its front end.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from .device import VhostUserDevice
from .listener import serve_front_ends
from .virtqueue import RequestHandler, VirtqueueReplySink

VIRTIO_ID_RNG = 4

EntropySource = Callable[[int], bytes]


def entropy_filler(source: EntropySource = os.urandom) -> RequestHandler:
    """The virtio-rng request handler: every writable byte gets *source* data
    (readable descriptors, which a driver should not send, are ignored)."""

    def fill(readable: list[memoryview], sink: VirtqueueReplySink) -> None:
        size = sink.capacity
        for view in sink.reserve(size):
            view[:] = source(len(view))
        sink.commit(size)

    return fill


def virtio_rng_device(source: EntropySource = os.urandom, **options: Any) -> VhostUserDevice:
    """A fresh virtio-rng device for one front end; *options* go to :class:`VhostUserDevice`."""
    return VhostUserDevice([entropy_filler(source)], name="virtio-rng", **options)


async def serve_vhost_user_rng(*, socket_path: str | None, listen_fd: int | None,
                               source: EntropySource = os.urandom, **options: Any) -> None:
    """Serve virtio-rng to one front end after another, until cancelled."""

    async def serve(conn: socket.socket) -> None:
        await virtio_rng_device(source, **options).run(conn)

    await serve_front_ends(serve, socket_path=socket_path, listen_fd=listen_fd,
                           what="virtio-rng")


__all__ = ["VIRTIO_ID_RNG", "EntropySource", "entropy_filler", "virtio_rng_device",
           "serve_vhost_user_rng"]
