"""The virtio-9p device over vhost-user: a 9P session behind one virtqueue.

Everything vhost-user is in :mod:`ninep.transport.vhost`; this module is only
what makes that device a 9p one: the mount-tag feature bit, the config space
(LE u16 tag length, then the tag), and one request queue whose chains go to
``Session.submit`` (readable views in, writable sink out).  Each front end gets
a fresh :class:`~ninep.server.session.Session`; when it goes, the session's
fids are clunked and its not-yet-started requests cancelled before the device
waits for the rest and unmaps guest memory.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..backends.base import Backend
from ..server.session import Session, SessionConfig
from .vhost.device import VhostUserDevice
from .vhost.listener import Listener, serve_front_ends
from .vhost.messages import MAX_CONFIG_SIZE, PROTOCOL_FEATURES, TRANSPORT_FEATURES

log = logging.getLogger("ninep.vhost")

#: The virtio device id QEMU's ``vhost-user-test-device`` is given (``virtio-id=9``).
VIRTIO_ID_9P = 9
VIRTIO_9P_MOUNT_TAG = 1 << 0
#: What the device offers: 0x170000001, as the reference trace shows.
DEVICE_FEATURES = TRANSPORT_FEATURES | VIRTIO_9P_MOUNT_TAG
MAX_TAG_BYTES = MAX_CONFIG_SIZE - 2


def virtio_9p_config(tag: str) -> bytes:
    """The virtio-9p config space: LE u16 tag length, then the tag (no NUL).

    Raises ValueError (one line naming --tag) for a tag QEMU could not carry.
    """
    raw = tag.encode("utf-8", "surrogateescape")
    if not raw:
        raise ValueError("--tag must not be empty")
    if len(raw) > MAX_TAG_BYTES:
        raise ValueError(f"--tag is {len(raw)} bytes; a virtio-9p mount tag is at most "
                         f"{MAX_TAG_BYTES} bytes")
    if b"\0" in raw:
        raise ValueError("--tag must not contain a NUL byte")
    return struct.pack("<H", len(raw)) + raw


def virtio_9p_device(session: Session, config_space: bytes, **options: Any) -> VhostUserDevice:
    """The 9p device serving *session*; *options* go to :class:`VhostUserDevice`."""
    # A request may be no longer than the msize, as on a stream (Tversion may lower it).
    options.setdefault("max_request", lambda: session.msize)
    return VhostUserDevice([session.submit], name="virtio-9p",
                           device_features=VIRTIO_9P_MOUNT_TAG, config_space=config_space,
                           **options)


async def serve_front_end(conn: socket.socket, backend: Backend, config_space: bytes,
                          session_config: SessionConfig | None = None, *,
                          device_options: dict[str, Any] | None = None) -> VhostUserDevice:
    """Serve one connected front end until it goes, then release all it held."""
    session = Session(backend, session_config)
    device = virtio_9p_device(session, config_space, **(device_options or {}))
    # session.close cancels what has not started and clunks every fid.
    await device.run(conn, on_disconnect=session.close)
    return device


async def serve_vhost_user(backend_factory: Callable[[], Backend], *, socket_path: str | None,
                           listen_fd: int | None, tag: str,
                           session_config: SessionConfig | None = None,
                           protocol_features: int = PROTOCOL_FEATURES,
                           listening: Listener | None = None, poll_us: int = 0) -> None:
    """Serve the virtio-9p device to one front end after another, until cancelled.

    ``--socket-path`` creates and listens on a Unix socket (a stale socket there
    is replaced); ``--fd`` takes one a manager already listens on; *listening*
    is one :func:`~ninep.transport.vhost.listener.listen` opened already.  Each
    front end gets a fresh Session on ``backend_factory()``; the caller owns the
    back end's lifetime.  *protocol_features* may offer a subset of ``PROTOCOL_FEATURES``.
    *poll_us* is the ring's polling window after its last reply (``--vhost-poll-us``).
    """
    if protocol_features & ~PROTOCOL_FEATURES:
        raise ValueError(f"protocol features {protocol_features:#x} are not implemented")
    config_space = virtio_9p_config(tag)

    async def serve(conn: socket.socket) -> None:
        await serve_front_end(conn, backend_factory(), config_space, session_config,
                              device_options={"protocol_features": protocol_features,
                                              "poll_ns": poll_us * 1000})

    await serve_front_ends(serve, socket_path=socket_path, listen_fd=listen_fd,
                           what=f"virtio-9p, tag {tag!r}", listening=listening)


__all__ = ["VIRTIO_ID_9P", "VIRTIO_9P_MOUNT_TAG", "DEVICE_FEATURES", "MAX_TAG_BYTES",
           "virtio_9p_config", "virtio_9p_device", "serve_front_end", "serve_vhost_user"]
