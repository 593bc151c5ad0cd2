"""Per-session caps, each tested at the cap: fids (``max_fids``/--max-fids),
requests read but not yet answered (``max_inflight``/--max-inflight) and
xattr size (``max_xattr_size``/--max-xattr-size, default 64 KiB)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ninep.cli import build_parser
from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import XATTR_SIZE_MAX, Session, SessionConfig
from ninep.transport.base import BufferSink

from security.harness import (GatedBackend, ServerProcess, connect, expect_error, rpc,
                              serve_inprocess)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    path = tmp_path / "export"
    path.mkdir()
    for i in range(4):
        (path / f"f{i}").write_bytes(b"x" * 8192)
    return path


def test_defaults_match_the_cli() -> None:
    """SessionConfig's defaults and the CLI's agree (64 KiB xattrs)."""
    args = build_parser().parse_args(["--export", "/", "--listen", "unix:/x"])
    config = SessionConfig()
    assert (args.max_fids, args.max_inflight, args.max_xattr_size) == \
        (config.max_fids, config.max_inflight, config.max_xattr_size)
    assert config.max_xattr_size == XATTR_SIZE_MAX == 64 * 1024


# --- fids ---------------------------------------------------------------------------

async def assert_fid_cap(client: Client, cap: int) -> None:
    """*cap* fids (root included) can exist; the next is EMFILE by every fid-making
    message; a clunk makes room again."""
    root = await client.attach()
    fids = [root] + [await client.walk(root, ["f0"]) for _ in range(cap - 1)]
    await expect_error(client, p.Twalk(root, client.new_fid(), []), errno.EMFILE)
    await expect_error(client, p.Txattrwalk(root, client.new_fid(), ""), errno.EMFILE)
    await expect_error(client, p.Tattach(client.new_fid(), p.NOFID, "root", "", 0), errno.EMFILE)
    # Reusing a fid number in place does not need room.
    await client.walk(fids[-1], [], newfid=fids[-1])
    await client.clunk(fids.pop())
    fids.append(await client.walk(root, ["f2"]))
    await expect_error(client, p.Twalk(root, client.new_fid(), []), errno.EMFILE)


async def test_max_fids_at_the_cap(export: Path) -> None:
    async with serve_inprocess(export, config=SessionConfig(max_fids=32)) as server:
        client = await connect(server.socket_path, tap=False)
        await assert_fid_cap(client, 32)
        await client.close()
        await server.wait_idle()
        assert server.live_nodes() == 0


async def test_max_fids_is_per_session(export: Path) -> None:
    """One session at its cap does not limit another."""
    async with serve_inprocess(export, config=SessionConfig(max_fids=4)) as server:
        first = await connect(server.socket_path, tap=False)
        second = await connect(server.socket_path, tap=False)
        await assert_fid_cap(first, 4)
        await assert_fid_cap(second, 4)
        for c in (first, second):
            await c.close()


# --- in-flight requests ---------------------------------------------------------------

async def test_max_inflight_at_the_cap(export: Path) -> None:
    """With max_inflight=8 and 200 reads sent at once, the session holds exactly 8
    (the transport stops reading the socket), the back end sees at most 8, and once
    released every read is answered correctly."""
    cap = 8
    backend = GatedBackend(str(export), threads=4)
    async with serve_inprocess(export, backend=backend,
                               config=SessionConfig(max_inflight=cap)) as server:
        client = await connect(server.socket_path, tap=False)
        root = await client.attach()
        fid = await client.walk_open(root, ["f0"])
        futs = [client.start(p.Tread(fid, i, 100))[1] for i in range(200)]
        try:
            while backend.inside < cap:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # give an unbounded server the chance to read more
            (session,) = [conn.session for conn in server.server._streams]
            assert session.inflight == cap and session.full
            assert backend.inside == cap
        finally:
            backend.gate.set()
        replies = await asyncio.wait_for(asyncio.gather(*futs), 20)
        assert all(isinstance(r, p.Rread) and len(r.data) == 100 for r in replies)
        assert backend.peak == cap
        assert not session.full
        await client.close()


async def test_max_inflight_counts_untagged_and_flushes(export: Path) -> None:
    """NOTAG requests and Tflushes count against the cap too (or a guest could
    pile up unbounded work under tags the table does not track)."""
    backend = GatedBackend(str(export), threads=2)
    session = Session(backend, SessionConfig(max_inflight=4))
    out: list[bytes] = []
    sink = lambda: BufferSink(lambda data: out.append(bytes(data)), 8192)  # noqa: E731
    for msg, tag in ((p.Tversion(8192, p.VERSION_9P2000L), p.NOTAG),
                     (p.Tattach(0, p.NOFID, "root", "", 0), 1),
                     (p.Twalk(0, 1, ["f0"]), 2), (p.Tlopen(1, p.DOTL_RDONLY), 3)):
        session.submit([memoryview(p.encode(msg, tag))], sink())
        await asyncio.sleep(0.05)
    assert len(out) == 4
    for _ in range(3):
        session.submit([memoryview(p.encode(p.Tread(1, 0, 10), p.NOTAG))], sink())
    assert not session.full
    session.submit([memoryview(p.encode(p.Tflush(77), 9))], sink())
    assert session.full
    await asyncio.sleep(0.05)  # the flush of nothing answers at once
    assert not session.full
    backend.gate.set()
    while len(out) < 8:
        await asyncio.sleep(0.01)
    await session.close()
    await backend.close()


# --- xattr size -------------------------------------------------------------------------

async def test_max_xattr_size_default_at_the_cap(export: Path) -> None:
    """Default cap: a 64 KiB Txattrcreate is accepted and filled, 64 KiB + 1 is E2BIG;
    a write past the announced size is EINVAL (the buffer never outgrows the cap)."""
    async with serve_inprocess(export) as server:
        client = await connect(server.socket_path, msize=128 * 1024, tap=False)
        root = await client.attach()
        fid = await client.walk(root, ["f0"])
        await expect_error(client, p.Txattrcreate(fid, "user.big", XATTR_SIZE_MAX + 1, 0),
                           errno.E2BIG)
        await rpc(client, p.Txattrcreate(fid, "user.big", XATTR_SIZE_MAX, 0))
        assert await client.write(fid, 0, b"v" * XATTR_SIZE_MAX) == XATTR_SIZE_MAX
        await expect_error(client, p.Twrite(fid, XATTR_SIZE_MAX, b"v"), errno.EINVAL)
        try:  # the host may hold less (ext4: one block); that is its answer to give
            await client.clunk(fid)
        except OSError as exc:
            assert exc.errno in (errno.ENOSPC, errno.E2BIG, errno.EOPNOTSUPP), exc
        await client.close()


async def test_max_xattr_size_configured_at_the_cap(export: Path) -> None:
    """A 2 KiB cap: exactly 2 KiB round-trips; one more byte is E2BIG to set, and a
    host xattr (or name list) over the cap is E2BIG to read."""
    cap = 2048
    os.setxattr(export / "f1", "user.host", b"h" * (cap + 1))
    for i in range(cap // 16):
        os.setxattr(export / "f2", f"user.n{i:010d}", b"")
    async with serve_inprocess(export, config=SessionConfig(max_xattr_size=cap)) as server:
        client = await connect(server.socket_path, tap=False)
        root = await client.attach()
        fid = await client.walk(root, ["f0"])
        await expect_error(client, p.Txattrcreate(fid, "user.a", cap + 1, 0), errno.E2BIG)
        await rpc(client, p.Txattrcreate(fid, "user.a", cap, 0))
        await client.write(fid, 0, b"a" * cap)
        await client.clunk(fid)
        assert os.getxattr(export / "f0", "user.a") == b"a" * cap
        xfid = client.new_fid()
        reply = await rpc(client, p.Txattrwalk(root, xfid, ""))
        got = await rpc(client, p.Txattrwalk(await client.walk(root, ["f0"]), client.new_fid(),
                                             "user.a"))
        assert got.size == cap and reply.size >= 0
        await expect_error(client, p.Txattrwalk(await client.walk(root, ["f1"]), client.new_fid(),
                                                "user.host"), errno.E2BIG)
        await expect_error(client, p.Txattrwalk(await client.walk(root, ["f2"]), client.new_fid(),
                                                ""), errno.E2BIG)
        await client.close()


# --- the command-line flags reach the session ----------------------------------------------

@pytest.fixture
async def cli_server(export: Path) -> AsyncIterator[ServerProcess]:
    with ServerProcess(export, "--max-fids", "8", "--max-inflight", "4",
                       "--max-xattr-size", "100") as server:
        yield server


async def test_cli_caps(cli_server: ServerProcess, export: Path) -> None:
    """--max-fids 8, --max-inflight 4 and --max-xattr-size 100 take effect."""
    client = await connect(cli_server.socket_path, tap=False)
    await assert_fid_cap(client, 8)
    await client.close()
    client = await connect(cli_server.socket_path, tap=False)
    root = await client.attach()
    fid = await client.walk(root, ["f0"])
    await expect_error(client, p.Txattrcreate(fid, "user.a", 101, 0), errno.E2BIG)
    await rpc(client, p.Txattrcreate(fid, "user.a", 100, 0))
    opened = await client.walk_open(root, ["f1"])
    # 500 pipelined requests through a 4-request window: all answered, in order of need.
    replies = await asyncio.wait_for(asyncio.gather(
        *(client.start(p.Tread(opened, i, 10))[1] for i in range(500))), 30)
    assert all(isinstance(r, p.Rread) and r.data == b"x" * 10 for r in replies)
    await client.close()
    assert cli_server.alive()
