"""--sandbox namespace: the running server sees the export, the runtime and its own fds only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.sandbox.mounts import runtime_dirs

from .conftest import StartServer

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the namespaces need root here")


def _mounts(pid: int) -> list[tuple[str, str]]:
    """(mount point, options) of every mount the process sees."""
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return [(line.split()[4], line.split()[5]) for line in lines]


@root_only
async def test_the_server_sees_only_the_export_the_runtime_and_its_fds(
        start_server: StartServer, export: Path, tmp_path: Path) -> None:
    (export / "inside").write_text("shared")
    (tmp_path / "beside").write_text("host only")
    async with start_server() as running:
        pid = running.pid
        mounts = dict(_mounts(pid))
        root = Path(f"/proc/{pid}/root")
        assert (root / str(export).lstrip("/") / "inside").read_text() == "shared"
        assert not (root / str(tmp_path).lstrip("/") / "beside").exists()
        assert not (root / "etc").exists() and not (root / "home").exists()
        async with await Client.connect_unix(running.socket, msize=8192) as client:
            top = await client.attach()
            assert await client.read(await client.walk_open(top, ["inside"]), 0, 10) == b"shared"
            new, _ = await client.create(top, "from-guest")
            assert await client.write(new, 0, b"ok") == 2
            # a pinned inode is reached through /proc/self/fd/N: setattr on the fid
            reply = await client.getattr(new)
            assert reply.size == 2
    runtime = set(runtime_dirs())
    assert set(mounts) == {"/", str(export), "/proc/self/fd"} | runtime, mounts
    assert "ro" in mounts["/"].split(",")
    for path in runtime:
        assert "ro" in mounts[path].split(","), path
    assert (export / "from-guest").read_text() == "ok"


@root_only
async def test_the_sandbox_has_its_own_network_namespace(start_server: StartServer) -> None:
    async with start_server() as running:
        ours = os.readlink(f"/proc/{running.pid}/ns/net")
        mnt = os.readlink(f"/proc/{running.pid}/ns/mnt")
    assert ours != os.readlink("/proc/self/ns/net")
    assert mnt != os.readlink("/proc/self/ns/mnt")


async def test_sandbox_none_leaves_the_host_in_view(start_server: StartServer) -> None:
    async with start_server("--sandbox", "none") as running:
        mounts = dict(_mounts(running.pid))
    assert "/proc" in mounts


def test_namespace_with_the_proxy_back_end_is_refused_in_one_line(export: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ninep", "--export", str(export), "--listen",
                             "unix:/nonexistent/s", "--backend", "proxy", "--sandbox",
                             "namespace"], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "--sandbox none" in result.stderr
