"""The helper's request loop: one proxy connection, blocking I/O.

Confinement
-----------
The process is chrooted into the export (see :mod:`ninep.helper.main`), so
``/``, ``..`` and absolute symlinks all stay inside.  On top of that, every
path that arrives is resolved here, never handed to a path-taking syscall:

* Directories are resolved with ``openat2(root, …, RESOLVE_IN_ROOT |
  RESOLVE_NO_MAGICLINKS)``, so ``..`` is clamped at the export root even while
  directories are being renamed, and procfs magic links (``/proc/<pid>/root``
  if a procfs happens to be mounted inside the export) are never followed.
* Operations that act on the last component without following it (lstat,
  readlink, lchown, utimensat, rename, link, remove, mknod, mkdir, symlink,
  xattrs) use the ``*at`` call on the resolved parent with that single name.
* Operations that follow the last component (open, create, chmod, truncate,
  statfs, getversion) resolve the whole path to an ``O_PATH`` fd with the same
  ``openat2`` rules, check what it is, and then act on that fd, re-opening it
  through ``/proc/self/fd/N`` when they need a real file descriptor.  So the
  object checked is the object used: a device node can never be opened (the
  export behaves as if mounted ``nodev``: ``EACCES``), even if one is renamed
  into place concurrently.

A path of PATH_MAX bytes or more (the guest's kernel accepts those; the
protocol's strings hold 64 KiB) is resolved in pieces shorter than PATH_MAX,
each after the first with ``RESOLVE_BENEATH`` from the directory the one
before opened: see :meth:`Export.openat2`.

The ``/proc`` directory fd used for re-opening is opened before the chroot; only
``self/fd/<int>`` is ever looked up under it.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import itertools
import os
import socket
import stat
import threading
from contextlib import contextmanager
from collections.abc import Callable
from typing import Any

from ninep import syscalls
from ninep.protocol import proxy as P

#: Capabilities the helper keeps (QEMU's virtfs-proxy-helper list).
ALLOWED_CAPS = (syscalls.CAP_CHOWN, syscalls.CAP_DAC_OVERRIDE, syscalls.CAP_FOWNER,
                syscalls.CAP_FSETID, syscalls.CAP_SETGID, syscalls.CAP_MKNOD, syscalls.CAP_SETUID)
ALLOWED_MASK = sum(1 << c for c in ALLOWED_CAPS)

#: Filesystems on which QEMU's helper issues FS_IOC_GETVERSION (ext2/3/4, btrfs, reiserfs, xfs).
GETVERSION_FS_MAGIC = frozenset({0xEF53, 0x9123683E, 0x52654973, 0x58465342})
FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long)

_RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
#: The pieces after the first of a path longer than PATH_MAX (Export.openat2).
_RESOLVE_BENEATH = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_MAGICLINKS
#: The longest path the kernel takes in one call, NUL included.
_PATH_MAX = 4096
_O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
_O_LARGEFILE_KERNEL = 0o100000
#: Open flags passed on to the kernel; open(2) ignores unknown bits, openat2(2) would refuse them.
_OPEN_FLAGS = (os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND
               | os.O_NONBLOCK | os.O_DSYNC | os.O_SYNC | os.O_ASYNC | os.O_DIRECT
               | _O_LARGEFILE_KERNEL | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOATIME
               | os.O_CLOEXEC | os.O_PATH | _O_TMPFILE)
_U32_NONE = 0xFFFFFFFF  # (uid_t)-1 / (gid_t)-1: "leave unchanged"


class Export:
    """The chrooted export: a root fd, the /proc fd for re-opening, capabilities."""

    def __init__(self, root_fd: int, proc_fd: int, get_version: bool) -> None:
        self.root_fd = root_fd
        self.proc_fd = proc_fd
        self.get_version = get_version

    # --- resolution ----------------------------------------------------------

    def openat2(self, path: bytes, flags: int, mode: int = 0) -> int:
        """openat2 below the export root, for a path of any length.

        The kernel takes at most PATH_MAX bytes at once, but the protocol's
        strings hold 64 KiB and the guest's kernel accepts deeper paths (it
        walks them component by component).  A longer path is cut at slashes
        into pieces the kernel takes; every piece but the first is resolved
        with RESOLVE_BENEATH from the directory the one before opened, so a
        ``..`` or an absolute symlink that would leave that directory is
        refused (EXDEV) rather than resolved anywhere else.
        """
        if len(path) < _PATH_MAX:
            return _openat2(self.root_fd, path, flags, mode, _RESOLVE)
        *dirs, last = _pieces(path)
        fd, resolve = self.root_fd, _RESOLVE
        try:
            for piece in dirs:
                next_fd = _openat2(fd, piece, os.O_PATH | os.O_DIRECTORY, 0, resolve)
                if fd != self.root_fd:
                    os.close(fd)
                fd, resolve = next_fd, _RESOLVE_BENEATH
            return _openat2(fd, last, flags, mode, resolve)
        finally:
            if fd != self.root_fd:
                os.close(fd)

    def resolve(self, path: bytes, follow: bool = True, extra: int = 0) -> int:
        """An O_PATH fd for *path*; the last component is followed if *follow*."""
        _check_path(path)
        return self.openat2(path, os.O_PATH | extra | (0 if follow else os.O_NOFOLLOW))

    def parent(self, path: bytes) -> tuple[int, bytes]:
        """``(dirfd, name)``: an O_PATH fd on *path*'s directory and its last component.

        *name* never contains ``/``.  For paths ending in ``.``/``..`` or naming
        the root, the whole path is resolved as the directory and *name* is ``.``.
        """
        _check_path(path)
        stripped = path.rstrip(b"/")
        if not stripped:  # "/", "//"…
            return self.openat2(b"/", os.O_PATH | os.O_DIRECTORY), b"."
        cut = stripped.rfind(b"/")
        name = stripped[cut + 1:]
        if name in (b".", b".."):
            return self.openat2(stripped, os.O_PATH | os.O_DIRECTORY), b"."
        return self.openat2(stripped[:cut + 1] or b".", os.O_PATH | os.O_DIRECTORY), name

    def reopen(self, opath_fd: int, flags: int) -> int:
        """A real fd on the object *opath_fd* refers to (no path lookup involved)."""
        return os.open(b"self/fd/%d" % opath_fd, flags | os.O_CLOEXEC, dir_fd=self.proc_fd)

    def open(self, path: bytes, flags: int, mode: int = 0) -> int:
        """open(2) semantics, confined, refusing block and character devices.

        Never blocks: a FIFO without a peer would hold the connection's thread
        forever, so the open is non-blocking (like QEMU's local back end:
        ``O_WRONLY`` then fails with ENXIO) and O_NONBLOCK is cleared afterwards
        unless the caller asked for it."""
        flags &= _OPEN_FLAGS
        mode &= 0o7777
        if flags & os.O_PATH:
            # Not even an O_PATH fd on a device: its receiver could reopen it through
            # /proc/self/fd without any path access to the export.
            fd = self.openat2(path, flags & (os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY))
            if _is_device(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            return fd
        _check_path(path)
        fd = self._open_nonblocking(path, flags | os.O_NOCTTY | os.O_NONBLOCK, mode)
        if not flags & os.O_NONBLOCK:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            except OSError:
                os.close(fd)
                raise
        return fd

    def _open_nonblocking(self, path: bytes, flags: int, mode: int) -> int:
        """The confined open itself (*flags* include O_NONBLOCK); checks what it opens."""
        if flags & _O_TMPFILE == _O_TMPFILE:
            return self.openat2(path, flags, mode)  # a new unnamed regular file
        lookup = os.O_PATH | (flags & (os.O_NOFOLLOW | os.O_DIRECTORY))
        for attempt in range(4):
            try:
                ofd = self.openat2(path, lookup)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
                if attempt < 3:
                    # Create exclusively so whatever is there afterwards is ours.
                    try:
                        return self.openat2(path, flags | os.O_EXCL, mode)
                    except FileExistsError:
                        if flags & os.O_EXCL:
                            raise
                        continue  # lost a race, or a dangling symlink: look again
                # A dangling symlink to create through (O_EXCL refuses those): open,
                # then check.  Only a node renamed in at this very moment is ever
                # opened here, and its fd is closed at once.
                fd = self.openat2(path, flags, mode)
                if _is_device(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES)) from None
                return fd
            try:
                if flags & os.O_CREAT and flags & os.O_EXCL:
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
                mode_ = os.fstat(ofd).st_mode
                if _is_device(mode_):
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES))
                if stat.S_ISLNK(mode_):  # only reachable with O_NOFOLLOW
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                return self.reopen(ofd, flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW))
            finally:
                os.close(ofd)
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))  # pragma: no cover


def _openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2, retrying the EAGAIN a concurrent rename can cause."""
    for _ in range(16):
        try:
            return syscalls.openat2(dirfd, path, flags | os.O_CLOEXEC, mode, resolve)
        except BlockingIOError:
            continue
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def _pieces(path: bytes) -> list[bytes]:
    """*path* (PATH_MAX bytes or more) as relative pieces of whole components,
    each shorter than PATH_MAX: resolved one after the other they name the
    same file.  Empty components go (``a//b`` is ``a/b``); a trailing slash
    stays on the last piece, where it still demands a directory.  A single
    component too long for the kernel becomes a piece of its own, which the
    kernel then refuses (ENAMETOOLONG)."""
    pieces: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for component in filter(None, path.split(b"/")):
        if current and size + 1 + len(component) >= _PATH_MAX - 1:
            pieces.append(b"/".join(current))
            current, size = [], 0
        size += len(component) + (1 if current else 0)
        current.append(component)
    pieces.append(b"/".join(current) + (b"/" if path.endswith(b"/") else b""))
    return pieces


def _is_device(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _check_path(path: bytes) -> None:
    if not path:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    if b"\0" in path:
        raise OSError(errno.EINVAL, "embedded NUL in path")


def _nul_free(*names: bytes) -> None:
    for n in names:
        if b"\0" in n:
            raise OSError(errno.EINVAL, "embedded NUL")


#: Request fields that QEMU's helper reads as C strings.
_C_STRING_FIELDS = ("path", "oldpath", "newpath", "target", "name")


def _without_c_terminators(req: P.Request) -> P.Request:
    """QEMU's proxy client sends paths with their C terminator counted in the
    string's length (its V9fsPath is ``"/\\0"``, size 2), and QEMU's helper
    reads them as C strings.  Drop that one trailing NUL; a NUL anywhere
    else is still refused (EINVAL)."""
    changes = {f: value[:-1] for f in _C_STRING_FIELDS
               if (value := getattr(req, f, None)) is not None and value.endswith(b"\0")}
    return dataclasses.replace(req, **changes) if changes else req


def _id(v: int) -> int:
    return -1 if v == _U32_NONE else v


@contextmanager
def _dirfd(fd: int):
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def caller_creds(uid: int, gid: int):
    """Run the body with fsuid/fsgid set to the caller's, on this thread only.

    The kernel clears the file-system capabilities from the effective set when
    the fsuid leaves 0; CAP_DAC_OVERRIDE is raised again, as QEMU's helper
    does, because supplementary groups are not switched.
    """
    old_gid = syscalls.setfsgid(gid)
    old_uid = syscalls.setfsuid(uid)
    try:
        if uid != 0 or gid != 0:
            eff, prm, inh = syscalls.capget()
            syscalls.capset(eff | (1 << syscalls.CAP_DAC_OVERRIDE), prm, inh)
        yield
    finally:
        syscalls.setfsuid(old_uid)
        syscalls.setfsgid(old_gid)
        syscalls.capset(ALLOWED_MASK, ALLOWED_MASK, 0)


class Connection:
    """Serves one connected proxy socket until EOF or a malformed request."""

    _ids = itertools.count(1)

    def __init__(self, sock: socket.socket, export: Export, log: Callable[[str], None]) -> None:
        self.sock = sock
        self.export = export
        self.log = log
        self.id = next(self._ids)
        self._ops: dict[int, Callable[[Any], Any]] = {
            P.T_OPEN: self.op_open, P.T_CREATE: self.op_create, P.T_MKNOD: self.op_mknod,
            P.T_MKDIR: self.op_mkdir, P.T_SYMLINK: self.op_symlink, P.T_LINK: self.op_link,
            P.T_LSTAT: self.op_lstat, P.T_READLINK: self.op_readlink, P.T_STATFS: self.op_statfs,
            P.T_CHMOD: self.op_chmod, P.T_CHOWN: self.op_chown, P.T_TRUNCATE: self.op_truncate,
            P.T_UTIME: self.op_utime, P.T_RENAME: self.op_rename, P.T_REMOVE: self.op_remove,
            P.T_LGETXATTR: self.op_getxattr, P.T_LLISTXATTR: self.op_listxattr,
            P.T_LSETXATTR: self.op_setxattr, P.T_LREMOVEXATTR: self.op_removexattr,
            P.T_GETVERSION: self.op_getversion,
        }

    # --- loop ----------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until EOF; never raises."""
        try:
            self._serve()
        except Exception as e:  # last resort: one line, no traceback
            self.log(f"connection {self.id}: {type(e).__name__}: {e}; closing")
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def _serve(self) -> None:
        try:
            # Private cwd for this thread: xattr calls work on a name relative to it.
            syscalls.unshare(syscalls.CLONE_FS)
        except OSError as e:
            self.log(f"connection {self.id}: unshare(CLONE_FS) failed: {e.strerror}; closing")
            return
        dec = P.RequestDecoder()
        while True:
            try:
                data = self.sock.recv(P.PROXY_HDR_SZ + P.PROXY_MAX_IO_SZ)
            except OSError as e:
                self.log(f"connection {self.id}: receive failed: {e.strerror}; closing")
                return
            if not data:
                if dec.pending:
                    self.log(f"connection {self.id}: EOF inside a request "
                             f"({dec.pending} bytes); closing")
                return
            dec.feed(data)
            try:
                for req in dec:
                    self._answer(req)
            except P.ProxyProtocolError as e:
                self.log(f"connection {self.id}: malformed request: {e}; closing")
                return
            except OSError as e:
                self.log(f"connection {self.id}: send failed: {e.strerror}; closing")
                return

    def _answer(self, req: P.Request) -> None:
        kind = P.reply_kind(req)
        try:
            result = self._ops[req.TYPE](_without_c_terminators(req))
        except OSError as e:
            result = -(e.errno or errno.EIO)
        except (ValueError, OverflowError):
            result = -errno.EINVAL
        if kind is P.ReplyKind.FD:
            self._send_fd(result)
        elif isinstance(result, int):
            self.sock.sendall(P.encode_reply(P.Status(result)))
        else:
            self.sock.sendall(P.encode_reply(result))

    def _send_fd(self, fd: int) -> None:
        if fd < 0:
            self.sock.sendall(P.encode_reply(P.FdReply(fd)))
            return
        try:
            socket.send_fds(self.sock, [P.encode_reply(P.FdReply(P.V9FS_FD_VALID))], [fd])
        finally:
            os.close(fd)

    # --- operations ----------------------------------------------------------------
    # Each returns an fd (T_OPEN/T_CREATE), a status int, or a reply object, or
    # raises OSError; _answer turns errors into -errno.

    def op_open(self, r: P.Open) -> int:
        return self.export.open(r.path, r.flags)

    def op_create(self, r: P.Create) -> int:
        with caller_creds(r.uid, r.gid):
            return self.export.open(r.path, r.flags, r.mode)

    def op_mknod(self, r: P.Mknod) -> int:
        with caller_creds(r.uid, r.gid):
            d, name = self.export.parent(r.path)
            with _dirfd(d):
                os.mknod(name, r.mode & 0xFFFF, r.rdev, dir_fd=d)
        return 0

    def op_mkdir(self, r: P.Mkdir) -> int:
        with caller_creds(r.uid, r.gid):
            d, name = self.export.parent(r.path)
            with _dirfd(d):
                os.mkdir(name, r.mode & 0xFFFF, dir_fd=d)
        return 0

    def op_symlink(self, r: P.Symlink) -> int:
        _nul_free(r.target)
        with caller_creds(r.uid, r.gid):
            d, name = self.export.parent(r.path)
            with _dirfd(d):
                os.symlink(r.target, name, dir_fd=d)
        return 0

    def op_link(self, r: P.Link) -> int:
        d1, n1 = self.export.parent(r.oldpath)
        with _dirfd(d1):
            d2, n2 = self.export.parent(r.newpath)
            with _dirfd(d2):
                os.link(n1, n2, src_dir_fd=d1, dst_dir_fd=d2, follow_symlinks=False)
        return 0

    def op_lstat(self, r: P.Lstat) -> P.ProxyStat:
        d, name = self.export.parent(r.path)
        with _dirfd(d):
            return P.ProxyStat.from_stat(os.stat(name, dir_fd=d, follow_symlinks=False))

    def op_readlink(self, r: P.Readlink) -> P.ReadlinkReply:
        # QEMU's helper reads at most size-1 bytes; size < 2 is readlink(…, 0) = EINVAL.
        if not 2 <= r.size < 1 << 31:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        d, name = self.export.parent(r.path)
        with _dirfd(d):
            target = os.readlink(name, dir_fd=d)
        return P.ReadlinkReply(target[:r.size - 1])

    def op_statfs(self, r: P.Statfs) -> P.ProxyStatFS:
        with _dirfd(self.export.resolve(r.path)) as fd:
            return P.ProxyStatFS(*syscalls.fstatfs(fd))

    def op_chmod(self, r: P.Chmod) -> int:
        with _dirfd(self.export.resolve(r.path)) as fd:
            os.chmod(b"self/fd/%d" % fd, r.mode & 0xFFFF, dir_fd=self.export.proc_fd)
        return 0

    def op_chown(self, r: P.Chown) -> int:
        d, name = self.export.parent(r.path)
        with _dirfd(d):
            os.chown(name, _id(r.uid), _id(r.gid), dir_fd=d, follow_symlinks=False)
        return 0

    def op_truncate(self, r: P.Truncate) -> int:
        length = r.length if r.length < 1 << 63 else r.length - (1 << 64)
        if length < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        with _dirfd(self.export.resolve(r.path)) as ofd:
            mode = os.fstat(ofd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            with _dirfd(self.export.reopen(ofd, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)) as fd:
                os.ftruncate(fd, length)
        return 0

    def op_utime(self, r: P.Utime) -> int:
        d, name = self.export.parent(r.path)
        with _dirfd(d):
            syscalls.utimensat(d, name, (r.atime_sec, r.atime_nsec), (r.mtime_sec, r.mtime_nsec),
                           syscalls.AT_SYMLINK_NOFOLLOW)
        return 0

    def op_rename(self, r: P.Rename) -> int:
        d1, n1 = self.export.parent(r.oldpath)
        with _dirfd(d1):
            d2, n2 = self.export.parent(r.newpath)
            with _dirfd(d2):
                os.rename(n1, n2, src_dir_fd=d1, dst_dir_fd=d2)
        return 0

    def op_remove(self, r: P.Remove) -> int:
        d, name = self.export.parent(r.path)
        with _dirfd(d):
            try:
                os.unlink(name, dir_fd=d)
            except IsADirectoryError:
                os.rmdir(name, dir_fd=d)
        return 0

    def _in_dir(self, path: bytes):
        """fchdir (this thread only) to *path*'s directory; returns the name."""
        d, name = self.export.parent(path)
        try:
            os.fchdir(d)
        finally:
            os.close(d)
        return name

    def _sized(self, size: int, result: int | bytes):
        if isinstance(result, int):  # size 0: the length, as a status
            return result
        if 2 + len(result) > P.PROXY_MAX_IO_SZ:
            raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
        return P.XattrReply(result)

    def op_getxattr(self, r: P.Lgetxattr):
        _nul_free(r.name)
        size = r.size if r.size < 1 << 31 else -1
        if size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        name = self._in_dir(r.path)
        return self._sized(size, syscalls.lgetxattr(name, r.name, size))

    def op_listxattr(self, r: P.Llistxattr):
        size = r.size if r.size < 1 << 31 else -1
        if size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        name = self._in_dir(r.path)
        return self._sized(size, syscalls.llistxattr(name, size))

    def op_setxattr(self, r: P.Lsetxattr) -> int:
        _nul_free(r.name)
        if r.size > len(r.value):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        name = self._in_dir(r.path)
        os.setxattr(name, r.name, r.value[:r.size], r.flags, follow_symlinks=False)
        return 0

    def op_removexattr(self, r: P.Lremovexattr) -> int:
        _nul_free(r.name)
        name = self._in_dir(r.path)
        os.removexattr(name, r.name, follow_symlinks=False)
        return 0

    def op_getversion(self, r: P.Getversion) -> P.VersionReply:
        if not self.export.get_version:
            return P.VersionReply(0)  # QEMU's helper: 0 where the ioctl is not supported
        with _dirfd(self.export.open(r.path, os.O_RDONLY | os.O_NONBLOCK)) as fd:
            buf = bytearray(8)
            fcntl.ioctl(fd, FS_IOC_GETVERSION, buf, True)
        return P.VersionReply(int.from_bytes(buf, "little"))


def serve_in_thread(sock: socket.socket, export: Export, log: Callable[[str], None]) -> None:
    conn = Connection(sock, export, log)
    threading.Thread(target=conn.serve, name=f"proxy-conn-{conn.id}", daemon=True).start()
