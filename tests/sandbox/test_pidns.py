"""--pid-namespace: the server is pid 1 of its own pid namespace, under a supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.testing.process import serving_pid

from .conftest import StartServer, status_mask

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the namespaces need root here")


@pytest.fixture
def export(normal_user_export: Path) -> Path:
    return normal_user_export


def _gone(pid: int, timeout: float = 10) -> bool:
    """True once *pid* has exited (a zombie counts: it runs no more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "(zombie)" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


@root_only
@pytest.mark.parametrize("normal_user", [False, True], ids=["root", "normal-user"])
async def test_the_server_is_pid_1_under_a_supervisor_that_holds_nothing(
        start_server: StartServer, export: Path, normal_user: bool) -> None:
    (export / "inside").write_text("shared")
    model = ("--security-model", "mapped-xattr") if normal_user else ()
    async with start_server("--pid-namespace", *model, normal_user=normal_user) as running:
        supervisor, server = running.proc.pid, running.pid
        assert server != supervisor
        status = running.status()
        assert status["NSpid"].split()[-1] == "1"
        assert os.readlink(f"/proc/{server}/ns/pid") != os.readlink("/proc/self/ns/pid")
        sup = dict(line.split(":\t", 1) for line in
                   Path(f"/proc/{supervisor}/status").read_text().splitlines() if ":\t" in line)
        assert status_mask(sup["CapEff"]) == status_mask(sup["CapPrm"]) == 0
        assert status_mask(sup["CapBnd"]) == 0 or normal_user
        assert sup["Seccomp"].strip() == "2" and sup["NoNewPrivs"].strip() == "1"
        assert sorted(os.listdir(f"/proc/{supervisor}/fd")) == ["0", "1", "2"]
        assert status["Seccomp"].strip() == "2"
        async with await Client.connect_unix(running.socket, msize=8192) as client:
            top = await client.attach()
            assert await client.read(await client.walk_open(top, ["inside"]), 0, 10) == b"shared"
        running.proc.send_signal(signal.SIGHUP)  # forwarded: a clean stop
        assert await asyncio.wait_for(running.proc.wait(), 30) == 0
    assert _gone(server)
    assert not Path(running.socket).exists()


@root_only
async def test_the_server_dies_with_a_killed_supervisor(start_server: StartServer) -> None:
    async with start_server("--pid-namespace") as running:
        server = running.pid
        assert server != running.proc.pid
        running.proc.kill()
        await running.proc.wait()
        assert _gone(server)


@root_only
async def test_the_supervisor_exits_with_the_servers_status(start_server: StartServer) -> None:
    async with start_server("--pid-namespace") as running:
        os.kill(running.pid, signal.SIGKILL)
        assert await asyncio.wait_for(running.proc.wait(), 30) == -signal.SIGKILL


@pytest.mark.parametrize("options", [("--sandbox", "none"), ("--sandbox", "chroot"),
                                     ("--no-pid-namespace",)], ids=["none", "chroot", "opted-out"])
async def test_without_a_pid_namespace_the_serving_pid_is_the_server(
        start_server: StartServer, options: tuple[str, ...]) -> None:
    async with start_server(*options) as running:
        assert serving_pid(running.proc.pid) == running.proc.pid


@root_only
async def test_the_namespace_sandbox_has_a_pid_namespace_by_default(
        start_server: StartServer) -> None:
    async with start_server() as running:
        assert running.pid != running.proc.pid
        assert running.status()["NSpid"].split()[-1] == "1"


@pytest.mark.parametrize("sandbox", ["chroot", "none"])
def test_a_pid_namespace_without_the_namespace_sandbox_is_refused_in_one_line(
        export: Path, sandbox: str) -> None:
    result = subprocess.run([sys.executable, "-m", "ninep", "--export", str(export), "--listen",
                             "unix:/nonexistent/s", "--pid-namespace", "--sandbox", sandbox],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "--pid-namespace" in result.stderr
