"""Set-id bits after a write or truncate by a user without CAP_FSETID.

Linux clears S_ISUID, and S_ISGID when group execute is set, when someone
other than a CAP_FSETID holder writes to or truncates a regular file.  ninep
writes as root, so the host kernel keeps them (and in the mapped models they
live in the metadata): the session asks for ``SetAttr(drop_setid=True)`` for
every fid whose user is not root, and each back end clears the bits where
it keeps modes.  Every test runs on every back end and security model.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ninep.backends.base import Credentials, SetAttr, setid_bits_to_clear
from ninep.client import Client
from ninep.protocol import ninep as p

from .conftest import Caps, Connect, Fs

OTHER = Credentials(1000, 1000)  # the file's owner
WRITER = 65534  # the guest user who writes: not root, not the owner

#: (mode before, mode after a write or truncate by WRITER)
LINUX_RULE = [
    (0o4777, 0o0777),
    (0o2777, 0o0777),
    (0o6777, 0o0777),
    (0o4755, 0o0755),
    (0o6745, 0o2745),  # no group execute: S_ISGID is a locking mark and stays
    (0o2767, 0o2767),
    (0o1777, 0o1777),  # the sticky bit is no set-id bit
    (0o0755, 0o0755),
]


@pytest.mark.parametrize(("mode", "kept"), [
    (stat.S_IFREG | before, after) for before, after in LINUX_RULE
] + [
    (stat.S_IFDIR | 0o6777, 0o6777),  # only regular files lose them
    (stat.S_IFIFO | 0o6777, 0o6777),
])
def test_setid_bits_to_clear_follows_linux(mode: int, kept: int) -> None:
    assert stat.S_IMODE(mode) & ~setid_bits_to_clear(mode) == kept


# --- the back end: SetAttr(drop_setid) --------------------------------------------------------

async def _file_with_mode(fs: Fs, mode: int, *, opened: bool) -> object:
    """A regular file of guest-visible *mode* owned by OTHER; its node (open or not)."""
    node = await fs.create("f", os.O_RDWR, 0o644, OTHER)
    await fs.backend.write_from(node, 0, [memoryview(b"content")])
    await fs.backend.setattr(node, SetAttr(mode=mode))
    if opened:
        return node
    await fs.clunk(node)
    return await fs.walk("f")


async def _mode_of(fs: Fs, node: object) -> int:
    _, st = await fs.backend.getattr(node)
    return st.mode


@pytest.mark.parametrize("opened", [True, False], ids=["open", "path"])
@pytest.mark.parametrize(("before", "after"), LINUX_RULE, ids=[f"{b:o}" for b, _ in LINUX_RULE])
async def test_drop_setid_clears_the_bits_linux_clears(fs: Fs, caps: Caps, before: int,
                                                        after: int, opened: bool) -> None:
    node = await _file_with_mode(fs, before, opened=opened)
    assert stat.S_IMODE(await _mode_of(fs, node)) == before
    await fs.backend.setattr(node, SetAttr(drop_setid=True))
    mode = await _mode_of(fs, node)
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == after
    _, fresh = await fs.getattr("f")  # stored, not just cached in the node
    assert stat.S_IMODE(fresh.mode) == after
    if caps.host_modes:
        assert stat.S_IMODE(os.lstat(fs.host("f")).st_mode) == after
    assert fs.host("f").read_bytes() == b"content"


@pytest.mark.parametrize("drop", [True, False])
async def test_write_from_drops_setid_only_when_asked(fs: Fs, drop: bool) -> None:
    node = await _file_with_mode(fs, 0o6777, opened=True)
    assert await fs.backend.write_from(node, 0, [memoryview(b"X")], drop_setid=drop) == 1
    assert stat.S_IMODE(await _mode_of(fs, node)) == (0o777 if drop else 0o6777)
    assert fs.host("f").read_bytes() == b"Xontent"


async def test_drop_setid_with_truncate_clears_and_truncates(fs: Fs) -> None:
    node = await _file_with_mode(fs, 0o6777, opened=False)
    await fs.backend.setattr(node, SetAttr(size=2, drop_setid=True))
    _, st = await fs.backend.getattr(node)
    assert stat.S_IMODE(st.mode) == 0o777 and st.size == 2


async def test_an_explicit_mode_wins_over_drop_setid(fs: Fs) -> None:
    """The Linux client sends the mode it computed itself with a truncate."""
    node = await _file_with_mode(fs, 0o6777, opened=True)
    await fs.backend.setattr(node, SetAttr(mode=0o4750, size=0, drop_setid=True))
    assert stat.S_IMODE(await _mode_of(fs, node)) == 0o4750


async def test_drop_setid_leaves_directories_alone(fs: Fs) -> None:
    await fs.backend.mkdir(fs.root, "d", 0o755, OTHER)
    node = await fs.walk("d")
    await fs.backend.setattr(node, SetAttr(mode=0o6777))
    await fs.backend.setattr(node, SetAttr(drop_setid=True))
    assert stat.S_IMODE(await _mode_of(fs, node)) == 0o6777


# --- through the session: who writes decides ---------------------------------------------------

def _tsetattr(fid: int, valid: int, *, mode: int = 0, uid: int = 0, size: int = 0) -> p.Tsetattr:
    return p.Tsetattr(fid, valid, mode, uid, 0, size, 0, 0, 0, 0)


async def _shared_file(client: Client, mode: int) -> None:
    """As root: /f with content, owned by OTHER, with *mode*."""
    root = await client.attach()
    fid, _ = await client.create(root, "f", p.DOTL_RDWR, 0o644)
    await client.write(fid, 0, b"content")
    await client.rpc(_tsetattr(fid, p.SETATTR_MODE | p.SETATTR_UID, mode=mode, uid=OTHER.uid))
    await client.clunk(fid)


async def _as(client: Client, uid: int) -> int:
    return await client.attach(uname="u", n_uname=uid)


async def _mode(client: Client, root: int) -> int:
    return stat.S_IMODE((await client.getattr(await client.walk(root, ["f"]))).mode)


@pytest.mark.parametrize("access", [p.DOTL_WRONLY, p.DOTL_RDWR], ids=["wronly", "rdwr"])
@pytest.mark.parametrize("before", [0o4777, 0o2777, 0o6777], ids=["4777", "2777", "6777"])
async def test_a_write_by_another_user_clears_setid(connect: Connect, export: Path,
                                                     before: int, access: int) -> None:
    """The POSIX suite's six cases: uid 65534 writes one byte."""
    client = await connect()
    await _shared_file(client, before)
    root = await _as(client, WRITER)
    fid = await client.walk_open(root, ["f"], access)
    assert await client.write(fid, 0, b"X") == 1
    assert await _mode(client, root) == 0o777
    assert (export / "f").read_bytes() == b"Xontent"


async def test_root_writes_keep_setid(connect: Connect) -> None:
    client = await connect()
    await _shared_file(client, 0o6777)
    root = await _as(client, 0)
    fid = await client.walk_open(root, ["f"], p.DOTL_RDWR)
    await client.write(fid, 0, b"X")
    await client.rpc(_tsetattr(fid, p.SETATTR_SIZE, size=1))
    await client.clunk(fid)
    await client.walk_open(root, ["f"], p.DOTL_WRONLY | p.DOTL_TRUNC)
    assert await _mode(client, root) == 0o6777


async def test_an_empty_write_keeps_setid(connect: Connect) -> None:
    """Linux removes privileges only when a write has bytes to write."""
    client = await connect()
    await _shared_file(client, 0o6777)
    root = await _as(client, WRITER)
    fid = await client.walk_open(root, ["f"], p.DOTL_WRONLY)
    assert await client.write(fid, 0, b"") == 0
    assert await _mode(client, root) == 0o6777


async def test_a_truncate_by_another_user_clears_setid(connect: Connect) -> None:
    client = await connect()
    await _shared_file(client, 0o6777)
    root = await _as(client, WRITER)
    await client.rpc(_tsetattr(await client.walk(root, ["f"]), p.SETATTR_SIZE, size=3))
    assert await _mode(client, root) == 0o777
    # With a mode (what the Linux client sends for truncate(2)), that mode stands.
    await client.rpc(_tsetattr(await client.walk(await _as(client, 0), ["f"]), p.SETATTR_MODE,
                               mode=0o6777))
    await client.rpc(_tsetattr(await client.walk(root, ["f"]), p.SETATTR_SIZE | p.SETATTR_MODE,
                               mode=0o2777, size=1))
    assert await _mode(client, root) == 0o2777


async def test_open_with_trunc_by_another_user_clears_setid(connect: Connect) -> None:
    client = await connect()
    await _shared_file(client, 0o4777)
    root = await _as(client, WRITER)
    await client.walk_open(root, ["f"], p.DOTL_RDWR)  # opening alone changes nothing
    assert await _mode(client, root) == 0o4777
    fid = await client.walk_open(root, ["f"], p.DOTL_WRONLY | p.DOTL_TRUNC)
    assert await _mode(client, root) == 0o777
    assert (await client.getattr(fid)).size == 0
