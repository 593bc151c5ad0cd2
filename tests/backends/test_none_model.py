"""``--security-model none``: chown new entries as passthrough does, ignore a failure.

A real ``python -m ninep`` process serves the export.  Run as root it gives
the guest's creations the caller's owner (passthrough's behaviour); run
without CAP_CHOWN, the chown fails and every creation still succeeds, owned
by the server, with the guest's exact mode (QEMU's ``local_set_cred_passthrough``).
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ninep import syscalls
from ninep.client import Client
from ninep.protocol import ninep as p

from security.harness import ServerProcess, connect, rpc

PR_CAPBSET_DROP = 24
CALLER = (4321, 5432)


def _drop_caps(*caps: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in caps:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


def drop_cap_chown() -> None:
    """In the server child before exec: root, but chown to another user fails."""
    _drop_caps(syscalls.CAP_CHOWN)


def drop_owner_caps() -> None:
    """In the server child before exec: as an unprivileged server, it may not
    chown, nor chmod another user's file, nor keep set-id bits as it writes."""
    _drop_caps(syscalls.CAP_CHOWN, syscalls.CAP_FOWNER, syscalls.CAP_FSETID)


async def _create_everything(client: Client, root: int) -> None:
    """Tlcreate, Tmkdir, Tsymlink and Tmknod as CALLER, with set-id and odd modes."""
    gid = CALLER[1]
    fid = await client.walk(root, [])
    await rpc(client, p.Tlcreate(fid, "file", p.DOTL_RDWR, 0o4751, gid))
    await rpc(client, p.Tmkdir(root, "dir", 0o2715, gid))
    await rpc(client, p.Tsymlink(root, "link", "file", gid))
    await rpc(client, p.Tmknod(root, "fifo", stat.S_IFIFO | 0o640, 0, 0, gid))


async def _served(export: Path, preexec: Callable[[], None] | None) -> AsyncIterator[
        tuple[Client, int]]:
    with ServerProcess(export, "--security-model", "none", preexec=preexec) as server:
        client = await connect(server.socket_path, tap=False)
        root = await client.attach("u", CALLER[0])
        yield client, root
        await client.close()
        assert server.alive() and "Traceback" not in server.log(), server.log()


def _owners_and_modes(export: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for name in ("file", "dir", "link", "fifo"):
        st = os.lstat(export / name)
        out[name] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return out


@pytest.fixture
def export(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (to run the server with and without CAP_CHOWN)")
    path = tmp_path / "export"
    path.mkdir()
    return path


async def test_none_as_root_gives_new_entries_the_caller(export: Path) -> None:
    async for client, root in _served(export, None):
        await _create_everything(client, root)
        reply = await client.getattr(await client.walk(root, ["file"]))
        assert (reply.uid, reply.gid) == CALLER
    got = _owners_and_modes(export)
    assert {name: owner[:2] for name, owner in got.items()} == dict.fromkeys(got, CALLER)
    assert got["file"][2] == 0o4751 and got["dir"][2] == 0o2715 and got["fifo"][2] == 0o640


async def test_none_without_cap_chown_keeps_the_servers_owner(export: Path) -> None:
    async for client, root in _served(export, drop_cap_chown):
        await _create_everything(client, root)  # no EPERM from any of them
        reply = await client.getattr(await client.walk(root, ["file"]))
        assert (reply.uid, reply.gid) == (0, 0)
        await client.walk_open(root, ["file"], p.DOTL_RDWR)  # the server can open it
    got = _owners_and_modes(export)
    assert {name: owner[:2] for name, owner in got.items()} == dict.fromkeys(got, (0, 0))
    assert got["file"][2] == 0o4751 and got["dir"][2] == 0o2715 and got["fifo"][2] == 0o640


async def test_none_unprivileged_writes_another_users_setid_file(export: Path) -> None:
    """The server may not chmod the file to clear its set-id bits: the write
    still succeeds, and the host kernel clears them (the server lacks CAP_FSETID)."""
    target = export / "theirs"
    target.write_bytes(b"data")
    os.chown(target, 1000, 1000)
    os.chmod(target, 0o6777)
    async for client, root in _served(export, drop_owner_caps):
        fid = await client.walk_open(root, ["theirs"], p.DOTL_RDWR)
        assert await client.write(fid, 0, b"X") == 1
    assert target.read_bytes() == b"Xata"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777
