"""Very long names and paths deeper than PATH_MAX.

A name of 256+ bytes is ENAMETOOLONG for every op that takes one (a 9P string
may carry 65535).  A tree deeper than PATH_MAX, built one walk at a time,
stays fully usable: a host path is never built from the whole guest path in
one string (the openat2 path falls back to a component walk).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ninep import syscalls
from ninep.client import Client
from ninep.protocol import ninep as p

from security.harness import connect, expect_error, fd_count, rpc, serve_inprocess

PATH_MAX = 4096
SEGMENT = "d" * 200


@pytest.fixture(params=["openat2", "nofollow-walk"])
async def served(tmp_path: Path,
                 request: pytest.FixtureRequest) -> AsyncIterator[tuple[Client, int, Path]]:
    if request.param == "openat2" and not syscalls.have_openat2():
        pytest.skip("no openat2")
    export = tmp_path / "export"
    export.mkdir()
    (export / "file").write_bytes(b"data")
    fds = fd_count()
    async with serve_inprocess(export, use_openat2=request.param == "openat2") as server:
        client = await connect(server.socket_path, msize=200_000, tap=False)
        root = await client.attach()
        yield client, root, export
        await client.close()
        await server.wait_idle()
        assert server.live_nodes() == 0
    assert fd_count() == fds


def name_ops(root: int, file_fid: int, dir_fid: int, name: str) -> list[object]:
    return [
        p.Twalk(root, 999, [name]), p.Tlcreate(dir_fid, name, p.DOTL_RDWR, 0o644, 0),
        p.Tmkdir(root, name, 0o755, 0), p.Tsymlink(root, name, "file", 0),
        p.Tmknod(root, name, stat.S_IFIFO | 0o644, 0, 0, 0), p.Tlink(root, file_fid, name),
        p.Trenameat(root, "file", root, name), p.Trenameat(root, name, root, "x"),
        p.Trename(file_fid, root, name), p.Tunlinkat(root, name, 0),
    ]


@pytest.mark.parametrize("length", [256, 1000, 65535])
async def test_name_too_long(served: tuple, length: int) -> None:
    """Every op given a name of *length* bytes answers ENAMETOOLONG; nothing is made."""
    client, root, export = served
    name = "n" * length
    file_fid = await client.walk(root, ["file"])
    for msg in name_ops(root, file_fid, await client.walk(root, []), name):
        await expect_error(client, msg, errno.ENAMETOOLONG)
    assert sorted(os.listdir(export)) == ["file"]


async def test_name_of_255_bytes_works(served: tuple) -> None:
    """The longest legal name round-trips through create, readdir, walk and rename."""
    client, root, export = served
    name = "m" * 255
    fid, _ = await client.create(root, name)
    await client.write(fid, 0, b"ok")
    listing = await client.readdir_all(await client.walk_open(root, []))
    assert name in {e[3] for e in listing}
    await rpc(client, p.Trenameat(root, name, root, "n" * 255))
    assert (export / ("n" * 255)).read_bytes() == b"ok"


async def test_symlink_target_too_long(served: tuple) -> None:
    """A symlink target longer than PATH_MAX is refused by the host, cleanly."""
    client, root, _ = served
    await expect_error(client, p.Tsymlink(root, "long", "t" * (PATH_MAX + 10), 0),
                       errno.ENAMETOOLONG)


async def test_path_deeper_than_path_max(served: tuple) -> None:
    """Walk one level at a time 30 levels of 200-byte names deep (6 KB of path): mkdir,
    create, write, read, getattr, readdir, rename and unlink all work down there."""
    client, root, export = served
    fid = await client.walk(root, [])
    depth = 30
    for _ in range(depth):
        await client.mkdir(fid, SEGMENT)
        await client.walk(fid, [SEGMENT], newfid=fid)
    assert depth * (len(SEGMENT) + 1) > PATH_MAX + 1024
    deep_file, _ = await client.create(fid, "leaf")
    assert await client.write(deep_file, 0, b"deep data") == 9
    leaf = await client.walk(fid, ["leaf"])
    assert (await client.getattr(leaf)).size == 9
    await client.open(leaf)
    assert await client.read(leaf, 0, 100) == b"deep data"
    listing = await client.readdir_all(await client.walk_open(fid, []))
    assert "leaf" in {e[3] for e in listing}
    await rpc(client, p.Trenameat(fid, "leaf", fid, "leaf2"))
    await client.unlinkat(fid, "leaf2")
    up = await client.walk(fid, [".."] * 16)
    await client.walk(up, [".."] * (depth - 16), newfid=up)
    assert (await client.getattr(up)).qid.path == (await client.getattr(root)).qid.path
    # Host view: the tree is really there, at full depth.
    dirfd = os.open(export, os.O_PATH)
    try:
        for _ in range(depth):
            nfd = os.open(SEGMENT, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dirfd)
            os.close(dirfd)
            dirfd = nfd
        assert os.listdir(dirfd) == []
    finally:
        os.close(dirfd)
