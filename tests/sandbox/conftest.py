"""A real ``python -m ninep`` process, started and confined, for the sandbox tests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncContextManager

import pytest

NINEP = [sys.executable, "-m", "ninep"]


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    socket: str

    def status(self) -> dict[str, str]:
        """/proc/PID/status of the server, as {field: value}."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def status_mask(value: str) -> int:
    return int(value.strip(), 16)


StartServer = Callable[..., AsyncContextManager[Running]]


@pytest.fixture
def start_server(export: Path, sockdir: Path) -> StartServer:
    """``async with start_server("--security-model", "none") as running:`` once it serves."""

    @asynccontextmanager
    async def start(*options: str, pass_fds: tuple[int, ...] = ()) -> AsyncIterator[Running]:
        sock = str(sockdir / "ninep.sock")
        proc = await asyncio.create_subprocess_exec(
            *NINEP, "--export", str(export), "--listen", f"unix:{sock}", "--log-level", "info",
            *options, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds)
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

