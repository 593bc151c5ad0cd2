"""Security models: how guest owners, modes and special files map to the host.

The local back end never asks which model it runs; it calls these methods.
Every method runs in a worker thread and works on an entry named by a
confined parent directory fd plus one checked name component, or on an open
fd (for files the guest holds open, which may be unlinked already).
"""

from __future__ import annotations

import errno
import os
import stat as st_
from abc import ABC, abstractmethod
from collections.abc import Callable

from ... import syscalls
from ..base import Credentials, DirEntry, Stat, setid_bits_to_clear
from ..fdops import fd_path, open_nofollow

MODEL_CHOICES = ("passthrough", "mapped-xattr", "mapped", "mapped-file", "none")


def proc_path(dirfd: int, name: str | None = None) -> str:
    """A /proc path that reaches *name* inside confined *dirfd* without a
    guest-built path string (QEMU's trick for calls with no dir-fd form)."""
    return fd_path(dirfd) if name is None else f"{fd_path(dirfd)}/{name}"


def open_created(dirfd: int, name: str, flags: int, mode: int) -> tuple[int, bool]:
    """Open *name* for Tlcreate: ``(fd, whether this call created it)``.

    Creation is exclusive so that only a new file is given the caller's owner
    and mode.  Without O_EXCL in *flags* an existing entry is opened as it is,
    and only if it is a regular file: a symlink gives ELOOP, a directory
    EISDIR, anything else ENXIO (never a device or FIFO, as in Tlopen).
    """
    plain = (flags & ~(os.O_CREAT | os.O_EXCL)) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, plain | os.O_CREAT | os.O_EXCL, mode, dir_fd=dirfd), True
    except FileExistsError:
        if flags & os.O_EXCL:
            raise
    pfd = open_nofollow(dirfd, name)
    try:
        ftype = st_.S_IFMT(os.fstat(pfd).st_mode)
        if ftype != st_.S_IFREG:
            refusal = {st_.S_IFLNK: errno.ELOOP, st_.S_IFDIR: errno.EISDIR}.get(ftype, errno.ENXIO)
            raise OSError(refusal, os.strerror(refusal))
        return os.open(proc_path(pfd), plain & ~os.O_NOFOLLOW), False
    finally:
        os.close(pfd)


class SecurityModel(ABC):
    """Where the guest-visible uid, gid, mode and rdev of a file live."""

    name: str
    #: Capabilities (syscalls.CAP_*) the server keeps for this model: with
    #: host owners the guest's, files of any owner must be reachable and chowned.
    capabilities: frozenset[int] = frozenset({
        syscalls.CAP_CHOWN, syscalls.CAP_DAC_OVERRIDE, syscalls.CAP_FOWNER, syscalls.CAP_FSETID,
        syscalls.CAP_SETGID, syscalls.CAP_SETUID, syscalls.CAP_MKNOD})
    #: Names in a directory that the guest may never see or touch.
    hidden_names: frozenset[str] = frozenset()

    def is_hidden(self, name: str) -> bool:
        return name in self.hidden_names

    # -- reading ------------------------------------------------------------------
    @abstractmethod
    def stat(self, dirfd: int, name: str) -> Stat:
        """lstat of the entry, as the guest must see it."""

    @abstractmethod
    def fstat(self, fd: int) -> Stat:
        """fstat of an open file, as the guest must see it."""

    def fstat_open(self, fd: int, at: Callable[[Callable[[int, str], Stat]], Stat]) -> Stat:
        """Tgetattr of a file the guest holds open as *fd*.  ``at(fn)`` runs
        ``fn(parent_dirfd, name)`` on its entry, for models that keep metadata
        by name (the entry may be gone: the file can be unlinked)."""
        return self.fstat(fd)

    def visible_dirents(self, entries: list[DirEntry]) -> list[DirEntry]:
        """The host entries readdir shows the guest: hidden names left out.

        A whole batch at once, so that a model with nothing to hide or map
        (passthrough, none) costs nothing per entry in a large listing.
        """
        if not self.hidden_names:
            return entries
        hidden = self.hidden_names
        return [e for e in entries if os.fsdecode(e.name) not in hidden]

    @abstractmethod
    def readlink(self, dirfd: int, name: str) -> str: ...

    def may_have_setid(self, fd: int) -> bool:
        """Before each write by a user without CAP_FSETID: False only when the
        open file *fd* surely has no set-id bits to clear, found cheaply
        (True sends the write through the full ``SetAttr(drop_setid)``)."""
        return True

    # -- creating -----------------------------------------------------------------
    @abstractmethod
    def create_file(self, dirfd: int, name: str, flags: int, mode: int, cred: Credentials) -> int:
        """Create and open a regular file; returns the fd."""

    @abstractmethod
    def mkdir(self, dirfd: int, name: str, mode: int, cred: Credentials) -> None: ...

    @abstractmethod
    def mknod(self, dirfd: int, name: str, mode: int, rdev: int, cred: Credentials) -> None: ...

    @abstractmethod
    def symlink(self, dirfd: int, name: str, target: str, cred: Credentials) -> None: ...

    # -- changing -----------------------------------------------------------------
    @abstractmethod
    def chmod(self, dirfd: int, name: str, fd: int | None, mode: int) -> None:
        """Set the guest-visible permission bits (fd set: the file is open)."""

    @abstractmethod
    def chown(self, dirfd: int, name: str, fd: int | None, uid: int, gid: int) -> None:
        """Set the guest-visible owner; -1 leaves a field alone."""

    # -- xattrs: guest name <-> host name ---------------------------------------
    def xattr_host_name(self, name: str) -> str:
        """The host xattr that stores the guest's *name*; EACCES/ENOTSUP if forbidden."""
        return name

    def xattr_guest_names(self, names: list[str]) -> list[str]:
        return names

    # *fd* is the file's own fd (open, or an O_PATH pin); the calls follow
    # its /proc/self/fd link, which lands on that inode (a symlink stays itself).
    def xattr_get(self, fd: int, name: str) -> bytes:
        return os.getxattr(proc_path(fd), self.xattr_host_name(name))

    def xattr_list(self, fd: int) -> list[str]:
        return self.xattr_guest_names(os.listxattr(proc_path(fd)))

    def xattr_set(self, fd: int, name: str, value: bytes, flags: int) -> None:
        os.setxattr(proc_path(fd), self.xattr_host_name(name), value, flags)

    def xattr_remove(self, fd: int, name: str) -> None:
        os.removexattr(proc_path(fd), self.xattr_host_name(name))

    # -- removing ----------------------------------------------------------------
    def unlink(self, dirfd: int, name: str, is_dir: bool) -> None:
        """rmdir/unlink the entry, then drop the model's side data for it."""
        if is_dir:
            os.rmdir(name, dir_fd=dirfd)
        else:
            os.unlink(name, dir_fd=dirfd)
        self.on_unlink(dirfd, name, is_dir)

    # -- keeping side data in step (mapped-file) -------------------------------
    def on_rename(self, olddirfd: int, oldname: str, newdirfd: int, newname: str) -> None:  # noqa: B027 - a hook
        """Called after a successful rename."""

    def on_link(self, olddirfd: int, oldname: str, newdirfd: int, newname: str) -> None:  # noqa: B027 - a hook
        """Called after a successful hard link."""

    def on_unlink(self, dirfd: int, name: str, is_dir: bool) -> None:  # noqa: B027 - a hook
        """Called after a successful unlink/rmdir."""


def _chown_entry(dirfd: int, name: str, fd: int | None, uid: int, gid: int) -> None:
    if fd is not None:
        os.chown(fd, uid, gid)
    else:
        os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)


def chmod_entry(dirfd: int, name: str, fd: int | None, mode: int) -> None:
    """chmod without following a final symlink; symlinks get EOPNOTSUPP."""
    if fd is not None:
        os.chmod(fd, mode)
        return
    pfd = open_nofollow(dirfd, name)
    try:
        if st_.S_ISLNK(os.fstat(pfd).st_mode):
            raise OSError(errno.EOPNOTSUPP, "cannot chmod a symlink")
        os.chmod(proc_path(pfd), mode)
    finally:
        os.close(pfd)


class PassthroughModel(SecurityModel):
    """Host owners and modes are the guest's: files are chowned to the caller."""

    name = "passthrough"

    def stat(self, dirfd: int, name: str) -> Stat:
        return Stat.from_os(os.stat(name, dir_fd=dirfd, follow_symlinks=False))

    def fstat(self, fd: int) -> Stat:
        return Stat.from_os(os.fstat(fd))

    def readlink(self, dirfd: int, name: str) -> str:
        return os.readlink(name, dir_fd=dirfd)

    def may_have_setid(self, fd: int) -> bool:
        return bool(setid_bits_to_clear(os.fstat(fd).st_mode))

    def _own(self, dirfd: int, name: str, fd: int | None, cred: Credentials) -> None:
        """Give a new entry to the caller; undo the creation if that fails."""
        try:
            _chown_entry(dirfd, name, fd, cred.uid, cred.gid)
        except OSError:
            self._undo(dirfd, name, fd)
            raise

    @staticmethod
    def _undo(dirfd: int, name: str, fd: int | None) -> None:
        try:
            if fd is None and st_.S_ISDIR(
                    os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                os.rmdir(name, dir_fd=dirfd)
            else:
                os.unlink(name, dir_fd=dirfd)
        except OSError:
            pass
        if fd is not None:
            os.close(fd)

    def create_file(self, dirfd: int, name: str, flags: int, mode: int, cred: Credentials) -> int:
        fd, created = open_created(dirfd, name, flags, mode)
        if created:  # an existing file keeps its owner and mode
            self._own(dirfd, name, fd, cred)
            os.chmod(fd, mode)  # after chown, which clears set-id bits; and without umask
        return fd

    def mkdir(self, dirfd: int, name: str, mode: int, cred: Credentials) -> None:
        os.mkdir(name, mode, dir_fd=dirfd)
        self._own(dirfd, name, None, cred)
        chmod_entry(dirfd, name, None, mode)

    def mknod(self, dirfd: int, name: str, mode: int, rdev: int, cred: Credentials) -> None:
        os.mknod(name, mode, rdev, dir_fd=dirfd)
        self._own(dirfd, name, None, cred)
        chmod_entry(dirfd, name, None, mode & 0o7777)

    def symlink(self, dirfd: int, name: str, target: str, cred: Credentials) -> None:
        os.symlink(target, name, dir_fd=dirfd)
        self._own(dirfd, name, None, cred)

    def chmod(self, dirfd: int, name: str, fd: int | None, mode: int) -> None:
        chmod_entry(dirfd, name, fd, mode)

    def chown(self, dirfd: int, name: str, fd: int | None, uid: int, gid: int) -> None:
        _chown_entry(dirfd, name, fd, uid, gid)


class NoneModel(PassthroughModel):
    """Passthrough for a server that may run unprivileged: a new entry is
    chowned to the caller as in passthrough, but when that fails it quietly
    keeps the server's owner (QEMU's ``local_set_cred_passthrough``), and a
    refused chown is ignored.  Run as root, it behaves like passthrough."""

    name = "none"
    # New files keep the server's owner; chown still works where the server may.
    capabilities = frozenset({syscalls.CAP_CHOWN, syscalls.CAP_DAC_OVERRIDE, syscalls.CAP_FOWNER,
                              syscalls.CAP_FSETID, syscalls.CAP_MKNOD})

    def _own(self, dirfd: int, name: str, fd: int | None, cred: Credentials) -> None:
        try:
            _chown_entry(dirfd, name, fd, cred.uid, cred.gid)
        except OSError:
            pass  # EPERM unprivileged, EINVAL for an id the user namespace lacks

    def chown(self, dirfd: int, name: str, fd: int | None, uid: int, gid: int) -> None:
        try:
            _chown_entry(dirfd, name, fd, uid, gid)
        except PermissionError:
            pass


def make_model(name: str, fmode: int | None = None, dmode: int | None = None) -> SecurityModel:
    """The model for a ``--security-model`` value; ValueError names the option."""
    if name not in MODEL_CHOICES:
        raise ValueError(f"--security-model must be one of {', '.join(MODEL_CHOICES)}, "
                         f"not {name!r}")
    if name in ("passthrough", "none"):
        if fmode is not None or dmode is not None:
            which = "--fmode" if fmode is not None else "--dmode"
            raise ValueError(f"{which} is only valid with a mapped security model")
        return PassthroughModel() if name == "passthrough" else NoneModel()
    from .mapped import MappedFileModel, MappedXattrModel  # noqa: PLC0415

    cls = MappedFileModel if name == "mapped-file" else MappedXattrModel
    return cls(fmode=0o600 if fmode is None else fmode & 0o777,
               dmode=0o700 if dmode is None else dmode & 0o777)


__all__ = ["SecurityModel", "PassthroughModel", "NoneModel", "make_model", "MODEL_CHOICES",
           "proc_path", "open_nofollow", "open_created", "chmod_entry", "syscalls"]
