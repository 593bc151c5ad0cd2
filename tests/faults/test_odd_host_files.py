"""Host files the guest may trip over: times before 1970, huge sparse sizes, names
that are not UTF-8.  Each must be served (or refused) cleanly, never an internal
error or a dropped request."""

from __future__ import annotations

import os
from pathlib import Path

from ninep.protocol import ninep as p

from security.harness import connect, rpc, serve_inprocess

U64 = 1 << 64


async def test_odd_host_files(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    old = export / "before1970"
    old.write_bytes(b"old")
    os.utime(old, ns=(-86400 * 10**9 - 1, -1))  # 1969-12-31, and 1 ns before the epoch
    huge = export / "sparse"
    with open(huge, "wb") as f:
        f.truncate(1 << 43)
    odd = os.fsencode(str(export)) + b"/caf\xe9-\xff"  # latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write(b"odd")
    async with serve_inprocess(export) as server:
        client = await connect(server.socket_path, tap=False)
        root = await client.attach()
        attr = await client.getattr(await client.walk(root, ["before1970"]))
        # Two's complement seconds, normalized nanoseconds: what Linux's client decodes.
        assert (attr.mtime_sec, attr.mtime_nsec) == (U64 - 1, 10**9 - 1)
        assert (attr.atime_sec, attr.atime_nsec) == (U64 - 86401, 10**9 - 1)
        # The guest can set such times too, and read them back.
        fid = await client.walk(root, ["before1970"])
        await rpc(client, p.Tsetattr(fid, p.SETATTR_MTIME | p.SETATTR_MTIME_SET, 0, 0, 0, 0,
                                     0, 0, U64 - 5, 0))
        assert os.stat(old).st_mtime_ns == -5 * 10**9
        assert (await client.getattr(fid)).mtime_sec == U64 - 5
        assert (await client.getattr(await client.walk(root, ["sparse"]))).size == 1 << 43
        sparse = await client.walk_open(root, ["sparse"])
        assert await client.read(sparse, (1 << 43) - 3, 100) == b"\0\0\0"
        names = {e[3] for e in await client.readdir_all(await client.walk_open(root, []))}
        odd_name = os.fsdecode(b"caf\xe9-\xff")
        assert odd_name in names
        assert await client.read(await client.walk_open(root, [odd_name]), 0, 10) == b"odd"
        await client.close()
