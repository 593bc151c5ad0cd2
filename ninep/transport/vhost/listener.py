"""The listening socket a vhost-user back end waits on, and its accept loop.

One front end at a time: :func:`serve_front_ends` serves a connection to its
end and accepts the next one, since QEMU reconnects after a restart and
resumes each ring from what GET_VRING_BASE returned.  What a connection is
served with (a fresh device, and whatever the device's handlers need) is the
caller's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import NamedTuple

log = logging.getLogger("ninep.vhost")


def open_listener(socket_path: str | None, listen_fd: int | None) -> tuple[socket.socket, bool]:
    """The listening socket, and whether we created it (and so unlink it at the end)."""
    if (socket_path is None) == (listen_fd is None):
        raise ValueError("give exactly one of --socket-path and --fd")
    if listen_fd is not None:
        try:
            sock = socket.socket(fileno=listen_fd)
        except OSError as exc:
            raise ValueError(f"--fd {listen_fd}: {exc.strerror}") from None
        if (sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            sock.detach()
            raise ValueError(f"--fd {listen_fd} is not a listening Unix stream socket")
        sock.setblocking(False)
        return sock, False
    assert socket_path is not None
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ValueError(f"--socket-path {socket_path} exists and is not a socket")
        os.unlink(socket_path)  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(socket_path)
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock, True


class Listener(NamedTuple):
    """An open vhost-user listening socket."""

    sock: socket.socket
    #: The inode of the socket file we created (unlinked at the end), else None.
    created_inode: int | None


def listen(socket_path: str | None, listen_fd: int | None) -> Listener:
    """Open the listener now, so that it exists before the process is confined."""
    sock, created = open_listener(socket_path, listen_fd)
    return Listener(sock, os.stat(socket_path).st_ino if created and socket_path else None)


async def serve_front_ends(serve_connection: Callable[[socket.socket], Awaitable[object]], *,
                           socket_path: str | None, listen_fd: int | None,
                           what: str = "vhost-user", listening: Listener | None = None) -> None:
    """Accept front ends one after another and serve each with *serve_connection*,
    until cancelled.

    ``socket_path`` creates and listens on a Unix socket (a stale socket there
    is replaced, and ours is removed at the end); ``listen_fd`` takes one a
    manager already listens on; *listening* is one :func:`listen` opened
    already (before a sandbox hid the file system).  A connection that fails is
    logged and closed; the next one is still served.  *what* names the device
    in the log.
    """
    listener, ours = listening or listen(socket_path, listen_fd)
    loop = asyncio.get_running_loop()
    log.info("vhost-user: listening on %s (%s)",
             socket_path if socket_path is not None else f"fd {listen_fd}", what)
    try:
        while True:
            conn, _ = await loop.sock_accept(listener)
            log.info("vhost-user: front end connected")
            try:
                await serve_connection(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("vhost-user: the connection failed")
            finally:
                conn.close()
    finally:
        listener.close()
        if ours is not None and socket_path is not None:
            try:
                if os.stat(socket_path).st_ino == ours:
                    os.unlink(socket_path)
            except OSError:
                pass


__all__ = ["Listener", "listen", "open_listener", "serve_front_ends"]
