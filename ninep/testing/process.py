"""Child-process handling shared by the tests, the benchmarks and scripts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> int:
    """SIGTERM, wait up to *timeout* seconds, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def wait_for_path(proc: asyncio.subprocess.Process, path: Path) -> None:
    """Wait until a server process has created *path* (its socket); fail if it exits first."""
    for _ in range(1000):
        if path.exists():
            return
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server never listened at {path} (exit status {proc.returncode})")


def open_fds(pid: int) -> list[str]:
    """What the process's open fds point at (``/proc/PID/fd`` link targets), sorted:
    a leak then names itself, not just a count."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed while we looked
            pass
    return sorted(targets)
