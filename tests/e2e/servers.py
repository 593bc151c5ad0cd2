"""Host-side 9p servers and prerequisite checks for the e2e tests.

Missing host packages skip a test with a reason on a developer's machine
but fail it loudly when ``CI=true``: CI must never go green by silently
skipping the e2e suite. ``scripts/install-deps`` installs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ninep.testing.process import stop_process
from tests.e2e.guest import GuestError, wait_for_listener

DIOD = "diod"
PROXY_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) unless ``ok``."""
    if ok:
        return
    msg = f"{what} (run scripts/install-deps)"
    if in_ci():
        pytest.fail(f"e2e prerequisite missing in CI: {msg}", pytrace=False)
    pytest.skip(msg)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DiodServer:
    export: Path
    address: str | tuple[str, int]
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def mount_opts(self) -> str:
        """Guest mount options for this export.

        diod needs the export as aname. With the Linux default access=client
        the attach carries uname "nobody" (n_uname unset), and diod then
        checks path traversal as nobody (EACCES under a 0700 pytest tmp
        dir), so attach as root explicitly.
        """
        return f"aname={self.export},uname=root"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_diod(export: Path, listen: str | tuple[str, int], log: Path) -> DiodServer:
    """Start diod in the foreground without auth, exporting ``export``."""
    require(shutil.which(DIOD) is not None, "diod is not installed (Debian package diod)")
    where = listen if isinstance(listen, str) else f"{listen[0]}:{listen[1]}"
    cmd = [DIOD, "-f", "-n", "-e", str(export), "-l", where, "-L", "stderr"]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    server = DiodServer(export=export, address=listen, proc=proc, log=log)
    try:
        wait_for_listener(listen, timeout=15, proc=proc)
    except GuestError as e:
        stop(proc)
        raise GuestError(f"{e}\n--- diod log ---\n{server.log_text()}") from None
    return server


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)


def start_proxy_helper(export: Path, sock: str) -> subprocess.Popen[bytes]:
    """Start QEMU's virtfs-proxy-helper exporting ``export`` on ``sock``."""
    require(os.access(PROXY_HELPER, os.X_OK), f"{PROXY_HELPER} missing (Debian package qemu-system-common)")
    proc = subprocess.Popen(
        [PROXY_HELPER, "-n", "-p", str(export), "-s", sock, "-u", "0", "-g", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while not os.path.exists(sock):
        if proc.poll() is not None:
            raise GuestError(f"virtfs-proxy-helper exited with {proc.returncode}")
        if time.monotonic() > deadline:
            stop(proc)
            raise GuestError("virtfs-proxy-helper did not create its socket")
        time.sleep(0.05)
    return proc


class NinepServer:
    """``python -m ninep`` serving *export* on a Unix socket, for a guest's trans=fd."""

    def __init__(self, export: Path, sock: Path, log: Path, *extra: str) -> None:
        import sys

        self.export = export
        self.sock = str(sock)
        self.log = log
        self._logf = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ninep", "--export", str(export), "--listen", f"unix:{sock}", *extra],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT)
        try:
            wait_for_listener(self.sock, proc=self.proc, probe=False)
        except GuestError as e:
            self.stop()
            raise GuestError(f"{e}\n--- ninep log ---\n{self.output()}") from None

    def stop(self) -> int:
        """SIGTERM, then the exit status (ninep exits 0 on SIGTERM)."""
        stop(self.proc)
        self._logf.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
