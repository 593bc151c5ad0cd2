"""Shared rig for the hardening suites (security, fuzz, faults, load).

* :func:`serve_inprocess` runs a :class:`StreamServer` + :class:`LocalBackend`
  on a Unix socket inside the test's event loop, so tests can look at the
  back end and the process's fds directly.
* :class:`ServerProcess` runs the real ``ninep`` command in a subprocess
  (load tests, rlimit and privilege-dropping fault tests).
* :class:`Canary` is a tree *outside* the export whose every byte, mode,
  owner, time, link count and xattr is snapshotted, so an escape shows up as a
  difference; :class:`TappedReader` watches every reply byte for canary
  content.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import faulthandler
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ninep.testing.process import serving_pid, stop_process
from ninep.backends.local import LocalBackend
from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import SessionConfig
from ninep.transport.base import BufferSink
from ninep.transport.stream import ListenAddress, StreamServer

#: Every canary file holds this; no reply may ever carry it.
CANARY_CONTENT = b"CANARY-CONTENT-5d1e0c9a"
#: A user xattr on every canary entry (value = CANARY_CONTENT).
CANARY_XATTR = "user.canary5d1e"
#: Name of files that attacks try to create outside; must never appear anywhere outside.
PROBE = "escape-probe-5d1e0c9a"
#: Known mtime of every canary entry (2001-09-09).
CANARY_MTIME_NS = 1_000_000_000 * 10**9
#: Files in the canary tree that share their names with files in the export,
#: so a re-resolved host path that lands outside would hit them.
CANARY_FILES = ("secret.txt", "inner.txt", "file.txt", "sub/deep.txt")
CANARY_DIRS = ("sub", "sentinel")
REPO = Path(__file__).resolve().parents[2]
HARDENING_DIRS = tuple(REPO / "tests" / d for d in ("security", "fuzz", "faults", "load"))
RPC_TIMEOUT = 20.0


_guarded: list[pytest.Config] = []  # the config while a guarded test runs


def _arm_hang_guard(config: pytest.Config) -> None:
    faulthandler.dump_traceback_later(env_int("NINEP_HANG_TIMEOUT", 300), exit=True,
                                      file=_uncaptured_stderr(config))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Hang guard for each test of the hardening suites, setup and teardown included
    (each of their conftest.py files imports this hook and the next; pytest calls
    them for every test, so they check the test's directory): abort the run with
    every thread's stack if a test hangs.  A worker thread blocked in the kernel (say,
    opening a FIFO) would otherwise block the back end's shutdown, and so the run,
    forever.  NINEP_HANG_TIMEOUT sets the limit in seconds."""
    mine = any(d in item.path.parents for d in HARDENING_DIRS)
    if _guarded or not mine:  # another conftest's copy guards it, or not our test
        return (yield)
    _arm_hang_guard(item.config)
    _guarded.append(item.config)
    try:
        return (yield)
    finally:
        _guarded.clear()
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact() -> None:
    """pytest cancels faulthandler timers when a test fails; keep guarding its teardown
    (which is where a stuck worker thread blocks)."""
    if _guarded:
        _arm_hang_guard(_guarded[0])


def _uncaptured_stderr(config: pytest.Config) -> Any:
    """The stderr fd pytest keeps for its own faulthandler (output capture hides fd 2)."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
        return config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):
        return sys.__stderr__


def fd_count(pid: int | str = "self") -> int:
    """Open fds of a process (``self``: this one)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size (VmRSS) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll *check* until true or *timeout* (a server cleans up after a disconnect
    in its own time); returns the last result for the caller to assert."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (CI may shrink a long test)."""
    value = os.environ.get(name)
    return int(value) if value else default


# --- the canary ------------------------------------------------------------------------


@dataclass
class Canary:
    """A host tree outside the export that no guest action may touch."""

    root: Path
    base: Path  # the directory that holds both the export and the canary
    inodes: frozenset[int] = frozenset()
    _before: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def plant(cls, base: Path) -> Canary:
        root = base / "outside"
        root.mkdir()
        for d in CANARY_DIRS:
            (root / d).mkdir()
        for name in CANARY_FILES:
            path = root / name
            path.write_bytes(CANARY_CONTENT + b" " + name.encode() + b"\n")
            path.chmod(0o644)
        entries = [root / n for n in (*CANARY_DIRS, *CANARY_FILES)] + [root]
        for path in entries:
            with contextlib.suppress(OSError):  # tmpfs before 6.6 has no user xattrs
                os.setxattr(path, CANARY_XATTR, CANARY_CONTENT)
        for path in sorted(entries, key=lambda q: -len(q.parts)):
            os.utime(path, ns=(CANARY_MTIME_NS, CANARY_MTIME_NS))
        canary = cls(root, base)
        canary.inodes = frozenset(os.lstat(q).st_ino for q in [*entries, base])
        return canary

    def snapshot(self) -> dict[str, Any]:
        """Everything observable about the canary tree, plus the names in *base*."""
        snap: dict[str, Any] = {".base-names": sorted(os.listdir(self.base))}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in ["", *dirnames, *filenames]:
                path = os.path.join(dirpath, name) if name else dirpath
                st = os.lstat(path)
                entry: dict[str, Any] = {
                    "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
                    "nlink": st.st_nlink, "ino": st.st_ino, "mtime": st.st_mtime_ns,
                    "xattrs": _xattrs(path),
                }
                if stat.S_ISREG(st.st_mode):
                    entry["sha"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                elif stat.S_ISLNK(st.st_mode):
                    entry["target"] = os.readlink(path)
                elif stat.S_ISDIR(st.st_mode):
                    entry["names"] = sorted(os.listdir(path))
                snap[os.path.relpath(path, self.root)] = entry
        return snap

    def arm(self) -> None:
        self._before = self.snapshot()

    def assert_intact(self) -> None:
        after = self.snapshot()
        changed = {k: (self._before.get(k), after.get(k)) for k in set(self._before) | set(after)
                   if self._before.get(k) != after.get(k)}
        assert not changed, f"the canary outside the export changed: {changed}"
        assert_no_probe(self.base, self.root.parent / "export")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def assert_no_probe(base: Path, export: Path) -> None:
    """No file named like an attack's probe exists outside the export."""
    for top in (Path("/"), Path(tempfile.gettempdir()), Path.cwd()):
        for suffix in ("", "2", ".dir"):
            assert not os.path.lexists(top / (PROBE + suffix)), f"{top / (PROBE + suffix)} created"
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == export or export in Path(dirpath).parents:
            dirnames[:] = []
            continue
        hits = [n for n in dirnames + filenames if PROBE in n]
        assert not hits, f"probe {hits} created outside the export in {dirpath}"


# --- did anything open(2) a file? --------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_IN_OPEN = 0x20
_IN_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC


class OpenWatch:
    """inotify IN_OPEN on some paths: tells whether anything opened them for I/O.

    Pinning with O_PATH, stat and xattr calls do not count; every real open of
    a device node or FIFO does, whatever its result, so this proves a server
    "refused without opening" rather than "opened, then refused"."""

    def __init__(self, *paths: str | Path) -> None:
        self.fd = _libc.inotify_init1(_IN_NONBLOCK_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for path in paths:
            if _libc.inotify_add_watch(self.fd, os.fsencode(str(path)), _IN_OPEN) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def opened(self) -> bool:
        """Whether an open happened since the last call."""
        seen = False
        while True:
            try:
                seen |= bool(os.read(self.fd, 4096))
            except BlockingIOError:
                return seen

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> OpenWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- a client whose every received byte is checked ---------------------------------------


class TappedReader:
    """Wraps a StreamReader: records whether any reply carried canary content."""

    def __init__(self, reader: asyncio.StreamReader, marker: bytes = CANARY_CONTENT) -> None:
        self._reader = reader
        self.marker = marker
        self.leaks: list[bytes] = []
        self.received = 0

    async def readexactly(self, n: int) -> bytes:
        data = await self._reader.readexactly(n)
        self.received += len(data)
        if self.marker in data:
            self.leaks.append(data)
        return data


async def connect(path: str, msize: int = 65536, tap: bool = True,
                  version: str = "9P2000.L") -> Client:
    """A test client on *path*; with *tap*, ``client.reader.leaks`` lists canary sightings."""
    reader, writer = await asyncio.open_unix_connection(path, limit=msize + 4096)
    client = Client(TappedReader(reader) if tap else reader, writer)  # type: ignore[arg-type]
    reply = await asyncio.wait_for(client.version(msize, version), RPC_TIMEOUT)
    assert reply.version == version, f"server answered {reply.version!r} to {version!r}"
    return client


async def rpc(client: Client, msg: Any, timeout: float = RPC_TIMEOUT) -> Any:
    """``client.rpc`` that fails the test instead of hanging."""
    return await asyncio.wait_for(client.rpc(msg), timeout)


async def expect_error(client: Client, msg: Any, *allowed: int) -> int:
    """Send *msg*; it must fail with a clean errno (one of *allowed* if given, never EIO)."""
    try:
        reply = await rpc(client, msg)
    except OSError as exc:
        assert exc.errno is not None and exc.errno != errno.EIO, f"{msg}: internal error {exc}"
        if allowed:
            assert exc.errno in allowed, f"{msg}: {errno.errorcode[exc.errno]}, expected " \
                f"{[errno.errorcode[e] for e in allowed]}"
        return exc.errno
    raise AssertionError(f"{type(msg).__name__} unexpectedly succeeded: {reply}")


# --- an in-process server ----------------------------------------------------------------


@dataclass
class InProcessServer:
    socket_path: str
    backend: LocalBackend
    server: StreamServer

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every connection's session has closed (its fids are released then)."""
        deadline = time.monotonic() + timeout
        while self.server._connections:
            assert time.monotonic() < deadline, "server connections did not finish"
            await asyncio.sleep(0.01)

    def live_nodes(self) -> int:
        """Back-end nodes not yet clunked (each is a fid the server still holds)."""
        return len(self.backend._nodes)


@contextlib.asynccontextmanager
async def serve_inprocess(export: Path | str, *, config: SessionConfig | None = None,
                          use_openat2: bool | None = None, backend: LocalBackend | None = None,
                          threads: int = 4) -> AsyncIterator[InProcessServer]:
    """A StreamServer on a fresh Unix socket, serving *export*, in this event loop."""
    config = config or SessionConfig()
    backend = backend or LocalBackend(str(export), use_openat2=use_openat2, threads=threads,
                                      load=config.load)
    await backend.start()
    server = StreamServer(lambda: backend, config)
    sockdir = tempfile.mkdtemp(prefix="ninep-sock-")
    path = os.path.join(sockdir, "9p.sock")
    await server.start(ListenAddress("unix", path=path))
    rig = InProcessServer(path, backend, server)
    try:
        yield rig
    finally:
        # Let sessions end on their own first: cancelling a connection task
        # mid-close makes asyncio log noise that hides real errors.
        with contextlib.suppress(AssertionError):
            await rig.wait_idle(5.0)
        await server.close()
        await backend.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(sockdir)


@contextlib.contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect what the running loop's exception handler would have logged."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:
        yield seen
    finally:
        loop.set_exception_handler(old)


class GatedBackend(LocalBackend):
    """A local back end whose reads wait for :attr:`gate`, to hold requests in flight.

    :attr:`inside` counts reads waiting now, :attr:`peak` the most at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.inside = 0
        self.peak = 0

    async def read_into(self, node: Any, offset: int, views: Any) -> int:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await self.gate.wait()
            return await super().read_into(node, offset, views)
        finally:
            self.inside -= 1


class RecordingSink(BufferSink):
    """Keeps every reply (copied) and whether the request was flushed."""

    def __init__(self, capacity: int) -> None:
        self.frames: list[bytes] = []
        self.dropped = False
        super().__init__(lambda data: self.frames.append(bytes(data)), capacity)

    def drop(self) -> None:
        self.dropped = True


# --- a real server process ----------------------------------------------------------------


class ServerProcess:
    """``python -m ninep`` serving *export* on a Unix socket, in a subprocess."""

    def __init__(self, export: Path | str, *args: str, socket_path: str | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        """*args* go to ``ninep``; without *socket_path* one is made in a private dir."""
        self._sockdir = None if socket_path else tempfile.mkdtemp(prefix="ninep-srv-")
        self.socket_path = socket_path or os.path.join(self._sockdir, "9p.sock")
        cmd = [sys.executable, "-m", "ninep", "--export", str(export),
               "--listen", f"unix:{self.socket_path}", "--log-level", "warning", *args]
        self.stderr = tempfile.TemporaryFile()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, preexec_fn=preexec, env=env, cwd="/")

    @property
    def pid(self) -> int:
        """The serving process (not a --pid-namespace supervisor)."""
        return serving_pid(self.proc.pid)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ninep exited with {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket_path)
                # Answered only once the process is confined (and, with
                # --pid-namespace, once the serving process exists).
                s.sendall(p.encode(p.Tversion(8192, "9P2000.L"), p.NOTAG))
                s.settimeout(max(0.1, deadline - time.monotonic()))
                if s.recv(7):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"ninep did not start listening: {self.log()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """What the server wrote to stderr so far (all of it once stopped)."""
        if self.stderr.closed:
            return self._final_log
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> int:
        stop_process(self.proc)
        if not self.stderr.closed:
            self._final_log = self.log()
            self.stderr.close()
        if self._sockdir:
            shutil.rmtree(self._sockdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        self.wait_ready()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
