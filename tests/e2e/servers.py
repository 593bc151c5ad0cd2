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

from ninep.testing.process import serving_pid, stop_process
from tests.e2e.guest import FdSocketShare, GuestError, Share, VhostUserShare, vhost_qemu, wait_for_listener

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


@dataclass(frozen=True)
class Serve:
    """How a test wants ninep started: its extra CLI arguments and its transport.

    ``transport`` is ``"fd"`` (a Unix socket the guest reaches by trans=fd over
    virtio-serial) or ``"vhost"`` (ninep as QEMU's vhost-user back end, guest
    trans=virtio; needs QEMU >= 10.2 from scripts/build-qemu).
    """

    args: tuple[str, ...] = ()
    transport: str = "fd"

    @property
    def id(self) -> str:
        words = [a for a in self.args if not a.startswith("--")] or ["default"]
        return "-".join([*words, *(["vhost"] if self.transport == "vhost" else [])])


def vhost(*args: str) -> Serve:
    """ninep over vhost-user with these extra arguments."""
    return Serve(tuple(args), "vhost")


def require_vhost_qemu() -> str:
    """The QEMU >= 10.2 binary (skip locally, fail in CI, when it is missing)."""
    qemu = vhost_qemu()
    require(qemu is not None, "QEMU >= 10.2 with vhost-user-test-device-pci (scripts/build-qemu)")
    assert qemu is not None
    return qemu


class NinepServer:
    """``python -m ninep`` serving *export* on the Unix socket *sock*.

    With ``transport="fd"`` it listens for a guest's trans=fd (``--listen``);
    with ``"vhost"`` it is a vhost-user back end (``--socket-path``, ``--tag``).
    :meth:`share` is what the guest mounts.
    """

    TAG = "ninep0"

    def __init__(self, export: Path, sock: Path, log: Path, *extra: str, transport: str = "fd") -> None:
        import sys

        if transport not in ("fd", "vhost"):
            raise ValueError(f"unknown transport {transport!r}")
        self.export = export
        self.sock = str(sock)
        self.log = log
        self.transport = transport
        listen = (["--listen", f"unix:{sock}"] if transport == "fd"
                  else ["--socket-path", str(sock), "--tag", self.TAG])
        self._logf = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ninep", "--export", str(export), *listen, *extra],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT)
        try:
            wait_for_listener(self.sock, proc=self.proc, probe=False)
            if "--log-level" not in extra:
                self._wait_until_serving()
        except GuestError as e:
            self.stop()
            raise GuestError(f"{e}\n--- ninep log ---\n{self.output()}") from None

    def _wait_until_serving(self, timeout: float = 60) -> None:
        """Until ninep logs "serving": its socket appears before the process is
        confined (and, with --pid-namespace, before the serving process exists)."""
        deadline = time.monotonic() + timeout
        while "INFO serving " not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise GuestError("ninep never logged that it serves")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        """The serving process (not a --pid-namespace supervisor)."""
        return serving_pid(self.proc.pid)

    def share(self, **kwargs: str) -> Share:
        """The share a guest mounts to reach this server (``mount_opts=...``)."""
        if self.transport == "vhost":
            return VhostUserShare(self.sock, tag=self.TAG, **kwargs)  # type: ignore[arg-type]
        return FdSocketShare(self.sock, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> int:
        """SIGTERM, then the exit status (ninep exits 0 on SIGTERM)."""
        stop(self.proc)
        self._logf.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
