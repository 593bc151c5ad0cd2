"""The export's disk fills up: ENOSPC reaches the client, nothing written is lost.

The export is a 1 MiB tmpfs with few inodes, mounted for the test (root
needed).  Outside CI a failed mount skips; in CI (CI set) it fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ninep.protocol import ninep as p

from security.harness import connect, expect_error, fd_count, in_ci, rpc, serve_inprocess

CHUNK = 32 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB, 64-inode tmpfs mounted on a fresh directory."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64,mode=0755",
                          "ninep-test-full", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        reason = f"cannot mount a tmpfs: {res.stderr.strip()}"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
async def client_on(small_fs: Path) -> AsyncIterator[tuple[object, int]]:
    fds = fd_count()
    async with serve_inprocess(small_fs) as server:
        client = await connect(server.socket_path, tap=False)
        root = await client.attach()
        yield client, root
        await client.close()
        await server.wait_idle()
        assert server.live_nodes() == 0
    assert fd_count() == fds


def pattern(offset: int, size: int) -> bytes:
    """Bytes that say where they belong, so a lost or shifted chunk shows."""
    return bytes((offset + i) * 7 % 251 for i in range(size))


async def test_enospc_on_write_and_data_kept(client_on: tuple, small_fs: Path) -> None:
    """Writes until the disk is full get ENOSPC (possibly after one short write);
    every byte acknowledged before is read back intact, by the guest and on the host."""
    client, root = client_on
    fid, _ = await client.create(root, "big", p.DOTL_RDWR)
    acked = 0
    err = None
    for _ in range(64):  # 2 MiB > 1 MiB
        try:
            n = await client.write(fid, acked, pattern(acked, CHUNK))
        except OSError as exc:
            err = exc.errno
            break
        assert 0 < n <= CHUNK
        acked += n
    assert err == errno.ENOSPC, f"expected ENOSPC, got {err} after {acked} bytes"
    assert 512 * 1024 < acked <= 1024 * 1024
    await expect_error(client, p.Twrite(fid, acked, b"more"), errno.ENOSPC)
    assert await client.read_all(fid) == pattern(0, acked)
    assert (small_fs / "big").read_bytes() == pattern(0, acked)
    # Freeing space makes writes work again.
    await rpc(client, p.Tsetattr(fid, p.SETATTR_SIZE, 0, 0, 0, CHUNK, 0, 0, 0, 0))
    assert await client.write(fid, CHUNK, pattern(CHUNK, 100)) == 100


async def test_enospc_on_create_when_out_of_inodes(client_on: tuple, small_fs: Path) -> None:
    """Creating files, dirs and symlinks past the inode limit answers ENOSPC; the
    ones made before stay, with their content."""
    client, root = client_on
    made = []
    err = None
    for i in range(100):
        kind = i % 3
        try:
            if kind == 0:
                fid, _ = await client.create(root, f"file{i}", p.DOTL_RDWR)
                await client.write(fid, 0, f"content {i}".encode())
                await client.clunk(fid)
            elif kind == 1:
                await client.mkdir(root, f"dir{i}")
            else:
                await rpc(client, p.Tsymlink(root, f"link{i}", "target", 0))
        except OSError as exc:
            err = exc.errno
            break
        made.append(i)
    assert err == errno.ENOSPC and 10 < len(made) < 100
    for i in made:
        if i % 3 == 0:
            assert (small_fs / f"file{i}").read_text() == f"content {i}"
    # The failed create left no half-made entry behind, and the server still serves.
    assert len(os.listdir(small_fs)) == len(made)
    assert (await client.getattr(root)).qid.type == p.QTDIR


async def test_enospc_on_xattr_and_setattr_grow(client_on: tuple, small_fs: Path) -> None:
    """Growing a file past the free space (sparse growth is free on tmpfs, so fill
    first) and big xattrs on a full disk fail cleanly, never EIO."""
    client, root = client_on
    fid, _ = await client.create(root, "filler", p.DOTL_RDWR)
    with contextlib.suppress(OSError):
        for off in range(0, 2 << 20, CHUNK):
            await client.write(fid, off, b"\xaa" * CHUNK)
    other, _ = await client.create(root, "x", p.DOTL_RDWR)
    await expect_error(client, p.Twrite(other, 0, b"y" * CHUNK), errno.ENOSPC)
    xfid = await client.walk(root, ["x"])
    try:
        await rpc(client, p.Txattrcreate(xfid, "user.big", 60000, 0))
        await rpc(client, p.Twrite(xfid, 0, b"z" * 60000))
        await rpc(client, p.Tclunk(xfid))
    except OSError as exc:
        assert exc.errno in (errno.ENOSPC, errno.E2BIG, errno.EOPNOTSUPP, errno.EINVAL), exc
