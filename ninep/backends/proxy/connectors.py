"""How the proxy back end reaches its helper: a :class:`Connector` makes new
connections (a socket someone else's helper listens on, or one inherited fd);
:class:`~.helper_process.SpawnedHelper` is the one that starts helpers itself.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat as st_


class Connector:
    """How new connections to the helper are made."""

    #: Probe extra connections: the helper may serve only one (QEMU's).
    may_serve_one: bool = False
    #: Most connections this helper can serve (None: no limit).
    max_connections: int | None = None
    #: Open the whole pool at start (helpers we start serve any number).
    open_all_at_start: bool = False
    where: str = "proxy helper"

    async def connect(self) -> socket.socket:
        """A new connection, on the server's event loop.  A helper started here
        lives as long as the loop's thread (see ``helper_process._die_with_parent``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever this connector started."""


async def connect_unix(path: str) -> socket.socket:
    """A non-blocking connection to the Unix socket *path*."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


class SocketConnector(Connector):
    """A helper someone else runs, listening on a Unix socket (``--proxy-socket``)."""

    may_serve_one = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.where = f"proxy helper socket {path}"

    async def connect(self) -> socket.socket:
        return await connect_unix(self.path)


class FdConnector(Connector):
    """One inherited, connected socket (``--proxy-fd``): a single connection,
    which cannot be made again once the helper is gone."""

    max_connections = 1

    def __init__(self, fd: int) -> None:
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise OSError(f"--proxy-fd {fd}: {exc.strerror}") from None
        if not st_.S_ISSOCK(mode):
            raise OSError(f"--proxy-fd {fd}: not a socket")
        self._sock: socket.socket | None = socket.socket(fileno=fd)
        self.where = f"proxy helper on fd {fd}"

    async def connect(self) -> socket.socket:
        sock, self._sock = self._sock, None
        if sock is None:
            raise OSError(errno.ECONNRESET, "the --proxy-fd connection is gone")
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
