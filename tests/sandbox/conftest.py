"""A real ``python -m ninep`` process, started and confined, for the sandbox tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ninep import syscalls as sc
from ninep.testing.process import serving_pid

NINEP = [sys.executable, "-m", "ninep"]


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    socket: str

    @property
    def pid(self) -> int:
        """The serving process (not a --pid-namespace supervisor)."""
        return serving_pid(self.proc.pid)

    def status(self) -> dict[str, str]:
        """/proc/PID/status of the server, as {field: value}."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def status_mask(value: str) -> int:
    return int(value.strip(), 16)


StartServer = Callable[..., AbstractAsyncContextManager[Running]]


@pytest.fixture
def start_server(export: Path, sockdir: Path) -> StartServer:
    """``async with start_server("--security-model", "none") as running:`` once it serves."""

    @asynccontextmanager
    async def start(*options: str, pass_fds: tuple[int, ...] = (),
                    normal_user: bool = False) -> AsyncIterator[Running]:
        sock = str(sockdir / "ninep.sock")
        if normal_user:
            os.chown(export, NORMAL_UID, NORMAL_UID)
            os.chown(sockdir, NORMAL_UID, NORMAL_UID)
        proc = await asyncio.create_subprocess_exec(
            *NINEP, "--export", str(export), "--listen", f"unix:{sock}", "--log-level", "info",
            *options, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds,
            preexec_fn=as_normal_user if normal_user else None)
        assert proc.stderr is not None
        seen = []
        try:
            while True:  # "serving" is logged once every layer is in place
                line = await asyncio.wait_for(proc.stderr.readline(), 60)
                seen.append(line)
                assert line, f"the server ended: {b''.join(seen).decode()}"
                if b"INFO serving " in line:
                    break
            yield Running(proc, sock)
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    return start


NORMAL_UID = 65534


@pytest.fixture
def normal_user_export() -> Iterator[Path]:
    """An export the normal user can reach too (pytest's tmp_path is root's, mode 0700)."""
    top = Path(tempfile.mkdtemp(prefix="ninep-user-", dir="/tmp"))
    top.chmod(0o755)
    (top / "export").mkdir()
    yield top / "export"
    shutil.rmtree(top, ignore_errors=True)


def as_normal_user() -> None:
    """In the child before exec: become uid/gid 65534 with no capabilities.

    The interpreter may live under a directory a normal user cannot search
    (pyenv in /root): in a private mount namespace of the child only, that
    directory's parent is covered by a tmpfs that holds just the interpreter's
    tree, so the same python runs as the normal user.
    """
    prefix = os.path.realpath(sys.base_prefix)
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    top = "/" + prefix.strip("/").split("/")[0]  # e.g. /root
    if os.stat(top).st_mode & 0o005 != 0o005 and top not in ("/usr", "/"):
        keep = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
        sc.mount("tmpfs", top, "tmpfs", 0, "mode=0755")
        os.makedirs(prefix)
        sc.mount(f"/proc/self/fd/{keep}", prefix, None, sc.MS_BIND | sc.MS_REC)
        os.close(keep)
    os.setgroups([])
    os.setresgid(NORMAL_UID, NORMAL_UID, NORMAL_UID)
    os.setresuid(NORMAL_UID, NORMAL_UID, NORMAL_UID)
