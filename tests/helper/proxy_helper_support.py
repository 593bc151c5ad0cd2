"""Support for the proxy-helper tests: start a helper (ours or QEMU's) as a
subprocess on a temporary export and talk to it with ninep.protocol.proxy.

Imported by conftest.py and the test modules as ``proxy_helper_support``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ninep.testing.process import stop_process
from ninep.protocol import proxy as P

REPO = Path(__file__).resolve().parents[2]
QEMU_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"


def helper_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


OUR_HELPER = [sys.executable, "-m", "ninep.helper"]


class Client:
    """A blocking proxy-protocol client over one connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(15)
        self.dec = P.ReplyDecoder()
        self._fds: list[int] = []

    def send(self, req) -> None:
        self.sock.sendall(P.encode_request(req))
        self.dec.expect(req)

    def receive(self):
        """The next reply and, for T_OPEN/T_CREATE, the fd that came with it (else None)."""
        while True:
            msg = self.dec.next_message()
            if msg is not None:
                fd = None
                if isinstance(msg, P.FdReply):
                    if msg.has_fd:
                        assert self._fds, "V9FS_FD_VALID without an fd"
                        fd = self._fds.pop(0)
                    else:
                        assert not self._fds
                return msg, fd
            data, fds, _flags, _addr = socket.recv_fds(self.sock, self.dec.needed(), 4)
            self._fds.extend(fds)
            if not data:
                raise EOFError("helper closed the connection")
            self.dec.feed(data)

    def call(self, req):
        self.send(req)
        return self.receive()

    def ok(self, req):
        """call() and assert success; returns the reply (fds are closed)."""
        reply, fd = self.call(req)
        if fd is not None:
            os.close(fd)
        status = getattr(reply, "status", 0)
        assert status >= 0, f"{req} -> {reply} ({os.strerror(-status)})"
        return reply

    def err(self, req) -> int:
        """call() and return the positive errno it failed with."""
        reply, fd = self.call(req)
        if fd is not None:
            os.close(fd)
        assert isinstance(reply, (P.Status, P.FdReply)) and reply.status < 0, f"{req} -> {reply}"
        return -reply.status

    def is_closed(self, timeout: float = 10) -> bool:
        """True when the peer has closed the connection (EOF)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self.sock.close()


class Helper:
    """A running helper process.  ``mode`` is "socket" or "fd"."""

    def __init__(self, export: Path, mode: str = "socket", argv0: list[str] | None = None,
                 extra: list[str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        self.export = export
        self.mode = mode
        self.rundir = Path(tempfile.mkdtemp(prefix="nph-", dir="/tmp"))
        self.sock_path = self.rundir / "proxy.sock"
        self.stderr_path = self.rundir / "stderr"
        self._fd_client: Client | None = None
        argv = list(argv0 or OUR_HELPER) + ["-p", str(export), "-n"] + list(extra or [])
        stderr = open(self.stderr_path, "wb")
        if mode == "socket":
            argv += ["-s", str(self.sock_path), "-u", "0", "-g", "0"]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr,
                                         stderr=stderr, env=helper_env(), pass_fds=pass_fds)
            deadline = time.monotonic() + 20
            while not self.sock_path.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    stderr.close()
                    raise RuntimeError(f"helper did not start: {self.stderr()}")
                time.sleep(0.02)
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            argv += ["-f", str(theirs.fileno())]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr,
                                         stderr=stderr, env=helper_env(),
                                         pass_fds=[theirs.fileno(), *pass_fds])
            theirs.close()
            self._fd_client = Client(ours)
        stderr.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def connect(self) -> Client:
        if self.mode == "fd":
            assert self._fd_client is not None, "--fd mode has a single connection"
            c, self._fd_client = self._fd_client, None
            return c
        deadline = time.monotonic() + 10
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.sock_path))
                return Client(s)
            except ConnectionRefusedError:  # bound but not listening yet
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        if self._fd_client is not None:
            self._fd_client.close()
        shutil.rmtree(self.rundir, ignore_errors=True)


def make_tree(base: Path) -> tuple[Path, Path]:
    """``(export, outside)``: an export with a few entries, and a canary tree beside it."""
    export = base / "export"
    outside = base / "outside"
    base.mkdir(parents=True, exist_ok=True)
    export.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"top secret\n")
    (outside / "dir").mkdir()
    (outside / "dir" / "inner").write_bytes(b"inner\n")
    os.setxattr(outside / "secret", b"user.canary", b"1")
    (export / "file").write_bytes(b"hello, world\n")
    (export / "dir").mkdir()
    (export / "dir" / "sub").write_bytes(b"sub\n")
    os.symlink("file", export / "link")
    os.symlink("../outside", export / "escape")          # relative, points out of the export
    os.symlink(str(outside), export / "abs")             # absolute host path of the canary
    return export, outside


def snapshot(root: Path) -> dict:
    """Everything observable about a tree: names, types, modes, owners, sizes,
    times, contents, xattrs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            entry = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink,
                     st.st_mtime_ns, st.st_ctime_ns)
            if os.path.isfile(p) and not os.path.islink(p):
                entry += (p.read_bytes(),)
            try:
                entry += (tuple(sorted((a, os.getxattr(p, a, follow_symlinks=False))
                                       for a in os.listxattr(p, follow_symlinks=False))),)
            except OSError:
                pass
            out[str(p.relative_to(root))] = entry
    return out
