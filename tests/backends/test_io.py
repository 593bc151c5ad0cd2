"""read_into / write_from (scatter-gather, offsets, sparse, large), fsync."""

from __future__ import annotations

import errno
import os

import pytest

from .conftest import Fs


async def test_write_gathers_several_views(fs: Fs) -> None:
    node = await fs.create("f")
    parts = [b"abc", b"", b"defgh", b"i" * 1000]
    n = await fs.backend.write_from(node, 0, [memoryview(p) for p in parts])
    assert n == 1008
    assert fs.host("f").read_bytes() == b"".join(parts)


async def test_read_scatters_into_several_views(fs: Fs) -> None:
    data = bytes(range(256)) * 4
    fs.host("f").write_bytes(data)
    node = await fs.open("f")
    bufs = [bytearray(10), bytearray(0), bytearray(500), bytearray(2000)]
    n = await fs.backend.read_into(node, 3, [memoryview(b) for b in bufs])
    assert n == len(data) - 3
    assert bytes(bufs[0] + bufs[2] + bufs[3])[:n] == data[3:]


async def test_read_into_slices_of_one_buffer(fs: Fs) -> None:
    """The session hands over views into a reply buffer, after its header."""
    fs.host("f").write_bytes(b"0123456789")
    node = await fs.open("f")
    reply = bytearray(b"H" * 11 + b"\0" * 10)
    view = memoryview(reply)
    n = await fs.backend.read_into(node, 2, [view[11:14], view[14:21]])
    assert n == 8 and reply == b"H" * 11 + b"23456789\0\0"


async def test_write_and_read_at_offsets(fs: Fs) -> None:
    node = await fs.create("f")
    await fs.write(node, b"hello", 0)
    await fs.write(node, b"HE", 0)
    await fs.write(node, b"!", 5)
    assert await fs.read(node, 100, 0) == b"HEllo!"
    assert await fs.read(node, 3, 2) == b"llo"
    assert await fs.read(node, 100, 6) == b""
    assert await fs.read(node, 100, 10**9) == b""


async def test_sparse_write(fs: Fs) -> None:
    node = await fs.create("f")
    offset = 64 * 1024 * 1024
    await fs.write(node, b"end", offset)
    st = (await fs.backend.getattr(node))[1]
    assert st.size == offset + 3
    assert st.blocks * 512 < 1024 * 1024  # the hole takes no space
    assert await fs.read(node, 8, offset - 5) == b"\0" * 5 + b"end"


async def test_large_io_round_trip(fs: Fs) -> None:
    data = os.urandom(1024 * 1024)
    node = await fs.create("f")
    views = [memoryview(data)[i:i + 65536] for i in range(0, len(data), 65536)]
    assert await fs.backend.write_from(node, 0, views) == len(data)
    assert fs.host("f").read_bytes() == data
    out = bytearray(len(data))
    assert await fs.backend.read_into(node, 0, [memoryview(out)]) == len(data)
    assert out == data


@pytest.mark.parametrize("datasync", [False, True])
async def test_fsync(fs: Fs, datasync: bool) -> None:
    node = await fs.create("f")
    await fs.write(node, b"durable")
    await fs.backend.fsync(node, datasync)
    assert fs.host("f").read_bytes() == b"durable"
    fs.host("d").mkdir()
    await fs.backend.fsync(await fs.open("d"), datasync)


async def test_io_on_unopened_node_is_ebadf(fs: Fs) -> None:
    fs.host("f").write_bytes(b"x")
    node = await fs.walk("f")
    for op in (fs.read(node, 1), fs.write(node, b"y"), fs.backend.fsync(node, False)):
        with pytest.raises(OSError) as exc:
            await op
        assert exc.value.errno == errno.EBADF
    assert fs.host("f").read_bytes() == b"x"


async def test_read_of_directory_fails(fs: Fs) -> None:
    fs.host("d").mkdir()
    node = await fs.open("d")
    with pytest.raises(OSError) as exc:
        await fs.read(node, 10)
    assert exc.value.errno in (errno.EISDIR, errno.EBADF)
