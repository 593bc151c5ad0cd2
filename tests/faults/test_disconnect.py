"""A client that vanishes with requests in flight: every fid and fd is released.

The back end holds reads at a gate, so requests are provably inside it when
the connection drops; the session must wait for them, then clunk every fid.
Counted twice: the back end's live nodes (one per fid) and /proc/self/fd.
"""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest

from ninep.protocol import ninep as p

from security.harness import GatedBackend, connect, fd_count, loop_errors, rpc, serve_inprocess


@pytest.fixture
def export(tmp_path: Path) -> Path:
    path = tmp_path / "export"
    (path / "dir").mkdir(parents=True)
    for i in range(8):
        (path / f"f{i}").write_bytes(os.urandom(64 * 1024))
    return path


async def test_disconnect_with_requests_inside_backend(export: Path) -> None:
    """Reads parked in the back end, more queued behind max_inflight, open fids and a
    half-sent frame: after the drop and the reads' release, nothing is left."""
    from ninep.server.session import SessionConfig
    fds = fd_count()
    backend = GatedBackend(str(export), threads=4)
    with loop_errors() as errors:
        async with serve_inprocess(export, backend=backend,
                                   config=SessionConfig(max_inflight=16)) as server:
            client = await connect(server.socket_path, tap=False)
            root = await client.attach()
            fids = [await client.walk_open(root, [f"f{i}"]) for i in range(8)]
            walked = [await client.walk(root, ["dir"]) for _ in range(20)]
            futs = [client.start(p.Tread(fids[i % 8], i * 100, 8192))[1] for i in range(64)]
            futs += [client.start(p.Twalk(root, 1000 + i, ["f1"]))[1] for i in range(16)]
            while backend.inside < 16:
                await asyncio.sleep(0.01)
            head = p.encode(p.Twrite(fids[0], 0, b"x" * 4000), 9999)
            client.send_raw(head[:1000])  # half a frame
            await client.writer.drain()
            client.writer.transport.abort()
            await asyncio.sleep(0.2)
            live = server.live_nodes()
            backend.gate.set()
            assert live > 0, "the session must wait for requests in the back end"
            await server.wait_idle()
            assert server.live_nodes() == 0, "fids leaked by a dropped connection"
            await asyncio.gather(*futs, return_exceptions=True)
            await client.close()
            assert len(walked) == 20
    assert errors == []
    assert fd_count() == fds


@pytest.mark.parametrize("burst", [10, 300])
async def test_disconnect_mid_burst_repeatedly(export: Path, burst: int) -> None:
    """Many connections each fire a burst of mixed requests and drop at once."""
    fds = fd_count()
    with loop_errors() as errors:
        async with serve_inprocess(export) as server:
            for round_ in range(25):
                client = await connect(server.socket_path, tap=False)
                root = await client.attach()
                opened = await client.walk_open(root, ["f1"])
                futs = []
                for i in range(burst):
                    fid = 100 + i
                    for msg in (p.Twalk(root, fid, [f"f{i % 8}"]), p.Tlopen(fid, p.DOTL_RDONLY),
                                p.Tread(fid, 0, 4096), p.Tread(opened, i, 100),
                                p.Tlcreate(fid, f"c{round_}_{i}", p.DOTL_RDWR, 0o644, 0)):
                        futs.append(client.start(msg)[1])
                client.writer.transport.abort()
                await client.close()
                await asyncio.gather(*futs, return_exceptions=True)
            await server.wait_idle()
            assert server.live_nodes() == 0
    assert errors == []
    assert fd_count() == fds


async def test_disconnect_while_frame_size_is_huge(export: Path) -> None:
    """A client announcing a frame bigger than msize is dropped; others carry on."""
    async with serve_inprocess(export) as server:
        good = await connect(server.socket_path, tap=False)
        root = await good.attach()
        bad = await connect(server.socket_path, tap=False)
        bad.send_raw(struct.pack("<IBH", 0xFFFFFFF0, p.Twrite.TYPE, 1))
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(bad.rpc(p.Tgetattr(0, p.GETATTR_BASIC)), 10)
        await bad.close()
        assert (await rpc(good, p.Tgetattr(root, p.GETATTR_BASIC))).qid.type == p.QTDIR
        await good.close()
        await server.wait_idle()
        assert server.live_nodes() == 0
