"""Helpers the proxy back end starts itself, and starts again when they die."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from ... import syscalls
from .connectors import Connector, connect_unix

log = logging.getLogger("ninep.proxy")

_DEFAULT_HELPER = [sys.executable, "-m", "ninep.helper"]
#: Connection attempts while a fresh helper's socket is bound but not listening yet.
_CONNECT_TRIES = 200


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Runs in the helper child before exec: SIGTERM it if ninep dies."""
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGTERM)


class SpawnedHelper(Connector):
    """A helper this back end starts on *export*, and starts again if it dies.

    With ``per_connection`` each connection gets its own helper on one end of
    a socketpair (``-f``), which is what QEMU's single-connection helper
    needs for a pool; otherwise one helper listens on a private socket
    (``-s``) and serves every connection.
    """

    open_all_at_start = True

    def __init__(self, export: str, argv: Sequence[str] | None = None, *,
                 per_connection: bool = False, start_timeout: float = 20.0) -> None:
        self.export = os.path.abspath(export)
        self.argv = list(argv or _DEFAULT_HELPER)
        self.per_connection = per_connection
        self.start_timeout = start_timeout
        name = "ninep-proxy-helper" if argv is None else os.path.basename(self.argv[-1])
        self.where = f"proxy helper {name}"
        self._rundir: str | None = None  # made when the listening helper first starts
        self._procs: list[subprocess.Popen[bytes]] = []
        self._listener: subprocess.Popen[bytes] | None = None

    def _popen(self, extra: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        self._reap()
        proc = subprocess.Popen([*self.argv, "-p", self.export, "-n", *extra],
                                stdin=subprocess.DEVNULL, pass_fds=pass_fds,
                                preexec_fn=_die_with_parent)
        self._procs.append(proc)
        return proc

    def _reap(self) -> None:
        """Forget helpers that have exited (per-connection ones exit at EOF)."""
        self._procs = [p for p in self._procs if p.poll() is None]

    @property
    def socket_path(self) -> str:
        """The listening helper's socket, in a private directory made on first use."""
        if self._rundir is None:
            self._rundir = tempfile.mkdtemp(prefix="ninep-proxy-")
        return os.path.join(self._rundir, "helper.sock")

    def _spawn_listener(self) -> subprocess.Popen[bytes]:
        try:
            os.unlink(self.socket_path)  # a dead helper's socket; the helper refuses to reuse it
        except FileNotFoundError:
            pass
        return self._popen(["-s", self.socket_path, "-u", str(os.getuid()), "-g",
                            str(os.getgid())])

    async def _ensure_listener(self) -> None:
        """(Re)start the listening helper unless it runs, and wait for its socket."""
        if self._listener is not None and self._listener.poll() is None:
            return
        if self._listener is not None:
            log.warning("%s exited with status %s; starting it again", self.where,
                        self._listener.returncode)
        self._listener = self._spawn_listener()
        deadline = time.monotonic() + self.start_timeout
        while not os.path.exists(self.socket_path):
            code = self._listener.poll()
            if code is not None:
                raise OSError(errno.ECONNREFUSED,
                              f"{self.where} exited with status {code} (see its message above)")
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT,
                              f"{self.where} did not create its socket in {self.start_timeout:g}s")
            await asyncio.sleep(0.01)

    async def connect(self) -> socket.socket:
        if self.per_connection:
            return self._connect_pair()
        await self._ensure_listener()
        for _ in range(_CONNECT_TRIES):  # bound a moment before the helper listens
            try:
                return await connect_unix(self.socket_path)
            except ConnectionRefusedError:
                await asyncio.sleep(0.01)
        return await connect_unix(self.socket_path)

    def _connect_pair(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._popen(["-f", str(theirs.fileno())], pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._rundir is not None:
            shutil.rmtree(self._rundir, ignore_errors=True)
            self._rundir = None
