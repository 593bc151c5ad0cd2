"""Permissions change under an open fid.

The server runs without the capabilities that bypass permission checks
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER are dropped from its
bounding set, so exec cannot give them back), so the host's chmod/chown
really bites: a fid opened before keeps reading and writing through its fd,
as a local process would; a new open is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ninep import syscalls
from ninep.protocol import ninep as p

from security.harness import ServerProcess, connect, expect_error, rpc

PR_CAPBSET_DROP = 24
DAC_CAPS = (syscalls.CAP_DAC_OVERRIDE, syscalls.CAP_DAC_READ_SEARCH, syscalls.CAP_FOWNER)


def drop_dac_capabilities() -> None:
    """In the child before exec: root, but bound by file permissions like anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in DAC_CAPS:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")


@pytest.fixture
async def unprivileged(tmp_path: Path) -> AsyncIterator[tuple[object, int, Path]]:
    """A server bound by file permissions, a client attached to it, and the export."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to drop capabilities from a root server)")
    export = tmp_path / "export"
    (export / "dir").mkdir(parents=True)
    (export / "file").write_bytes(b"readable before\n")
    (export / "dir" / "inner").write_bytes(b"inner\n")
    with ServerProcess(export, preexec=drop_dac_capabilities) as server:
        client = await connect(server.socket_path, tap=False)
        root = await client.attach()
        yield client, root, export
        await client.close()
        assert server.alive()


def test_server_really_lacks_dac_override(tmp_path: Path) -> None:
    """The premise: the subprocess cannot read a mode-000 file, as root normally could."""
    secret = tmp_path / "secret"
    secret.write_text("x")
    secret.chmod(0)
    code = f"open({str(secret)!r}).read()"
    res = subprocess.run([sys.executable, "-c", code], preexec_fn=drop_dac_capabilities,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "PermissionError" in res.stderr


async def test_open_fid_survives_chmod_000(unprivileged: tuple) -> None:
    """chmod 000 after the open: the open fid still reads and writes; a new open fails."""
    client, root, export = unprivileged
    fid = await client.walk_open(root, ["file"], p.DOTL_RDWR)
    os.chmod(export / "file", 0)
    assert await client.read(fid, 0, 100) == b"readable before\n"
    assert await client.write(fid, 0, b"WRITABLE") == 8
    fresh = await client.walk(root, ["file"])
    await expect_error(client, p.Tlopen(fresh, p.DOTL_RDONLY), errno.EACCES)
    assert (await client.getattr(fid)).mode & 0o777 == 0


async def test_open_fid_survives_chown_away(unprivileged: tuple) -> None:
    """The file is given to root with mode 0600: the open fid keeps working."""
    client, root, export = unprivileged
    fid = await client.walk_open(root, ["file"], p.DOTL_RDONLY)
    os.chown(export / "file", 4321, 4321)
    os.chmod(export / "file", 0o600)
    assert await client.read(fid, 0, 8) == b"readable"
    await expect_error(client, p.Tlopen(await client.walk(root, ["file"]), p.DOTL_RDONLY),
                       errno.EACCES)


async def test_open_dir_survives_chmod_000(unprivileged: tuple) -> None:
    """An open directory still lists after chmod 000; creating in it is refused."""
    client, root, export = unprivileged
    dfid = await client.walk_open(root, ["dir"])
    os.chmod(export / "dir", 0)
    names = {e[3] for e in await client.readdir_all(dfid)}
    assert "inner" in names
    await expect_error(client, p.Tlcreate(await client.walk(root, ["dir"]), "new", p.DOTL_RDWR,
                                          0o644, 0), errno.EACCES)
    reply = await rpc(client, p.Twalk(root, client.new_fid(), ["dir", "inner"]))
    assert len(reply.wqids) == 1, "walked into a directory without search permission"
    await expect_error(client, p.Twalk(await client.walk(root, ["dir"]), client.new_fid(),
                                       ["inner"]), errno.EACCES)


async def test_parent_made_unsearchable_under_open_file(unprivileged: tuple) -> None:
    """The parent dir loses its x bit: the file open inside keeps working through its fd,
    path-based ops on it fail with EACCES, and the server stays healthy."""
    client, root, export = unprivileged
    fid = await client.walk_open(root, ["dir", "inner"], p.DOTL_RDWR)
    path_fid = await client.walk(root, ["dir", "inner"])
    os.chmod(export / "dir", 0o600)
    assert await client.read(fid, 0, 5) == b"inner"
    assert await client.write(fid, 0, b"INNER") == 5
    await expect_error(client, p.Tlopen(path_fid, p.DOTL_RDONLY), errno.EACCES)
    os.chmod(export / "dir", 0o755)
    await rpc(client, p.Tlopen(path_fid, p.DOTL_RDONLY))
    assert await client.read(path_fid, 0, 5) == b"INNER"
