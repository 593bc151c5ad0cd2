"""The statistics endpoint: a minimal HTTP/1.0 server of one text document.

Prometheus and its kin scrape ``GET /metrics`` over HTTP; ``ninep stats``
and ``curl --unix-socket`` do the same.  It listens only where the operator
says, and only on a Unix socket or a loopback TCP address: the counters name
no files, but they are nobody else's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable

from .stream import ListenAddress, _listening_unix_socket, _remove_stale_socket, start_serving_now

log = logging.getLogger("ninep.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REQUEST_LIMIT = 8192
_READ_TIMEOUT = 10.0


def parse_stats_address(text: str) -> ListenAddress:
    """``unix:PATH`` or ``tcp:HOST:PORT`` on a loopback address (``localhost``,
    127.0.0.0/8, ::1); a bare path is a Unix socket."""
    if text.startswith(("/", ".")):
        text = "unix:" + text
    try:
        address = ListenAddress.parse(text)
    except ValueError:
        address = None
    if address is not None and address.kind == "tcp" and not _is_loopback(address.host):
        raise ValueError(f"--stats {text}: statistics are served on loopback addresses only "
                         "(127.0.0.1, ::1, localhost) or a Unix socket")
    if address is None or address.kind not in ("unix", "tcp"):
        raise ValueError(f"--stats: expected unix:PATH or tcp:127.0.0.1:PORT, not {text!r}")
    return address


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """Answers ``GET /metrics`` (or ``/``) with what *render* returns now."""

    def __init__(self, render: Callable[[], str]) -> None:
        self._render = render
        self._server: asyncio.Server | None = None
        self._unix_path: str | None = None

    async def start(self, address: ListenAddress, *, serving: bool = True) -> None:
        """Listen on *address*; with ``serving=False``, accept only from :meth:`start_serving`."""
        if address.kind == "unix":
            sock = _listening_unix_socket(address.path)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock,
                                                           limit=_REQUEST_LIMIT,
                                                           start_serving=serving)
            self._unix_path = address.path
        else:
            self._server = await asyncio.start_server(self._serve, address.host, address.port,
                                                      limit=_REQUEST_LIMIT, start_serving=serving)

    def start_serving(self) -> None:
        """Accept from the loop's next pass on (after ``start(serving=False)``)."""
        if self._server is not None:
            start_serving_now(self._server)

    @property
    def port(self) -> int | None:
        """The TCP port listened on (useful after asking for port 0)."""
        if self._server is None or self._unix_path is not None:
            return None
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._unix_path is not None:
            _remove_stale_socket(self._unix_path)
            self._unix_path = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            status, body = self._answer(head.split(b"\r\n", 1)[0])
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            status, body = "400 Bad Request", "expected GET /metrics\n"
        data = body.encode()
        writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    def _answer(self, request_line: bytes) -> tuple[str, str]:
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "expected GET /metrics\n"
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method != "GET":
            return "405 Method Not Allowed", "only GET\n"
        if target not in ("/", "/metrics"):
            return "404 Not Found", "try /metrics\n"
        try:
            return "200 OK", self._render()
        except Exception:  # a bug in a counter must not take the server down
            log.exception("rendering the statistics failed")
            return "500 Internal Server Error", "internal error\n"


__all__ = ["CONTENT_TYPE", "MetricsServer", "parse_stats_address"]
