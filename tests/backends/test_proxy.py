"""What only the proxy back end has: the helper connection and its pool.

The shared suite (``BACKENDS["proxy"]`` and ``["proxy-qemu-helper"]`` in
conftest) covers the file-system semantics.  These tests cover the
connections: a helper that dies (in-flight requests get EIO, the server stays
up, a restarted helper is used), one slow request not stalling the others,
QEMU's single-connection helper, ``--proxy-fd``, a helper that talks
nonsense, the CLI options; and, with a real guest, the kernel's smoke workload
through ninep's proxy back end, to QEMU's virtfs-proxy-helper and to the
ninep-proxy-helper ninep starts itself.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ninep.backends.base import Credentials
from ninep.backends.proxy import (FdConnector, HelperPool, ProxyBackend, SocketConnector,
                                  SpawnedHelper)
from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.protocol import proxy as P

from .conftest import open_fd_count
from .proxy_support import QEMU_HELPER, require

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # for tests.e2e
    sys.path.insert(0, str(REPO))
from tests.e2e.servers import stop  # noqa: E402

OUR_HELPER = [sys.executable, "-m", "ninep.helper"]


@pytest.fixture
def as_root() -> None:
    """Helpers chroot and keep capabilities: they need root."""
    require(os.geteuid() == 0, "a proxy helper needs root (chroot, capabilities)")


def need_qemu_helper() -> None:
    require(os.access(QEMU_HELPER, os.X_OK),
            f"{QEMU_HELPER} missing (Debian package qemu-system-common)")


def start_listening_helper(argv: list[str], export: Path, sock: Path) -> subprocess.Popen[bytes]:
    """A helper someone else runs (``-s``); returns once it accepts connections."""
    proc = subprocess.Popen([*argv, "-n", "-p", str(export), "-s", str(sock), "-u", "0",
                             "-g", "0"], cwd=REPO, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "helper did not start"
        time.sleep(0.01)
    return proc


# --- a scripted helper, for what a real one will not do on cue ---------------------------------

class FakeHelper:
    """Speaks the proxy protocol on a Unix socket, from a thread.

    Every T_LSTAT gets a directory's stat, except: ``/slow`` is answered
    only once :attr:`release` is set, ``/garbage`` gets bytes that are no
    reply, and connections past :attr:`answered_connections` are accepted
    but never answered (QEMU's helper does that).  :meth:`kill` hangs up on
    everyone, as a dying helper does.
    """

    def __init__(self, path: Path, answered_connections: int | None = None) -> None:
        self.path = path
        self.answered_connections = answered_connections
        self.release = threading.Event()
        self.requests: list[P.Request] = []
        self.connections: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._dir = P.ProxyStat.from_stat(os.stat("/"))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            index = len(self.connections)
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        decoder = P.RequestDecoder()
        try:
            while data := conn.recv(65536):
                decoder.feed(data)
                for req in decoder:
                    self.requests.append(req)
                    if self.answered_connections is not None and index > self.answered_connections:
                        continue
                    if req.path == b"/slow":
                        self.release.wait(30)
                    if req.path == b"/garbage":
                        conn.sendall(b"\x07\x00\x00\x00\x00\x00\x00\x00")
                        continue
                    conn.sendall(P.encode_reply(self._dir))
        except OSError:
            pass

    def kill(self) -> None:
        self._listener.close()
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def sock_path(sockdir: Path) -> Path:
    return sockdir / "helper.sock"


@pytest.fixture
def fakes(sock_path: Path) -> Iterator[list[FakeHelper]]:
    started: list[FakeHelper] = []
    yield started
    for fake in started:
        fake.release.set()
        fake.kill()


@pytest.fixture
async def backends(fakes: list[FakeHelper]) -> AsyncIterator[list[ProxyBackend]]:
    """Back ends a test builds; closed (and checked for leaked fds) at teardown."""
    built: list[ProxyBackend] = []
    fds = open_fd_count()
    yield built
    for backend in built:
        await backend.close()
    for fake in fakes:
        fake.release.set()
        fake.kill()
    assert open_fd_count() == fds, "the proxy back end leaked file descriptors"


async def fake_backend(fakes: list[FakeHelper], backends: list[ProxyBackend], path: Path,
                       pool_size: int = 4, **fake_options: Any) -> ProxyBackend:
    fakes.append(FakeHelper(path, **fake_options))
    backend = ProxyBackend(SocketConnector(str(path)), pool_size=pool_size, threads=2)
    backends.append(backend)
    await backend.start()
    return backend


# --- a helper that dies -----------------------------------------------------------------------

async def test_pending_requests_get_eio_and_a_restarted_helper_is_used(
        fakes: list[FakeHelper], backends: list[ProxyBackend], sock_path: Path) -> None:
    backend = await fake_backend(fakes, backends, sock_path)
    root, _ = await backend.attach("root", 0, "")
    slow = [asyncio.ensure_future(backend.walk(root, ["slow"])) for _ in range(3)]
    while len([r for r in fakes[0].requests if r.path == b"/slow"]) < 3:
        await asyncio.sleep(0.01)
    fakes[0].kill()
    for request in slow:
        with pytest.raises(OSError) as exc:
            await request
        assert exc.value.errno == errno.EIO
    with pytest.raises(OSError) as exc:  # nobody listens: EIO again, nothing hangs
        await backend.getattr(root)
    assert exc.value.errno == errno.EIO
    fakes.append(FakeHelper(sock_path))  # the helper comes back on the same socket
    qids, node = await backend.walk(root, ["a", "b"])
    assert node is not None and len(qids) == 2
    await backend.clunk(node)
    await backend.clunk(root)


async def test_spawned_helper_is_started_again(tmp_path: Path,
                                               backends: list[ProxyBackend], as_root: None) -> None:
    (tmp_path / "f").write_bytes(b"data")
    backend = ProxyBackend.spawn(str(tmp_path), threads=2)
    backends.append(backend)
    await backend.start()
    connector = backend.pool.connector
    assert isinstance(connector, SpawnedHelper)
    root, _ = await backend.attach("root", 0, "")
    first = connector._listener
    assert first is not None
    first.send_signal(signal.SIGKILL)
    first.wait()
    qids, node = await backend.walk(root, ["f"])  # reconnects to a new helper
    assert node is not None and connector._listener is not first
    await backend.open(node, os.O_RDONLY)
    assert await backend.read_into(node, 0, [memoryview(bytearray(10))]) == 4
    await backend.clunk(node)
    await backend.clunk(root)


async def test_server_stays_up_while_the_helper_is_down(
        fakes: list[FakeHelper], backends: list[ProxyBackend], sock_path: Path,
        serve: Any) -> None:
    """Through the 9P session: Rlerror EIO while the helper is gone, then service again."""
    backend = await fake_backend(fakes, backends, sock_path)
    served = await serve(backend=backend)
    backends.remove(backend)  # serve closes it
    client = await served.connect()
    root = await client.attach()
    fakes[0].kill()
    with pytest.raises(OSError) as exc:
        await client.walk(root, ["x"])
    assert exc.value.errno == errno.EIO
    fakes.append(FakeHelper(sock_path))
    await client.clunk(await client.walk(root, ["x"]))


# --- the pool ---------------------------------------------------------------------------------

async def test_a_slow_request_does_not_stall_the_others(
        fakes: list[FakeHelper], backends: list[ProxyBackend], sock_path: Path) -> None:
    backend = await fake_backend(fakes, backends, sock_path, pool_size=2)
    root, _ = await backend.attach("root", 0, "")
    slow = asyncio.ensure_future(backend.walk(root, ["slow"]))
    for _ in range(20):  # all on the other connection, while the slow one waits
        qids, node = await asyncio.wait_for(backend.walk(root, ["fast"]), 10)
        await backend.clunk(node)
    assert not slow.done()
    fakes[0].release.set()
    _, node = await slow
    await backend.clunk(node)
    await backend.clunk(root)


async def test_cancelled_request_drops_its_connection(
        fakes: list[FakeHelper], backends: list[ProxyBackend], sock_path: Path) -> None:
    """Tflush of a request in flight: its late reply must never answer anyone else."""
    backend = await fake_backend(fakes, backends, sock_path, pool_size=1)
    root, _ = await backend.attach("root", 0, "")
    slow = asyncio.ensure_future(backend.walk(root, ["slow"]))
    while not any(r.path == b"/slow" for r in fakes[0].requests):
        await asyncio.sleep(0.01)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    fakes[0].release.set()
    qids, node = await backend.walk(root, ["after"])
    assert len(qids) == 1 and len(fakes[0].connections) == 2  # a fresh connection
    await backend.clunk(node)
    await backend.clunk(root)


async def test_garbage_from_the_helper_is_eio(
        fakes: list[FakeHelper], backends: list[ProxyBackend], sock_path: Path) -> None:
    backend = await fake_backend(fakes, backends, sock_path, pool_size=1)
    root, _ = await backend.attach("root", 0, "")
    with pytest.raises(OSError) as exc:
        await backend.walk(root, ["garbage"])
    assert exc.value.errno == errno.EIO
    _, node = await backend.walk(root, ["fine"])
    await backend.clunk(node)
    await backend.clunk(root)


async def test_a_helper_serving_one_connection_keeps_the_pool_at_one(
        fakes: list[FakeHelper], backends: list[ProxyBackend], sock_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HelperPool, "probe_timeout", 0.5)
    backend = await fake_backend(fakes, backends, sock_path, pool_size=4, answered_connections=1)
    root, _ = await backend.attach("root", 0, "")
    walks = await asyncio.wait_for(
        asyncio.gather(*(backend.walk(root, [f"n{i}"]) for i in range(8))), 20)
    for _, node in walks:
        await backend.clunk(node)
    await asyncio.wait_for(asyncio.gather(*(backend.getattr(root) for _ in range(8))), 10)
    # The first connection, and one probe that went unanswered: no further attempts.
    assert len(fakes[0].connections) == 2
    await backend.clunk(root)


async def test_qemu_helper_on_a_socket(tmp_path: Path, sock_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, as_root: None) -> None:
    """``--proxy-socket`` to QEMU's virtfs-proxy-helper: one connection is all
    it serves, so concurrent requests share it."""
    need_qemu_helper()
    monkeypatch.setattr(HelperPool, "probe_timeout", 0.5)
    (tmp_path / "d").mkdir()
    helper = start_listening_helper([QEMU_HELPER], tmp_path, sock_path)
    try:
        backend = ProxyBackend(SocketConnector(str(sock_path)), threads=4)
        await backend.start()
        root, _ = await backend.attach("root", 0, "")
        qids = await asyncio.wait_for(asyncio.gather(
            *(backend.mkdir(root, f"m{i}", 0o755, Credentials(0, 0)) for i in range(6))), 30)
        assert len({q.path for q in qids}) == 6
        assert sorted(os.listdir(tmp_path)) == ["d", *(f"m{i}" for i in range(6))]
        assert len(backend.pool._live) == 1
        await backend.clunk(root)
        await backend.close()
        assert helper.wait(10) == 0  # it exits once its one connection is closed
    finally:
        stop(helper)


async def test_our_helper_restarted_on_the_same_socket(tmp_path: Path, sock_path: Path,
                                                       backends: list[ProxyBackend],
                                                       as_root: None) -> None:
    (tmp_path / "f").touch()
    helper = start_listening_helper(OUR_HELPER, tmp_path, sock_path)
    try:
        backend = ProxyBackend(SocketConnector(str(sock_path)), threads=2)
        backends.append(backend)
        await backend.start()
        root, _ = await backend.attach("root", 0, "")
        stop(helper)
        sock_path.unlink()
        with pytest.raises(OSError) as exc:
            await backend.walk(root, ["f"])
        assert exc.value.errno == errno.EIO
        helper = start_listening_helper(OUR_HELPER, tmp_path, sock_path)
        qids, node = await backend.walk(root, ["f"])
        assert qids[0].path == os.stat(tmp_path / "f").st_ino
        await backend.clunk(node)
        await backend.clunk(root)
    finally:
        stop(helper)


async def test_proxy_fd(tmp_path: Path, backends: list[ProxyBackend], as_root: None) -> None:
    """``--proxy-fd``: one inherited connection; once the helper is gone, EIO for good."""
    (tmp_path / "f").write_bytes(b"via fd")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    helper = subprocess.Popen([*OUR_HELPER, "-n", "-p", str(tmp_path), "-f",
                               str(theirs.fileno())], cwd=REPO, pass_fds=[theirs.fileno()],
                              stdin=subprocess.DEVNULL)
    theirs.close()
    try:
        backend = ProxyBackend(FdConnector(os.dup(ours.fileno())), threads=2)
        ours.close()
        backends.append(backend)
        await backend.start()
        assert backend.pool.size == 1
        root, _ = await backend.attach("root", 0, "")
        _, node = await backend.walk(root, ["f"])
        await backend.open(node, os.O_RDONLY)
        buf = bytearray(16)
        assert bytes(buf[:await backend.read_into(node, 0, [memoryview(buf)])]) == b"via fd"
        await backend.clunk(node)
        stop(helper)
        for _ in range(2):
            with pytest.raises(OSError) as exc:
                await backend.getattr(root)
            assert exc.value.errno == errno.EIO
        await backend.clunk(root)
    finally:
        stop(helper)


# --- options --------------------------------------------------------------------------------

def args(export: Path, **overrides: Any) -> argparse.Namespace:
    values = {"export": str(export), "proxy_socket": None, "proxy_fd": None, "threads": 2,
              "multidevs": "warn", "security_model": None}
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.mark.parametrize("overrides,message", [
    ({"proxy_socket": "/nonexistent/helper.sock"}, "cannot reach the proxy helper socket"),
    ({"proxy_fd": 0}, "not a socket"),
    ({"proxy_fd": 987}, "--proxy-fd 987"),
    ({"proxy_socket": "/x", "proxy_fd": 3}, "cannot be used together"),
    ({"security_model": "mapped-xattr"}, "security_model"),
    ({"multidevs": "sometimes"}, "--multidevs"),
])
async def test_bad_options_are_one_clear_error(tmp_path: Path, overrides: dict[str, Any],
                                               message: str) -> None:
    """Refused when built (option errors) or when started (an unreachable helper)."""
    fds, rundirs = open_fd_count(), helper_rundirs()
    with pytest.raises((OSError, ValueError)) as exc:
        await ProxyBackend.from_args(args(tmp_path, **overrides)).start()
    assert message in str(exc.value)
    assert open_fd_count() == fds and helper_rundirs() == rundirs


def helper_rundirs() -> set[str]:
    """The private directories of helpers that back ends started (for leaks)."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "ninep-proxy-*")))


async def test_a_helper_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    fds, rundirs = open_fd_count(), helper_rundirs()
    backend = ProxyBackend.spawn(str(tmp_path), [sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(OSError) as exc:
        await backend.start()
    assert "exited with status 3" in str(exc.value)
    assert open_fd_count() == fds and helper_rundirs() == rundirs


# --- lifecycle: built, started, closed ---------------------------------------------------------

async def test_building_starts_nothing_and_start_starts_once(
        tmp_path: Path, as_root: None) -> None:
    """The constructor runs no helper and opens nothing (no private event loop):
    start() does, on the caller's loop; a second start(), even a concurrent
    one, adds nothing; close() stops the helper again."""
    fds, rundirs = open_fd_count(), helper_rundirs()
    backend = ProxyBackend.spawn(str(tmp_path), threads=2, pool_size=3)
    connector = backend.pool.connector
    assert isinstance(connector, SpawnedHelper)
    assert connector._procs == [] and helper_rundirs() == rundirs
    assert open_fd_count() == fds
    try:
        await asyncio.gather(backend.start(), backend.start())
        await backend.start()
        assert len(connector._procs) == 1 and len(backend.pool._live) == 3
        root, _ = await backend.attach("root", 0, "")
        await backend.clunk(root)
    finally:
        await backend.close()
    assert connector._procs == [] and helper_rundirs() == rundirs
    assert open_fd_count() == fds


async def test_attach_before_start_is_refused(tmp_path: Path) -> None:
    backend = ProxyBackend(SocketConnector(str(tmp_path / "nobody.sock")))
    try:
        with pytest.raises(RuntimeError, match="start"):
            await backend.attach("root", 0, "")
    finally:
        await backend.close()


async def test_a_failed_start_leaves_the_back_end_closed(
        fakes: list[FakeHelper], sock_path: Path) -> None:
    """A helper that was not there yet: start() fails once and for all, and the
    fds it opened are closed (the server exits with the one-line error)."""
    fds = open_fd_count()
    backend = ProxyBackend(SocketConnector(str(sock_path)), threads=2)
    with pytest.raises(OSError, match="cannot reach"):
        await backend.start()
    fakes.append(FakeHelper(sock_path))
    with pytest.raises(RuntimeError, match="closed"):
        await backend.start()
    await backend.close()
    assert fakes[0].connections == []
    fakes[0].kill()
    assert open_fd_count() == fds


def test_cli_serves_through_its_own_helper(tmp_path: Path, sockdir: Path, as_root: None) -> None:
    """``ninep --backend proxy`` with neither option starts ninep-proxy-helper itself."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "hello").write_bytes(b"from the helper\n")
    sock = sockdir / "9p.sock"
    server = subprocess.Popen([sys.executable, "-m", "ninep", "--export", str(export),
                               "--listen", f"unix:{sock}", "--backend", "proxy"], cwd=REPO,
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    helpers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.02)

        async def talk() -> bytes:
            async with await Client.connect_unix(str(sock)) as client:
                fid = await client.walk_open(await client.attach(), ["hello"])
                data = await client.read_all(fid)
                await client.rpc(p.Tlcreate(await client.attach(), "new", p.DOTL_WRONLY,
                                            0o600, 0))
                return data

        assert asyncio.run(talk()) == b"from the helper\n"
        assert (export / "new").exists()
        helpers = children(server.pid)
        assert helpers, "no helper process under ninep"
    finally:
        server.terminate()
        server.wait(20)
        server.stderr.close()
    for pid in helpers:  # ninep stops the helper it started
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text().lower()


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


# --- a real kernel through ninep's proxy back end and QEMU's helper ----------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("helper_kind", ["qemu-helper", "own-helper"])
def test_smoke_through_ninep_proxy_backend(tmp_path: Path, sockdir: Path,
                                           helper_kind: str) -> None:
    """The guest mounts ninep (trans=fd), whose proxy back end talks either to
    QEMU's virtfs-proxy-helper (``--proxy-socket``; it serves one connection,
    so ninep's pool is one connection: ``--threads 1``), or to the
    ninep-proxy-helper that ninep starts itself (neither option given)."""
    from tests.e2e.guest import FdSocketShare, GuestError, GuestImage, SMOKE_GROUPS, run_smoke
    from tests.e2e.guest import missing_host_tools

    require(os.geteuid() == 0, "a proxy helper needs root")
    if helper_kind == "qemu-helper":
        need_qemu_helper()
    missing = missing_host_tools()
    require(not missing, f"missing host tools: {missing}")
    try:
        image = GuestImage.ensure()
    except GuestError as exc:
        require(False, f"cannot build the guest image: {exc}")
        raise
    export = tmp_path / "export"
    export.mkdir()
    helper_sock, ninep_sock = sockdir / "helper.sock", sockdir / "9p.sock"
    helper = None
    options = []
    if helper_kind == "qemu-helper":
        helper = start_listening_helper([QEMU_HELPER], export, helper_sock)
        options = ["--proxy-socket", str(helper_sock), "--threads", "1"]
    with open(tmp_path / "ninep.log", "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "ninep", "--export", str(export), "--listen",
             f"unix:{ninep_sock}", "--backend", "proxy", *options],
            cwd=REPO, stdin=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.monotonic() + 30
        while not ninep_sock.exists():
            assert server.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "ninep.log").read_text()
            time.sleep(0.05)
        res = run_smoke(FdSocketShare(str(ninep_sock)), nfiles=500, image=image, timeout=1200)
    finally:
        stop(server)
        if helper is not None:
            stop(helper)
    log = (tmp_path / "ninep.log").read_text(errors="replace")
    want = {g: "PASS" for g in SMOKE_GROUPS}
    assert res.smoke_results == want, res.describe() + "\n--- ninep ---\n" + log
    assert res.exit_status == 0, res.describe()
    assert list(export.iterdir()) == []
