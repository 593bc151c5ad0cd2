"""Started by a normal user, ninep serves the mapped models and none fully, confined."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ninep.protocol import ninep as p
from ninep.client import Client

from .conftest import NORMAL_UID, StartServer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become a normal user")


@pytest.fixture
def export(normal_user_export: Path) -> Path:
    return normal_user_export


async def _xattr_set(client: Client, fid: int, name: str, value: bytes) -> None:
    xfid = await client.walk(fid, [])
    await client.rpc(p.Txattrcreate(xfid, name, len(value), 0))
    await client.write(xfid, 0, value)
    await client.clunk(xfid)


async def _xattr_get(client: Client, fid: int, name: str) -> bytes:
    xfid = client.new_fid()
    size = (await client.rpc(p.Txattrwalk(fid, xfid, name))).size
    data = await client.read(xfid, 0, size)
    await client.clunk(xfid)
    return data


@pytest.mark.parametrize("model", ["mapped-xattr", "mapped-file", "none"])
async def test_a_normal_user_serves_with_xattrs_locks_and_owners(
        start_server: StartServer, export: Path, model: str) -> None:
    async with start_server("--security-model", model, normal_user=True) as running:
        status = running.status()
        pid = running.pid
        user_ns = os.readlink(f"/proc/{pid}/ns/user")
        mounts = Path(f"/proc/{pid}/mountinfo").read_text()
        async with await Client.connect_unix(running.socket, msize=8192) as client:
            root = await client.attach(n_uname=1000)
            fid, _ = await client.create(root, "f", p.DOTL_RDWR, 0o640, gid=1000)
            await client.write(fid, 0, b"0123456789")
            await _xattr_set(client, fid, "user.note", b"hello")
            assert await _xattr_get(client, fid, "user.note") == b"hello"
            other = await client.walk_open(root, ["f"], p.DOTL_RDWR)
            locked = await client.rpc(p.Tlock(fid, p.LOCK_TYPE_WRLCK, 0, 0, 5, 1, "a"))
            assert locked.status == p.LOCK_SUCCESS
            held = await client.rpc(p.Tgetlock(other, p.LOCK_TYPE_WRLCK, 0, 0, 2, "b"))
            assert (held.type, held.start, held.length) == (p.LOCK_TYPE_WRLCK, 0, 5)
            await client.mkdir(root, "d", gid=1000)
            attr = await client.getattr(fid)
    assert status["Uid"].split()[0] == str(NORMAL_UID)
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    # the namespace sandbox went through a user namespace of its own
    assert user_ns != os.readlink("/proc/self/ns/user")
    assert " /proc " not in mounts and f" {export} " in mounts
    host = os.lstat(export / "f")
    assert host.st_uid == NORMAL_UID  # files stay the server user's on the host
    if model != "none":
        assert (attr.uid, attr.gid) == (1000, 1000)  # the guest's owner lives in metadata
    assert (export / "f").read_bytes() == b"0123456789"
