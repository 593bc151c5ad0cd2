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


def serving_pid(pid: int) -> int:
    """The process that serves, for a server started as *pid*: *pid* itself,
    or, under ``--pid-namespace``, its only child, pid 1 of a namespace of its
    own (*pid* is then the supervisor, which holds nothing)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return pid
    if len(children) == 1:
        status = Path(f"/proc/{children[0]}/status").read_text()
        nspid = next((line.split()[1:] for line in status.splitlines()
                      if line.startswith("NSpid:")), [])
        if len(nspid) == 2 and nspid[-1] == "1":
            return int(children[0])
    return pid


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
