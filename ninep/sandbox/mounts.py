"""--sandbox namespace: a root that holds only the export and the Python runtime.

After every socket is open and the export's root fd is held, the server
enters new mount, ipc and network namespaces (through a user namespace when
not root) and pivots into a small tmpfs that holds, at their host paths:

* the export (read-write, with what is mounted inside it),
* the directories Python imports from (read-only, nosuid, nodev),
* ``/proc/self/fd``: a bind of this process's own fd directory, because the
  back ends reach pinned inodes through ``/proc/self/fd/N`` (fdnames.fd_path).

Nothing else of the host is reachable by path; the listening sockets, the
export and guest memory all arrive as fds.  The network namespace is empty,
so a compromised server cannot open a connection either.  A pid namespace
comes too unless --no-pid-namespace (pidns.py: the server then serves as pid 1
under a supervisor; without one it keeps the pid its manager started).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

from .. import syscalls as sc

SANDBOX_CHOICES = ("namespace", "chroot", "none")
_TMPFS_FLAGS = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
#: statvfs flag -> mount flag, for the flags a read-only remount must repeat.
_KEPT_FLAGS = ((os.ST_NOEXEC, sc.MS_NOEXEC), (os.ST_NOATIME, 1 << 10),
               (os.ST_NODIRATIME, 1 << 11), (os.ST_RELATIME, 1 << 21))


class SandboxError(OSError):
    """The sandbox could not be entered; the message names --sandbox none."""


def runtime_dirs() -> list[str]:
    """The directories Python may still import from (sys.path), outermost only.

    A sys.path entry that is the current directory or a source checkout
    contributes only the ninep package itself, not everything beside it.
    """
    stdlib = os.path.dirname(os.__file__)
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = {os.path.realpath(stdlib), os.path.realpath(package)}
    for entry in sys.path:
        path = os.path.realpath(entry or ".")
        if os.path.isdir(path) and (path.startswith(stdlib) or
                                    os.path.basename(path) in ("site-packages", "dist-packages")):
            dirs.add(path)
    outermost: list[str] = []
    for d in sorted(dirs):
        if not any(d == o or d.startswith(o.rstrip("/") + "/") for o in outermost):
            outermost.append(d)
    return outermost


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_user_namespace() -> None:
    """Become root of a new user namespace in which our own ids map to themselves."""
    uid, gid = os.geteuid(), os.getegid()
    sc.unshare(sc.CLONE_NEWUSER)
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")


def _bind(source_fd: int, new_root: str, path: str, *, readonly: bool) -> None:
    """Bind what *source_fd* is onto *path* under *new_root* (creating the directories)."""
    target = new_root + path
    os.makedirs(target, exist_ok=True)
    sc.mount(f"/proc/self/fd/{source_fd}", target, None, sc.MS_BIND | sc.MS_REC)
    if readonly:
        # Keep the flags the mount has: in a user namespace they are locked.
        kept = sum(ms for st, ms in _KEPT_FLAGS if os.statvfs(target).f_flag & st)
        sc.mount(None, target, None,
                 sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | kept)


def enter_namespace(export: str, extra_dirs: Iterable[str] = (),
                    fork: Callable[[], None] | None = None) -> None:
    """Pivot into a root of the export, the runtime and /proc/self/fd (see the module doc).

    With *fork* (``pidns.fork_supervised``) a pid namespace is created too, and
    *fork* is called once the namespaces exist: it returns in the process that
    serves, which then builds the root (with its own fd directory).
    """
    export = os.path.realpath(export)
    if export == "/":
        raise SandboxError(0, "--sandbox namespace: the export is the whole file system; "
                           "use --sandbox none")
    # The export after the runtime, so that it is on top should it lie inside it.
    views = [(d, True) for d in (*runtime_dirs(), *extra_dirs)]
    views += [(export, False), ("/proc/self/fd", False)]
    try:
        if os.geteuid() != 0:
            enter_user_namespace()
        sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET
                   | (sc.CLONE_NEWPID if fork is not None else 0))
    except OSError as exc:
        raise SandboxError(exc.errno, f"--sandbox namespace: cannot create namespaces "
                           f"({exc.strerror}); run with --sandbox none") from None
    if fork is not None:
        fork()
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    # Bind sources must be mounts of this namespace: open them only now.
    fds: list[tuple[int, str, bool]] = []
    try:
        for path, readonly in views:
            target = "/proc/self/fd" if path.startswith("/proc/") else path
            fds.append((os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), target,
                        readonly))
        # The new root is a tmpfs mounted over the export's parent (in this
        # namespace only; not over the export, or the export's recursive bind
        # would carry it along); every view is still reached by its fd.
        new_root = os.path.dirname(export)
        sc.mount("ninep-root", new_root, "tmpfs", _TMPFS_FLAGS, "mode=0755,size=64k")
        for fd, path, readonly in fds:
            _bind(fd, new_root, path, readonly=readonly)
        os.mkdir(new_root + "/.old")
        sc.pivot_root(new_root, new_root + "/.old")
        os.chdir("/")
        sc.umount2("/.old", sc.MNT_DETACH)
        os.rmdir("/.old")
        sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | _TMPFS_FLAGS)
    finally:
        for fd, _, _ in fds:
            os.close(fd)


class SocketFiles:
    """The Unix socket files we created, removable after the root has changed.

    The transports unlink their socket paths when they close; once the root
    is the sandbox's, those paths name nothing, so each file is removed here
    through its directory's fd, opened before, if it is still our socket.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self._entries: list[tuple[int, str, int]] = []
        for path in paths:
            try:
                ino = os.lstat(path).st_ino
                dirfd = os.open(os.path.dirname(os.path.abspath(path)),
                                os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            self._entries.append((dirfd, os.path.basename(path), ino))

    def remove(self) -> None:
        for dirfd, name, ino in self._entries:
            try:
                if os.lstat(name, dir_fd=dirfd).st_ino == ino:
                    os.unlink(name, dir_fd=dirfd)
            except OSError:
                pass
            os.close(dirfd)
        self._entries = []


__all__ = ["SANDBOX_CHOICES", "SandboxError", "SocketFiles", "enter_namespace",
           "enter_user_namespace", "runtime_dirs"]
