"""The proxy back end: a privileged helper does the file system work.

ninep is the unprivileged client of a helper that speaks QEMU's virtfs proxy
protocol (:mod:`ninep.protocol.proxy`): ours (``ninep-proxy-helper``) or
QEMU's ``virtfs-proxy-helper``.  The helper chroots into the export, so a
node is a path *inside that chroot* (``/a/b``), kept as checked components;
``..`` is path arithmetic clamped at the root and is never sent.  Walks are
one ``T_LSTAT`` per component (pipelined on one connection), and they never
go through a symlink: a component that is not a directory ends the walk.

What goes where:

* Namespace and metadata requests (lstat, create, mkdir, symlink, mknod,
  link, rename, remove, chmod, chown, truncate, utimes, readlink, statfs,
  xattrs) go to the helper by path.  Creating requests carry the caller's
  uid/gid and the helper runs them under that fsuid/fsgid.
* Files the guest opens are opened by the helper, which passes the fd back
  (``SCM_RIGHTS``).  Reads, writes, readdir (``O_DIRECTORY`` opens), fsync,
  fstat and locks then use that fd here, through the shared
  :mod:`ninep.backends.fdops` code.
* An open file whose name is gone (unlinked, replaced, moved on the host) has
  no path the helper could use: its setattr and xattr requests are done on
  its fd here, with the server's own credentials.  That works for a root
  server; an unprivileged one gets EPERM/EACCES where it lacks the right
  (the protocol has no fd-based requests: no fchown, no link of an unlinked
  file).

Opens always add ``O_NOFOLLOW | O_NONBLOCK`` and check the passed fd: only
regular files and directories are served (a FIFO or device gives ENXIO, a
symlink ELOOP), and a FIFO renamed into place can never block a helper
thread.  ``O_NONBLOCK`` is cleared again unless the guest asked for it.

Connections: the protocol has no tags, so requests on one connection are
strictly in order.  A pool of connections (``pool_size``) lets one slow
request not stall the others; each request takes a free connection.  If the
helper dies, every request in flight gets EIO and the server stays up; the
next request reconnects (and a helper this back end started is started
again).  QEMU's helper serves a single connection: with ``-s`` it accepts
one, closes its listening socket and exits when that connection ends.  So
when a further connection is refused while others live, or (for a helper we
did not start) its probing ``T_LSTAT`` stays unanswered for
:attr:`HelperPool.probe_timeout` seconds, the pool goes on with the
connections it has: one, for QEMU's helper.  Helpers this back end starts
can instead be started one per connection with ``-f``
(``per_connection=True``), which gives QEMU's helper a full pool.

Deliberate differences from the local passthrough back end:

* mknod of a device by a non-root caller fails (EPERM): the helper switches
  to the caller's fsuid, which drops CAP_MKNOD, as QEMU's helper does.
* The helper resolves intermediate path components itself (inside its
  chroot): a directory that the host replaces by a symlink after a walk is
  followed, but never out of the export.
* The protocol names files by whole paths.  Paths of PATH_MAX (4096 bytes)
  and more, which the guest's kernel accepts, are sent as they are (up to
  32 KiB, so that two fit in one request); ninep-proxy-helper resolves them
  piece by piece.  QEMU's virtfs-proxy-helper hands each path to one
  syscall, so through it they still give ENAMETOOLONG, as with QEMU's own
  proxy driver.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import functools
import logging
import os
import shutil
import signal
import socket
import stat as st_
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from .. import syscalls
from ..protocol import proxy as P
from ..protocol.ninep import Qid
from . import fdops
from .base import Backend, Credentials, DirEntry, SetAttr, Stat, StatFs, setid_bits_to_clear
from .qid import QidMapper

log = logging.getLogger("ninep.proxy")

T = TypeVar("T")

#: One recvmsg takes a whole reply (the largest is a header plus PROXY_MAX_IO_SZ).
_RECV_SIZE = P.PROXY_HDR_SZ + P.PROXY_MAX_IO_SZ
#: Room for a few fds; the helper sends at most one per reply.
_ANCILLARY_SIZE = socket.CMSG_SPACE(4 * array.array("i").itemsize)
#: A readlink buffer: PATH_MAX, so the helper returns up to 4095 bytes.
_READLINK_SIZE = 4096
#: The longest chroot path sent: two must fit in one request (T_RENAME, T_LINK).
#: Longer than PATH_MAX is fine: the helper resolves such a path piece by piece.
_PATH_LIMIT = (P.PROXY_MAX_IO_SZ - 2 * 2) // 2
_U32_KEEP = 0xFFFFFFFF  # (uid_t)-1: "leave unchanged" in T_CHOWN
_SET_ID_BITS = st_.S_ISUID | st_.S_ISGID
_OPEN_ADDED = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_DEFAULT_HELPER = [sys.executable, "-m", "ninep.helper"]
#: Connection attempts while a fresh helper's socket is bound but not listening yet.
_CONNECT_TRIES = 200
#: Errnos that mean the helper is gone rather than that one request failed.
_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNREFUSED, errno.ENOENT)


def _error(code: int, what: str = "") -> OSError:
    """``OSError(code)`` as the right subclass (FileNotFoundError …)."""
    return OSError(code, f"{os.strerror(code)}{': ' + what if what else ''}")


class HelperLost(OSError):
    """The connection to the helper broke (EOF, reset, garbage): EIO for the guest."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EIO, f"proxy helper connection lost: {why}")


def _status(reply: P.Reply) -> int:
    """The status of a Status/FdReply; raises the helper's errno when negative."""
    status = reply.status  # type: ignore[union-attr]
    if status < 0:
        raise _error(-status)
    return status


def _expect(reply: P.Reply, kind: type[T]) -> T:
    """*reply* as a *kind* payload; an error Status raises its errno."""
    if isinstance(reply, kind):
        return reply
    if isinstance(reply, P.Status):
        _status(reply)
    raise HelperLost(f"unexpected reply {type(reply).__name__}")


def stat_from_proxy(r: P.ProxyStat) -> Stat:
    return Stat(r.st_mode, r.st_uid, r.st_gid, r.st_nlink, r.st_rdev, r.st_size, r.st_blksize,
                r.st_blocks, r.st_atim_sec * 1_000_000_000 + r.st_atim_nsec,
                r.st_mtim_sec * 1_000_000_000 + r.st_mtim_nsec,
                r.st_ctim_sec * 1_000_000_000 + r.st_ctim_nsec, r.st_dev, r.st_ino)


def statfs_from_proxy(r: P.ProxyStatFS) -> StatFs:
    """As statvfs(3) composes f_fsid from the two halves."""
    fsid = (r.f_fsid0 & 0xFFFFFFFF) | ((r.f_fsid1 & 0xFFFFFFFF) << 32)
    return StatFs(fdops.V9FS_MAGIC, r.f_bsize, r.f_blocks, r.f_bfree, r.f_bavail, r.f_files,
                  r.f_ffree, fsid, r.f_namelen)


# --- one connection ---------------------------------------------------------------------------

Replies = list[tuple[P.Reply, "int | None"]]


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class HelperConnection:
    """One socket to the helper, used by one caller at a time.

    :meth:`call` sends a batch of requests at once (the helper answers in
    order) and returns their replies, each with the fd that came with it.
    Any transport or protocol failure closes the connection for good and
    raises :class:`HelperLost`; a cancelled call closes it too, since its
    replies would otherwise answer the next caller's requests.
    """

    def __init__(self, sock: socket.socket, generation: int = 0) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.generation = generation
        self.broken = False
        #: The helper hung up (EOF, reset): other connections are likely dead too.
        self.helper_gone = False
        self._decoder = P.ReplyDecoder()
        self._fds: list[int] = []

    def idle_and_alive(self) -> bool:
        """False if the helper closed this connection while it sat idle."""
        if self.broken:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            pass
        return False  # EOF, or bytes nobody asked for

    def close(self) -> None:
        self.broken = True
        self.sock.close()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    async def call(self, requests: Sequence[P.Request]) -> Replies:
        try:
            data = b"".join(P.encode_request(r) for r in requests)
        except P.ProxyProtocolError:
            raise _error(errno.EINVAL, "request does not fit the proxy protocol") from None
        if self.broken:
            raise HelperLost("connection closed")
        got: Replies = []
        try:
            for request in requests:
                self._decoder.expect(request)
            await self._send(data)
            await self._readable()  # the helper cannot have answered yet
            while len(got) < len(requests):
                msg = self._decoder.next_message()
                if msg is None:
                    await self._receive()
                    continue
                fd = None
                if isinstance(msg, P.FdReply) and msg.has_fd:
                    if not self._fds:
                        raise P.ProxyProtocolError("V9FS_FD_VALID came without an fd")
                    fd = self._fds.pop(0)
                got.append((msg, fd))
            if self._fds:
                raise P.ProxyProtocolError("an fd came with no reply that announced it")
            return got
        except BaseException as exc:
            for _, fd in got:
                if fd is not None:
                    os.close(fd)
            self.close()
            if isinstance(exc, (P.ProxyProtocolError, EOFError)):
                self.helper_gone = isinstance(exc, EOFError)
                raise HelperLost(str(exc) or "end of file") from None
            if isinstance(exc, OSError):
                self.helper_gone = exc.errno in _GONE
                raise HelperLost(exc.strerror or str(exc)) from None
            raise

    async def _send(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await asyncio.get_running_loop().sock_sendall(self.sock, memoryview(data)[sent:])

    async def _receive(self) -> None:
        """One recvmsg into the decoder; SCM_RIGHTS fds are kept in arrival order."""
        while True:
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(_RECV_SIZE, _ANCILLARY_SIZE,
                                                              socket.MSG_CMSG_CLOEXEC)
                break
            except BlockingIOError:
                await self._readable()
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise P.ProxyProtocolError("more fds than expected arrived")
        if not data:
            raise EOFError("the helper closed the connection")
        self._decoder.feed(data)

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = self.sock.fileno()
        loop.add_reader(fd, _wake, fut)
        try:
            await fut
        finally:
            loop.remove_reader(fd)


# --- reaching the helper -------------------------------------------------------------------------

class Connector:
    """How new connections to the helper are made."""

    #: Probe extra connections: the helper may serve only one (QEMU's).
    may_serve_one: bool = False
    #: Most connections this helper can serve (None: no limit).
    max_connections: int | None = None
    #: Open the whole pool at start (helpers we start serve any number).
    open_all_at_start: bool = False
    where: str = "proxy helper"

    async def connect(self) -> socket.socket:
        """A new connection, on the server's event loop.  A helper started here
        lives as long as the loop's thread: see :func:`_die_with_parent`."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever this connector started."""


async def _connect_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


class SocketConnector(Connector):
    """A helper someone else runs, listening on a Unix socket (``--proxy-socket``)."""

    may_serve_one = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.where = f"proxy helper socket {path}"

    async def connect(self) -> socket.socket:
        return await _connect_unix(self.path)


class FdConnector(Connector):
    """One inherited, connected socket (``--proxy-fd``): a single connection,
    which cannot be made again once the helper is gone."""

    max_connections = 1

    def __init__(self, fd: int) -> None:
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise OSError(f"--proxy-fd {fd}: {exc.strerror}") from None
        if not st_.S_ISSOCK(mode):
            raise OSError(f"--proxy-fd {fd}: not a socket")
        self._sock: socket.socket | None = socket.socket(fileno=fd)
        self.where = f"proxy helper on fd {fd}"

    async def connect(self) -> socket.socket:
        sock, self._sock = self._sock, None
        if sock is None:
            raise OSError(errno.ECONNRESET, "the --proxy-fd connection is gone")
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


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
                return await _connect_unix(self.socket_path)
            except ConnectionRefusedError:
                await asyncio.sleep(0.01)
        return await _connect_unix(self.socket_path)

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


# --- the pool -----------------------------------------------------------------------------------

class _SlotDropped(Exception):
    """The helper refused one more connection: the pool stays smaller."""


class HelperPool:
    """Up to *size* connections; a request takes a free one, or waits.

    A free slot holds an idle connection or ``None`` (connect on use).  When
    a connection finds the helper gone, every idle connection of that
    generation is dropped too, so a restarted helper is used at once.

    A helper may refuse more connections than it has (QEMU's accepts one,
    then closes its listening socket, or leaves later ones unanswered): a
    further connection that is refused, or whose probe stays unanswered,
    retires its slot, and the pool works with the connections it has until
    they are all gone (a new helper may serve more).
    """

    #: Seconds a probed extra connection may stay unanswered (see the module doc).
    probe_timeout = 3.0

    def __init__(self, connector: Connector, size: int) -> None:
        self.connector = connector
        self.size = min(size, connector.max_connections or size)
        self._slots: asyncio.Queue[HelperConnection | None] = asyncio.Queue()
        for _ in range(self.size):
            self._slots.put_nowait(None)
        self._live: set[HelperConnection] = set()
        self._generation = 0
        self._retired = 0  # slots set aside while the helper takes no more connections
        self._opening = asyncio.Lock()
        self._warned_unreachable = False

    async def start(self, timeout: float = 30.0) -> P.ProxyStat:
        """Make the first connection and prove that the helper serves with a
        T_LSTAT of its root, which is returned; one-line OSErrors say why not.
        A helper that serves any number gets all its connections now."""
        where = self.connector.where
        try:
            sock = await self.connector.connect()
        except OSError as exc:
            raise OSError(f"cannot reach the {where}: {exc.strerror or exc}") from None
        conn = HelperConnection(sock)
        try:
            reply, _ = (await asyncio.wait_for(conn.call([P.Lstat(b"/")]), timeout))[0]
            root = _expect(reply, P.ProxyStat)
        except (TimeoutError, OSError) as exc:
            conn.close()
            why = "no answer" if isinstance(exc, asyncio.TimeoutError) else exc.strerror or exc
            raise OSError(f"the {where} does not serve: {why}") from None
        if not st_.S_ISDIR(root.st_mode):
            conn.close()
            raise OSError(f"the {where} exports no directory")
        self._adopt(conn)
        if self.connector.open_all_at_start:  # a fixed set of fds from the start
            for _ in range(self.size - 1):
                self._adopt(HelperConnection(await self.connector.connect()))
        return root

    def _adopt(self, conn: HelperConnection) -> None:
        """Put a connection made outside :meth:`_take` into a free slot."""
        self._slots.get_nowait()
        conn.generation = self._generation
        self._live.add(conn)
        self._slots.put_nowait(conn)

    async def call(self, *requests: P.Request) -> Replies:
        conn = await self._take()
        try:
            return await conn.call(requests)
        finally:
            self._give_back(conn)

    async def _take(self) -> HelperConnection:
        while True:
            conn = await self._slots.get()
            if conn is not None:
                if conn.generation == self._generation and conn.idle_and_alive():
                    return conn
                self._forget(conn)
            try:
                async with self._opening:  # one at a time: a refusal decides for the rest
                    if self._retired and self._live:
                        self._retired += 1  # wait for a live connection instead
                        continue
                    return await self._open()
            except _SlotDropped:
                self._retired += 1
                continue
            except BaseException:
                self._slots.put_nowait(None)
                raise

    async def _open(self) -> HelperConnection:
        """A new connection; _SlotDropped when the helper serves no more than
        it has, HelperLost when it serves none at all."""
        try:
            sock = await self.connector.connect()
        except OSError as exc:
            if self._live:
                self._refused(exc.strerror or str(exc))
            if not self._warned_unreachable:
                self._warned_unreachable = True
                log.warning("%s is unreachable: %s", self.connector.where, exc.strerror or exc)
            raise HelperLost(f"{self.connector.where} is unreachable: "
                             f"{exc.strerror or exc}") from None
        self._warned_unreachable = False
        conn = HelperConnection(sock, self._generation)
        if self._live and self.connector.may_serve_one:
            try:
                await asyncio.wait_for(conn.call([P.Lstat(b"/")]), self.probe_timeout)
            except (TimeoutError, OSError):
                conn.close()
                self._refused("no answer")
        self._live.add(conn)
        return conn

    def _refused(self, why: str) -> NoReturn:
        log.warning("%s takes no further connection (%s); going on with %d (QEMU's "
                    "virtfs-proxy-helper serves one)", self.connector.where, why,
                    len(self._live))
        raise _SlotDropped()

    def _forget(self, conn: HelperConnection) -> None:
        if not conn.broken:
            conn.close()
        self._live.discard(conn)
        if not self._live and self._retired:  # all gone: the next helper may serve more
            for _ in range(self._retired):
                self._slots.put_nowait(None)
            self._retired = 0

    def _give_back(self, conn: HelperConnection) -> None:
        if conn.broken:
            if conn.helper_gone and conn.generation == self._generation:
                self._generation += 1  # its siblings are dead too: reconnect them on use
            self._forget(conn)
            self._slots.put_nowait(None)
        else:
            self._slots.put_nowait(conn)

    def close(self) -> None:
        for conn in list(self._live):
            self._forget(conn)
        self.connector.close()


# --- the back end -----------------------------------------------------------------------------

class ProxyNode:
    """One fid's file: its path components inside the export, the file type
    its last lookup saw, and once open, the fd the helper passed."""

    __slots__ = ("parts", "mode", "fd", "is_dir", "dir_lock", "__weakref__")

    def __init__(self, parts: tuple[str, ...], mode: int) -> None:
        self.parts = parts
        self.mode = mode
        self.is_dir = st_.S_ISDIR(mode)
        self.fd: int | None = None
        self.dir_lock: threading.Lock | None = None

    def __repr__(self) -> str:
        return f"ProxyNode({'/'.join(self.parts)!r}, fd={self.fd})"


def _path(parts: tuple[str, ...]) -> bytes:
    """The chroot path of *parts* (``/`` for the root)."""
    path = b"/" + b"/".join(os.fsencode(p) for p in parts)
    if len(path) > _PATH_LIMIT:
        raise _error(errno.ENAMETOOLONG)
    return path


def _child(parts: tuple[str, ...], name: str) -> tuple[str, ...]:
    """*parts* after walking *name*: ``..`` is arithmetic, clamped at the root."""
    if name == "..":
        return parts[:-1]
    if name == ".":
        return parts
    return parts + (name,)


class ProxyBackend(fdops.OpenFdOps, Backend):
    """Serves the export of a proxy helper (see the module docstring)."""

    def __init__(self, connector: Connector, *, multidevs: str = "warn", threads: int = 8,
                 pool_size: int | None = None) -> None:
        """Nothing is started here: :meth:`start` reaches the helper."""
        try:
            QidMapper(0, multidevs)  # refuse a bad --multidevs before starting anything
        except BaseException:
            connector.close()
            raise
        self._multidevs = multidevs
        self.pool = HelperPool(connector, pool_size or min(threads, 16))
        self._pool = fdops.WorkerPool(threads, "ninep-proxy")
        self._nodes: weakref.WeakSet[ProxyNode] = weakref.WeakSet()
        self._starting = asyncio.Lock()
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Reach the helper (start it, for :meth:`spawn`) on the server's loop and
        learn the export's device.  A one-line OSError says why not, and then the
        back end is closed, whatever it started stopped again."""
        async with self._starting:
            if self._started:
                return
            if self._closed:
                raise RuntimeError("the proxy back end is closed")
            try:
                root = stat_from_proxy(await self.pool.start())
            except BaseException:
                await self.close()
                raise
            self.qids = QidMapper(root.dev, self._multidevs)
            self._started = True

    # --- construction from options -------------------------------------------------------

    @classmethod
    def spawn(cls, export: str, argv: Sequence[str] | None = None, *,
              per_connection: bool = False, **options: Any) -> ProxyBackend:
        """Serve *export* through a helper (ours by default) that :meth:`start` starts."""
        return cls(SpawnedHelper(export, argv, per_connection=per_connection), **options)

    @classmethod
    def from_args(cls, args: Any) -> ProxyBackend:
        """``--backend proxy``: ``--proxy-socket``, ``--proxy-fd``, or else a
        ninep-proxy-helper of our own on ``--export``.  The pool has
        ``--threads`` connections (at most 16; one with ``--proxy-fd``)."""
        if getattr(args, "security_model", None) is not None:
            raise ValueError("Invalid argument security_model specified with proxy fsdriver")
        options = {"multidevs": args.multidevs, "threads": args.threads}
        if args.proxy_socket is not None and args.proxy_fd is not None:
            raise ValueError("--proxy-socket and --proxy-fd cannot be used together")
        if args.proxy_socket is not None:
            return cls(SocketConnector(args.proxy_socket), **options)
        if args.proxy_fd is not None:
            return cls(FdConnector(args.proxy_fd), **options)
        return cls.spawn(args.export, **options)

    # --- plumbing --------------------------------------------------------------------------

    async def _one(self, request: P.Request) -> tuple[P.Reply, int | None]:
        return (await self.pool.call(request))[0]

    async def _lstat(self, parts: tuple[str, ...]) -> Stat:
        reply, _ = await self._one(P.Lstat(_path(parts)))
        return stat_from_proxy(_expect(reply, P.ProxyStat))

    async def _ok(self, request: P.Request) -> None:
        """Send a status request; raise its errno if it failed."""
        _status((await self._one(request))[0])

    def _new_node(self, parts: tuple[str, ...], mode: int) -> ProxyNode:
        node = ProxyNode(parts, mode)
        self._nodes.add(node)
        return node

    async def _name_is_gone(self, node: ProxyNode) -> bool:
        """For an open node: is its path no longer the open file (unlinked,
        replaced, moved on the host)?  Then only its fd reaches the file."""
        assert node.fd is not None
        own = os.fstat(node.fd)
        if own.st_nlink == 0:
            return True
        try:
            named = await self._lstat(node.parts)
        except OSError as exc:
            if isinstance(exc, HelperLost):
                raise
            return True
        return (named.dev, named.ino) != (own.st_dev, own.st_ino)

    async def _orphan_fd(self, node: ProxyNode) -> int | None:
        """The node's fd when only that fd reaches its file, else None."""
        if node.fd is not None and await self._name_is_gone(node):
            return node.fd
        return None

    # --- attach / walk (clunk: fdops.OpenFdOps) ------------------------------------

    async def attach(self, uname: str, uid: int, aname: str) -> tuple[ProxyNode, Qid]:
        if not self._started:
            raise RuntimeError("ProxyBackend.start() must be awaited before serving")
        st = await self._lstat(())
        return self._new_node((), st.mode), self.qids.qid(st)

    async def walk(self, node: ProxyNode, names: list[str]) -> tuple[list[Qid], ProxyNode | None]:
        if not names:
            return [], self._new_node(node.parts, node.mode)
        if not node.is_dir:  # "." and ".." too: a file has neither
            raise _error(errno.ENOTDIR)
        steps: list[tuple[str, ...]] = []
        parts = node.parts
        for name in names:
            parts = _child(parts, name)
            steps.append(parts)
        replies = await self.pool.call(*[P.Lstat(_path(p)) for p in steps])
        qids: list[Qid] = []
        mode = node.mode
        for reply, _ in replies:
            if qids and not st_.S_ISDIR(mode):
                break  # never through a symlink or a file, whatever the helper resolved
            try:
                st = stat_from_proxy(_expect(reply, P.ProxyStat))
                qids.append(self.qids.qid(st))  # multidevs=forbid refuses here
            except OSError:
                if not qids:
                    raise  # the first name's error is the walk's
                break
            mode = st.mode
        if len(qids) < len(steps):
            return qids, None
        return qids, self._new_node(steps[-1], mode)

    # --- attributes ------------------------------------------------------------------------

    async def getattr(self, node: ProxyNode) -> tuple[Qid, Stat]:
        if node.fd is not None:
            st = Stat.from_os(os.fstat(node.fd))  # an fstat of a local fd does not block
        else:
            st = await self._lstat(node.parts)
        node.mode = st.mode
        return self.qids.qid(st), st

    async def setattr(self, node: ProxyNode, change: SetAttr) -> None:
        if change.only_drops_setid() and node.fd is not None \
                and not setid_bits_to_clear(os.fstat(node.fd).st_mode):
            return  # a write's usual case: nothing to clear, so no helper round trip
        fd = await self._orphan_fd(node)
        if fd is not None:
            await self._pool.run(self._setattr_fd, fd, change)
            return
        path = _path(node.parts)
        current = 0  # the mode now, for drop_setid
        if change.mode is not None or change.size is not None or change.drop_setid:
            current = (await self._lstat(node.parts)).mode
            kind = st_.S_IFMT(current)
            # T_CHMOD and T_TRUNCATE follow a final symlink: refuse those first.
            if kind == st_.S_IFLNK and (change.mode is not None or change.size is not None):
                raise _error(errno.EOPNOTSUPP if change.mode is not None else errno.EINVAL)
            if change.size is not None and kind == st_.S_IFDIR:
                raise _error(errno.EISDIR)
        requests: list[P.Request] = []
        fdops.apply_setattr(
            change,
            chown=lambda uid, gid: requests.append(P.Chown(
                path, _U32_KEEP if uid == -1 else uid, _U32_KEEP if gid == -1 else gid)),
            chmod=lambda mode: requests.append(P.Chmod(path, mode)),
            truncate=lambda size: requests.append(P.Truncate(path, size)),
            utimes=lambda atime, mtime: requests.append(P.Utime(path, *atime, *mtime)),
            current_mode=lambda: current)
        for request in requests:  # one by one: a failure stops the rest, as in notify_change
            await self._ok(request)

    async def write_from(self, node: ProxyNode, offset: int, views: list[memoryview], *,
                         drop_setid: bool = False) -> int:
        if drop_setid:  # a helper request, and only when the fd's mode has set-id bits
            await self.setattr(node, SetAttr(drop_setid=True))
        return await super().write_from(node, offset, views)

    @staticmethod
    def _setattr_fd(fd: int, change: SetAttr) -> None:
        fdops.apply_setattr(
            change,
            chown=lambda uid, gid: fdops.chown_pinned(fd, uid, gid),
            chmod=lambda mode: fdops.chmod_pinned(fd, mode),
            truncate=lambda size: fdops.truncate(fd, size),
            utimes=lambda atime, mtime: fdops.utimes_pinned(fd, atime, mtime),
            current_mode=lambda: os.fstat(fd).st_mode)

    async def statfs(self, node: ProxyNode) -> StatFs:
        reply, _ = await self._one(P.Statfs(b"/"))
        return statfs_from_proxy(_expect(reply, P.ProxyStatFS))

    async def readlink(self, node: ProxyNode) -> str:
        if not node.parts:
            raise _error(errno.EINVAL, "not a symlink")
        reply, _ = await self._one(P.Readlink(_path(node.parts), _READLINK_SIZE))
        return os.fsdecode(_expect(reply, P.ReadlinkReply).target)

    # --- open / create ---------------------------------------------------------------------

    def _adopt_passed_fd(self, node: ProxyNode, fd: int, flags: int) -> Qid:
        """Serve the helper's *fd* as the node's open file: only a regular file
        or directory, with the guest's O_NONBLOCK choice restored."""
        try:
            st = Stat.from_os(os.fstat(fd))
            kind = st_.S_IFMT(st.mode)
            if kind not in (st_.S_IFREG, st_.S_IFDIR):
                raise _error(errno.ELOOP if kind == st_.S_IFLNK else errno.ENXIO)
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        node.mode = st.mode
        return self._adopt_open(node, fd, st)

    async def _open_request(self, request: P.Request) -> int:
        reply, fd = await self._one(request)
        _status(reply)
        if fd is None:
            raise HelperLost("T_OPEN succeeded without an fd")
        return fd

    async def open(self, node: ProxyNode, flags: int) -> tuple[Qid, int]:
        self._check_not_open(node)
        kind = st_.S_IFMT(node.mode)
        if kind == st_.S_IFLNK:
            raise _error(errno.ELOOP)
        if kind not in (st_.S_IFREG, st_.S_IFDIR):  # never ask the helper for a FIFO or device
            raise _error(errno.ENXIO, "refusing to open a special file")
        host_flags = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_CLOEXEC)) | _OPEN_ADDED
        if kind == st_.S_IFDIR:
            host_flags |= os.O_DIRECTORY
        fd = await self._open_request(P.Open(_path(node.parts), host_flags))
        return self._adopt_passed_fd(node, fd, flags), 0

    async def create(self, node: ProxyNode, name: str, flags: int, mode: int,
                     cred: Credentials) -> tuple[Qid, int]:
        self._check_not_open(node)
        parts = node.parts + (name,)
        host_flags = (flags & ~os.O_CLOEXEC) | os.O_CREAT | _OPEN_ADDED
        fd = await self._open_request(P.Create(_path(parts), host_flags, mode & 0o7777,
                                               cred.uid, cred.gid))
        qid = self._adopt_passed_fd(node, fd, flags)
        node.parts = parts
        return qid, 0

    async def _make(self, parts: tuple[str, ...], request: P.Request, mode: int) -> Qid:
        """Run a creating request, set the set-id bits the kernel strips at
        creation, and return the new entry's qid."""
        if mode & _SET_ID_BITS:
            await self._ok(request)
            await self._ok(P.Chmod(_path(parts), mode & 0o7777))
            return self.qids.qid(await self._lstat(parts))
        (made, _), (stat_reply, _) = await self.pool.call(request, P.Lstat(_path(parts)))
        _status(made)
        return self.qids.qid(stat_from_proxy(_expect(stat_reply, P.ProxyStat)))

    async def mkdir(self, node: ProxyNode, name: str, mode: int, cred: Credentials) -> Qid:
        parts = node.parts + (name,)
        return await self._make(parts, P.Mkdir(cred.uid, cred.gid, _path(parts), mode & 0o7777),
                                mode)

    async def symlink(self, node: ProxyNode, name: str, target: str, cred: Credentials) -> Qid:
        parts = node.parts + (name,)
        return await self._make(parts, P.Symlink(cred.uid, cred.gid, os.fsencode(target),
                                                 _path(parts)), 0)

    async def mknod(self, node: ProxyNode, name: str, mode: int, rdev: int,
                    cred: Credentials) -> Qid:
        parts = node.parts + (name,)
        return await self._make(parts, P.Mknod(cred.uid, cred.gid, _path(parts), mode, rdev),
                                mode)

    # --- namespace changes -----------------------------------------------------------------

    async def link(self, dnode: ProxyNode, node: ProxyNode, name: str) -> None:
        if not node.parts:
            raise _error(errno.EPERM, "cannot link the root")
        await self._ok(P.Link(_path(node.parts), _path(dnode.parts + (name,))))

    async def rename(self, node: ProxyNode, dnode: ProxyNode, name: str) -> None:
        if not node.parts:
            raise _error(errno.EBUSY, "cannot rename the root")
        await self._rename(node.parts, dnode.parts + (name,))

    async def renameat(self, olddir: ProxyNode, oldname: str, newdir: ProxyNode,
                       newname: str) -> None:
        await self._rename(olddir.parts + (oldname,), newdir.parts + (newname,))

    async def _rename(self, old: tuple[str, ...], new: tuple[str, ...]) -> None:
        await self._ok(P.Rename(_path(old), _path(new)))
        cut = len(old)  # re-point every live node at or below *old*
        for other in list(self._nodes):
            if other.parts[:cut] == old:
                other.parts = new + other.parts[cut:]

    async def unlinkat(self, dnode: ProxyNode, name: str, rmdir: bool) -> None:
        parts = dnode.parts + (name,)
        # T_REMOVE removes whichever it finds; unlinkat must refuse the wrong kind.
        is_dir = st_.S_ISDIR((await self._lstat(parts)).mode)
        if rmdir and not is_dir:
            raise _error(errno.ENOTDIR)
        if is_dir and not rmdir:
            raise _error(errno.EISDIR)
        await self._ok(P.Remove(_path(parts)))

    async def remove(self, node: ProxyNode) -> None:
        if not node.parts:
            raise _error(errno.EBUSY, "cannot remove the root")
        await self._ok(P.Remove(_path(node.parts)))

    # --- directories (I/O, fsync and locks: fdops.OpenFdOps) ----------------------------------

    async def readdir(self, node: ProxyNode, offset: int, max_entries: int) -> list[DirEntry]:
        fd = self._fd(node)
        if node.dir_lock is None:
            raise _error(errno.ENOTDIR, "not an open directory")
        root_stat = None if node.parts else (lambda: Stat.from_os(os.fstat(fd)))
        return await self._pool.run(functools.partial(
            fdops.read_dir, fd, node.dir_lock, offset, max_entries, self.qids,
            stat_entry=_stat_entry, root_stat=root_stat))

    # --- xattrs ----------------------------------------------------------------------------

    async def xattr_get(self, node: ProxyNode, name: str) -> bytes:
        fd = await self._orphan_fd(node)
        if fd is not None:
            return await self._pool.run(os.getxattr, fd, name)
        path, raw = _path(node.parts), os.fsencode(name)
        return await self._sized(lambda size: P.Lgetxattr(size, path, raw))

    async def xattr_list(self, node: ProxyNode) -> bytes:
        fd = await self._orphan_fd(node)
        if fd is not None:
            names = await self._pool.run(os.listxattr, fd)
            return b"".join(os.fsencode(n) + b"\0" for n in names)
        path = _path(node.parts)
        return await self._sized(lambda size: P.Llistxattr(size, path))

    async def _sized(self, request: Callable[[int], P.Request]) -> bytes:
        """T_LGETXATTR/T_LLISTXATTR: ask the size (size 0), then fetch that
        much; again if the value grew in between (ERANGE)."""
        while True:
            size = _status((await self._one(request(0)))[0])
            if size == 0:
                return b""
            try:
                reply, _ = await self._one(request(size))
                return _expect(reply, P.XattrReply).value
            except OSError as exc:
                if exc.errno != errno.ERANGE:
                    raise

    async def xattr_set(self, node: ProxyNode, name: str, value: bytes, flags: int) -> None:
        fd = await self._orphan_fd(node)
        if fd is not None:
            await self._pool.run(os.setxattr, fd, name, value, flags)
            return
        path, raw = _path(node.parts), os.fsencode(name)
        if 2 + len(path) + 2 + len(raw) + 2 + len(value) + 8 > P.PROXY_MAX_IO_SZ:
            raise _error(errno.E2BIG, "xattr value too large for one proxy request")
        await self._ok(P.Lsetxattr(path, raw, bytes(value), len(value), flags))

    async def xattr_remove(self, node: ProxyNode, name: str) -> None:
        fd = await self._orphan_fd(node)
        if fd is not None:
            await self._pool.run(os.removexattr, fd, name)
            return
        await self._ok(P.Lremovexattr(_path(node.parts), os.fsencode(name)))

    def capabilities(self) -> frozenset[int]:
        """Only CAP_FSETID: the helper does everything privileged, but ninep writes
        through the fds it hands over, and without CAP_FSETID the host kernel would
        clear set-id bits on every write, the guest's root's included (Linux keeps
        them for root; a write by anyone else clears them either way)."""
        return frozenset({syscalls.CAP_FSETID})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown()
        for node in list(self._nodes):  # fids a session never clunked
            await self.clunk(node)
        self.pool.close()


def _stat_entry(dirfd: int, name: str) -> Stat:
    """lstat of an entry of a directory the helper opened (multidevs=remap readdir)."""
    return Stat.from_os(os.stat(name, dir_fd=dirfd, follow_symlinks=False))
