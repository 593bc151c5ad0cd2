"""A few cases end to end (client -> Session -> back end): what the back end
returns must also survive encoding, and its errnos must reach the client."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ninep.protocol import ninep as p

from .conftest import CRED, Caps, Connect


async def test_read_through_the_wire(connect: Connect, export: Path) -> None:
    (export / "d").mkdir()
    (export / "d" / "f").write_bytes(b"over the wire")
    client = await connect()
    root = await client.attach()
    fid = await client.walk_open(root, ["d", "f"])
    assert await client.read_all(fid) == b"over the wire"
    await client.clunk(fid)


async def test_walk_through_symlink_stops(connect: Connect, export: Path) -> None:
    (export / "ln").symlink_to("/etc")
    client = await connect()
    root = await client.attach()
    reply = await client.rpc(p.Twalk(root, client.new_fid(), ["ln", "passwd"]))
    assert [q.type for q in reply.wqids] == [p.QTSYMLINK]
    with pytest.raises(OSError) as exc:
        await client.walk_open(root, ["ln"])
    assert exc.value.errno == errno.ELOOP


async def test_fifo_open_is_enxio(connect: Connect, export: Path) -> None:
    os.mkfifo(export / "fifo")
    client = await connect()
    fid = await client.walk(await client.attach(), ["fifo"])
    with pytest.raises(OSError) as exc:
        await client.open(fid, p.DOTL_RDONLY)
    assert exc.value.errno == errno.ENXIO


async def test_lcreate_as_attached_user(connect: Connect, caps: Caps, export: Path) -> None:
    client = await connect()
    root = await client.attach(uname="someone", n_uname=CRED.uid)
    fid, reply = await client.create(root, "new", p.DOTL_RDWR, 0o4640, gid=CRED.gid)
    attr = await client.getattr(fid)
    assert stat.S_IMODE(attr.mode) == 0o4640 and attr.qid == reply.qid
    expected = tuple(CRED) if caps.creates_as_caller else (os.geteuid(), os.getegid())
    assert (attr.uid, attr.gid) == expected


async def test_getlock_conflict_encodes(connect: Connect, export: Path) -> None:
    (export / "f").write_bytes(b"x" * 10)
    client = await connect()
    root = await client.attach()
    a = await client.walk_open(root, ["f"], p.DOTL_RDWR)
    b = await client.walk_open(root, ["f"], p.DOTL_RDWR)
    locked = await client.rpc(p.Tlock(a, p.LOCK_TYPE_WRLCK, 0, 2, 3, 11, "guest-a"))
    assert locked.status == p.LOCK_SUCCESS
    blocked = await client.rpc(p.Tlock(b, p.LOCK_TYPE_RDLCK, 0, 0, 0, 12, "guest-b"))
    assert blocked.status == p.LOCK_BLOCKED
    res = await client.rpc(p.Tgetlock(b, p.LOCK_TYPE_RDLCK, 0, 0, 12, "guest-b"))
    assert (res.type, res.start, res.length) == (p.LOCK_TYPE_WRLCK, 2, 3)
    await client.clunk(a)
    res = await client.rpc(p.Tgetlock(b, p.LOCK_TYPE_WRLCK, 0, 0, 12, "guest-b"))
    assert res.type == p.LOCK_TYPE_UNLCK
