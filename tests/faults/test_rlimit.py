"""RLIMIT_NOFILE exhaustion: the server (a subprocess with a low ``ulimit -n``)
answers EMFILE, stays up, and serves again once fids are clunked.
"""

from __future__ import annotations

import errno
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.protocol import ninep as p

from security.harness import ServerProcess, connect, eventually, fd_count, rpc

NOFILE = 64
FILES = 100


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    export = tmp_path / "export"
    export.mkdir()
    for i in range(FILES):
        (export / f"f{i}").write_bytes(f"file {i}".encode())
    with ServerProcess(export, "--threads", "2", preexec=low_nofile) as proc:
        yield proc


async def open_until_emfile(client: Client, root: int) -> list[int]:
    """Open files on new fids until the server says EMFILE; returns the open fids."""
    opened = []
    for i in range(FILES):
        fid = client.new_fid()
        try:
            await rpc(client, p.Twalk(root, fid, [f"f{i}"]))
            await rpc(client, p.Tlopen(fid, p.DOTL_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, f"expected EMFILE, got {exc}"
            return opened
        opened.append(fid)
    raise AssertionError(f"{FILES} files opened under ulimit -n {NOFILE}")


async def test_emfile_then_recovery(server: ServerProcess) -> None:
    """EMFILE on open (or walk) at the limit; the session keeps answering other requests;
    after clunks, opens, reads and new connections work again; no fd is left behind."""
    client = await connect(server.socket_path, tap=False)
    root = await client.attach()
    base_fds = fd_count(server.pid)
    opened = await open_until_emfile(client, root)
    assert len(opened) > NOFILE // 2
    assert fd_count(server.pid) >= NOFILE - 2
    # Still up: requests that need no new fd are answered.
    assert await client.read(opened[0], 0, 100) == b"file 0"
    assert (await client.getattr(opened[1])).size > 0
    for fid in opened[-10:]:
        await client.clunk(fid)
    again = await client.walk_open(root, [f"f{FILES - 1}"])
    assert await client.read(again, 0, 100) == f"file {FILES - 1}".encode()
    second = await connect(server.socket_path, tap=False)
    assert (await second.getattr(await second.attach())).qid.type == p.QTDIR
    await second.close()
    for fid in [*opened[:-10], again]:
        await client.clunk(fid)
    assert await eventually(lambda: fd_count(server.pid) <= base_fds)
    await client.close()
    assert server.alive()


async def test_emfile_repeatedly_from_many_sessions(server: ServerProcess) -> None:
    """Several sessions hammer the limit in turn and disconnect holding their fids: the
    server releases everything each time and never dies."""
    base_fds = None
    for _ in range(3):
        clients = [await connect(server.socket_path, tap=False) for _ in range(3)]
        if base_fds is None:
            base_fds = fd_count(server.pid) - 3
        for client in clients:
            root = await client.attach()
            for i in range(FILES // 3):
                fid = client.new_fid()
                try:
                    await client.walk(root, [f"f{i}"], newfid=fid)
                    await client.open(fid)
                except OSError as exc:
                    assert exc.errno == errno.EMFILE, exc
        for client in clients:
            await client.close()
        assert server.alive()
    probe = await connect(server.socket_path, tap=False)
    assert (await probe.getattr(await probe.attach())).qid.type == p.QTDIR
    await probe.close()
    assert await eventually(lambda: fd_count(server.pid) <= base_fds), fd_count(server.pid)
