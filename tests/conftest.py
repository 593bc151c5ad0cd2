"""Shared fixtures: an export directory and an in-process server with a client.

``served`` is the common case (a default server on a Unix socket and a client
that has done Tversion); ``serve`` starts servers with any
:class:`SessionConfig` or back end, and tears down everything it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ninep.backends.base import Backend
from ninep.backends.local import LocalBackend
from ninep.client import Client
from ninep.server.session import SessionConfig
from ninep.transport.stream import ListenAddress, StreamServer


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """An empty directory to serve."""
    path = tmp_path / "export"
    path.mkdir()
    return path


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for Unix sockets (tmp_path may exceed sun_path's 108 bytes)."""
    path = tempfile.mkdtemp(prefix="9p", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Served:
    """A running in-process StreamServer and the clients connected to it."""

    server: StreamServer
    backend: Backend
    path: str
    clients: list[Client] = field(default_factory=list)

    async def connect(self, msize: int = 512000, version: str = "9P2000.L") -> Client:
        client = await Client.connect_unix(self.path, msize=msize, version=version)
        self.clients.append(client)
        return client


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve(export: Path, sockdir: Path) -> AsyncIterator[ServeFactory]:
    """``await serve(config=SessionConfig(...), backend=...)`` -> :class:`Served`."""
    started: list[Served] = []

    async def start(config: SessionConfig | None = None, backend: Backend | None = None,
                    name: str = "s") -> Served:
        config = config or SessionConfig()
        backend = backend or LocalBackend(str(export), threads=4, load=config.load)
        await backend.start()
        server = StreamServer(lambda: backend, config)
        path = str(sockdir / f"{name}{len(started)}.sock")
        await server.start(ListenAddress.parse(f"unix:{path}"))
        served = Served(server, backend, path)
        started.append(served)
        return served

    yield start
    for served in started:
        for client in served.clients:
            await client.close()
        await served.server.close()
        await served.backend.close()


@pytest.fixture
async def served(serve: ServeFactory) -> Client:
    """A client connected (Tversion done, msize 512000) to a default server on ``export``."""
    return await (await serve()).connect()


@pytest.fixture
def fd_count() -> Callable[[], int]:
    """``fd_count()``: how many file descriptors this process has open now."""
    return lambda: len(os.listdir("/proc/self/fd"))
