"""QEMU's mapped security models: the guest's owners and modes are stored aside.

Host files belong to the server and get ``fmode``/``dmode``; the guest's uid,
gid, mode (with the file type) and rdev live either in ``user.virtfs.*``
xattrs (mapped-xattr) or in ``.virtfs_metadata/<name>`` files (mapped-file).
Device nodes, fifos and sockets are regular host files whose type is in the
stored mode; a symlink is a regular file holding its target.  Both encodings
are QEMU's, byte for byte, so one directory can be served by QEMU's
``-fsdev local,security_model=mapped-xattr|mapped-file`` and by ninep in turn.
"""

from __future__ import annotations

import errno
import os
import re
import stat as st_
import struct
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import NamedTuple, TypeVar

from ... import syscalls
from .. import fdops
from ..base import Credentials, DirEntry, Stat, setid_bits_to_clear
from ..fdops import open_nofollow
from .secmodel import SecurityModel, open_created, proc_path

T = TypeVar("T")

#: mapped-file: per-directory folder of metadata files, and the export root's own file.
META_DIR = ".virtfs_metadata"
META_ROOT = ".virtfs_metadata_root"
#: mapped-xattr: the host xattr namespace the guest may never touch.
XATTR_PREFIX = "user.virtfs."
ACL_NAMES = frozenset({"system.posix_acl_access", "system.posix_acl_default"})

PATH_MAX = 4096
DT_UNKNOWN = 0
_U32 = 0xFFFFFFFF
#: mknod types the kernel accepts (0 means a regular file).
_MKNOD_TYPES = frozenset({st_.S_IFREG, st_.S_IFCHR, st_.S_IFBLK, st_.S_IFIFO, st_.S_IFSOCK})


class Meta(NamedTuple):
    """The guest-visible fields a mapped model stores; ``None``: not stored."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    rdev: int | None = None

    def merged_into(self, old: Meta) -> Meta:
        """*old* with this one's set fields written over it."""
        return Meta(*(old_v if new_v is None else new_v
                      for new_v, old_v in zip(self, old, strict=True)))

    def over(self, st: os.stat_result) -> Stat:
        """The host stat with the stored fields in place of the host's."""
        out = Stat.from_os(st)
        if self.uid is not None:
            out.uid = self.uid
        if self.gid is not None:
            out.gid = self.gid
        if self.mode is not None:
            out.mode = self.mode
        if self.rdev is not None:
            out.rdev = self.rdev
        return out


def _id_or_none(value: int) -> int | None:
    """QEMU's "leave alone" value (-1 in any width) as None."""
    return None if value in (-1, _U32) else value


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class MappedModel(SecurityModel):
    """What both mapped models share; subclasses say where metadata lives.

    Storage is reached by entry (*dirfd*, *name*) and by *fd*, an fd of that
    very file (the guest's open fd or an O_PATH pin): mapped-xattr keys by
    inode and uses *fd*; mapped-file keys by name and uses (*dirfd*, *name*).
    """

    # Owners and devices live in metadata: host files are the server's own,
    # but the export's existing files (any owner) must stay reachable.
    capabilities = frozenset({syscalls.CAP_DAC_OVERRIDE, syscalls.CAP_FOWNER})

    def __init__(self, fmode: int = 0o600, dmode: int = 0o700) -> None:
        self.fmode = fmode & 0o777
        self.dmode = dmode & 0o777

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fmode={self.fmode:#o}, dmode={self.dmode:#o})"

    # -- where metadata lives (per model) ------------------------------------------
    @abstractmethod
    def load(self, dirfd: int, name: str, fd: int) -> Meta:
        """The stored metadata; missing or unreadable fields are None."""

    @abstractmethod
    def save(self, dirfd: int, name: str, fd: int, meta: Meta, fresh: bool) -> None:
        """Store the set fields of *meta*; *fresh*: a new entry, drop stale data."""

    # -- reading ------------------------------------------------------------------
    @contextmanager
    def _pinned(self, dirfd: int, name: str, fd: int | None) -> Iterator[int]:
        """*fd* if the guest has the file open, else an O_PATH pin of the entry."""
        if fd is not None:
            yield fd
            return
        pfd = open_nofollow(dirfd, name)
        try:
            yield pfd
        finally:
            os.close(pfd)

    def stat(self, dirfd: int, name: str) -> Stat:
        with self._pinned(dirfd, name, None) as pfd:
            return self.load(dirfd, name, pfd).over(os.fstat(pfd))

    def visible_dirents(self, entries: list[DirEntry]) -> list[DirEntry]:
        """The host's d_type says nothing of mapped types: DT_UNKNOWN lets the guest stat."""
        return [e._replace(type=DT_UNKNOWN) for e in super().visible_dirents(entries)]

    def readlink(self, dirfd: int, name: str) -> str:
        with self._pinned(dirfd, name, None) as pfd:
            host = os.fstat(pfd)
            if not st_.S_ISLNK(self.load(dirfd, name, pfd).over(host).mode):
                raise OSError(errno.EINVAL, "not a symlink")
            if st_.S_ISLNK(host.st_mode):  # a real one, made on the host
                return fdops.readlink_pinned(pfd)
            if not st_.S_ISREG(host.st_mode):
                raise OSError(errno.EINVAL, "not a symlink")
            fd = os.open(proc_path(pfd), os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.fsdecode(os.pread(fd, PATH_MAX, 0))
            finally:
                os.close(fd)

    # -- creating -----------------------------------------------------------------
    @contextmanager
    def _undone_on_error(self, dirfd: int, name: str, is_dir: bool) -> Iterator[None]:
        """Remove the entry just created (and its metadata) if the block fails."""
        try:
            yield
        except OSError:
            with suppress(OSError):
                self.unlink(dirfd, name, is_dir)
            raise

    def _new_regular(self, dirfd: int, name: str, meta: Meta, content: bytes = b"") -> None:
        """A host regular file standing for a special file or a symlink."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self.fmode, dir_fd=dirfd)
        try:
            with self._undone_on_error(dirfd, name, is_dir=False):
                os.fchmod(fd, self.fmode)  # exactly fmode, whatever the umask
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view):]
                self.save(dirfd, name, fd, meta, fresh=True)
        finally:
            os.close(fd)

    def create_file(self, dirfd: int, name: str, flags: int, mode: int, cred: Credentials) -> int:
        fd, created = open_created(dirfd, name, flags, self.fmode)
        if created:
            meta = Meta(_id_or_none(cred.uid), _id_or_none(cred.gid), st_.S_IFREG | mode & 0o7777)
            try:
                with self._undone_on_error(dirfd, name, is_dir=False):
                    os.fchmod(fd, self.fmode)
                    self.save(dirfd, name, fd, meta, fresh=True)
            except OSError:
                os.close(fd)
                raise
        return fd

    def mkdir(self, dirfd: int, name: str, mode: int, cred: Credentials) -> None:
        os.mkdir(name, self.dmode, dir_fd=dirfd)
        meta = Meta(_id_or_none(cred.uid), _id_or_none(cred.gid), st_.S_IFDIR | mode & 0o7777)
        with self._undone_on_error(dirfd, name, is_dir=True), \
                self._pinned(dirfd, name, None) as pfd:
            os.chmod(proc_path(pfd), self.dmode)  # exactly dmode, whatever the umask
            self.save(dirfd, name, pfd, meta, fresh=True)

    def mknod(self, dirfd: int, name: str, mode: int, rdev: int, cred: Credentials) -> None:
        ftype = st_.S_IFMT(mode) or st_.S_IFREG
        if ftype == st_.S_IFDIR:
            raise OSError(errno.EPERM, "mknod cannot make a directory")
        if ftype not in _MKNOD_TYPES:
            raise OSError(errno.EINVAL, "bad file type for mknod")
        self._new_regular(dirfd, name, Meta(_id_or_none(cred.uid), _id_or_none(cred.gid),
                                            ftype | mode & 0o7777, rdev))

    def symlink(self, dirfd: int, name: str, target: str, cred: Credentials) -> None:
        self._new_regular(dirfd, name, Meta(_id_or_none(cred.uid), _id_or_none(cred.gid),
                                            st_.S_IFLNK | 0o777), os.fsencode(target))

    # -- changing -----------------------------------------------------------------
    def chmod(self, dirfd: int, name: str, fd: int | None, mode: int) -> None:
        """New permission bits; the file type stays what the guest sees now."""
        with self._pinned(dirfd, name, fd) as pfd:
            current = self.load(dirfd, name, pfd).over(os.fstat(pfd)).mode
            self.save(dirfd, name, pfd, Meta(mode=st_.S_IFMT(current) | mode & 0o7777),
                      fresh=False)

    def chown(self, dirfd: int, name: str, fd: int | None, uid: int, gid: int) -> None:
        meta = Meta(_id_or_none(uid), _id_or_none(gid))
        if meta.uid is None and meta.gid is None:  # nothing to store: only touch ctime
            if fd is not None:
                os.chown(fd, -1, -1)
            else:
                os.chown(name, -1, -1, dir_fd=dirfd, follow_symlinks=False)
            return
        with self._pinned(dirfd, name, fd) as pfd:
            self.save(dirfd, name, pfd, meta, fresh=False)


# --- mapped-xattr -------------------------------------------------------------------------

#: (field, host xattr, encoding): QEMU writes cpu_to_le32/le64 values of sizeof(uid_t),
#: sizeof(gid_t), sizeof(mode_t) (4 bytes each) and sizeof(dev_t) (8 bytes).
_XATTR_FIELDS = (
    ("uid", XATTR_PREFIX + "uid", struct.Struct("<I")),
    ("gid", XATTR_PREFIX + "gid", struct.Struct("<I")),
    ("mode", XATTR_PREFIX + "mode", struct.Struct("<I")),
    ("rdev", XATTR_PREFIX + "rdev", struct.Struct("<Q")),
)
_, _MODE_XATTR, _MODE_FORMAT = _XATTR_FIELDS[2]


class MappedXattrModel(MappedModel):
    """QEMU's mapped-xattr: metadata in ``user.virtfs.*`` xattrs of the file."""

    name = "mapped-xattr"

    def load(self, dirfd: int, name: str, fd: int) -> Meta:
        return self._load_fd(fd)

    @staticmethod
    def _load_fd(fd: int) -> Meta:
        path = proc_path(fd)
        values: dict[str, int] = {}
        for field, key, enc in _XATTR_FIELDS:
            try:
                raw = os.getxattr(path, key)
            except OSError:
                continue  # absent or unreadable: the host value stands (as in QEMU)
            if len(raw) == enc.size:
                values[field] = enc.unpack(raw)[0]
        return Meta(**values)

    def save(self, dirfd: int, name: str, fd: int, meta: Meta, fresh: bool) -> None:
        path = proc_path(fd)
        for (_, key, enc), value in zip(_XATTR_FIELDS, meta, strict=True):
            if value is not None:
                os.setxattr(path, key, enc.pack(value & ((1 << 8 * enc.size) - 1)))

    def fstat(self, fd: int) -> Stat:
        return self._load_fd(fd).over(os.fstat(fd))

    def may_have_setid(self, fd: int) -> bool:
        """One xattr, the stored mode, instead of all four."""
        try:
            raw = os.getxattr(proc_path(fd), _MODE_XATTR)
        except OSError:
            return True  # none stored: the host mode stands, so look closer
        return (len(raw) != _MODE_FORMAT.size
                or bool(setid_bits_to_clear(_MODE_FORMAT.unpack(raw)[0])))

    # -- the guest's xattrs ---------------------------------------------------------
    @staticmethod
    def _host_name(name: str, refuse: int) -> str:
        """Where guest xattr *name* lives; *refuse*: errno for user.virtfs.*."""
        if name.startswith(XATTR_PREFIX):
            raise OSError(refuse, "reserved xattr name")
        if name in ACL_NAMES:
            return XATTR_PREFIX + name
        if name.startswith("user."):
            return name
        raise OSError(errno.EOPNOTSUPP, "xattr namespace not supported")

    def xattr_host_name(self, name: str) -> str:
        return self._host_name(name, errno.EACCES)

    def xattr_get(self, fd: int, name: str) -> bytes:
        return os.getxattr(proc_path(fd), self._host_name(name, errno.ENODATA))

    def xattr_guest_names(self, names: list[str]) -> list[str]:
        out = []
        for host in names:
            if host.startswith(XATTR_PREFIX):
                if host[len(XATTR_PREFIX):] in ACL_NAMES:
                    out.append(host[len(XATTR_PREFIX):])
            elif host.startswith("user."):
                out.append(host)
        return out

    def xattr_remove(self, fd: int, name: str) -> None:
        try:
            super().xattr_remove(fd, name)
        except OSError as exc:
            if not (exc.errno == errno.ENODATA and name in ACL_NAMES):
                raise  # removing an absent ACL succeeds, as on a real file system


# --- mapped-file --------------------------------------------------------------------------

#: (field, key) in QEMU's "virtfs.<key>=<C int>\n" lines, in the order QEMU writes them.
_FILE_KEYS = (("uid", b"virtfs.uid"), ("gid", b"virtfs.gid"), ("mode", b"virtfs.mode"),
              ("rdev", b"virtfs.rdev"))
_ATOI = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _c_int(value: int) -> int:
    """*value* as QEMU's ``fprintf("%d", (int)value)`` prints it."""
    return ((value & _U32) ^ 0x80000000) - 0x80000000


def parse_metadata(data: bytes) -> Meta:
    """A ``.virtfs_metadata`` file as QEMU reads it (prefix match, atoi after '=')."""
    values: dict[str, int] = {}
    for line in data.split(b"\n"):
        for field, key in _FILE_KEYS:
            if line.startswith(key):
                m = _ATOI.match(line, len(key) + 1)
                values[field] = (int(m.group(1)) if m else 0) & _U32
                break
    return Meta(**values)


def format_metadata(meta: Meta) -> bytes:
    return b"".join(b"%s=%d\n" % (key, _c_int(value))
                    for (_, key), value in zip(_FILE_KEYS, meta, strict=True) if value is not None)


class MappedFileModel(MappedModel):
    """QEMU's mapped-file: metadata in ``.virtfs_metadata/<name>`` beside the
    file (``.virtfs_metadata_root`` for the export root).  Those names are
    hidden from the guest everywhere (CVE-2017-7493)."""

    name = "mapped-file"
    hidden_names = frozenset({META_DIR, META_ROOT})

    def __init__(self, fmode: int = 0o600, dmode: int = 0o700) -> None:
        super().__init__(fmode, dmode)
        self._write_lock = threading.Lock()  # read-modify-write of metadata files

    # -- the metadata file of an entry ------------------------------------------------
    @staticmethod
    def _meta_dir(dirfd: int, create: bool) -> int | None:
        """An O_PATH fd of *dirfd*'s metadata directory (None: there is none)."""
        if create:
            with suppress(FileExistsError):
                os.mkdir(META_DIR, 0o700, dir_fd=dirfd)
        try:
            return os.open(META_DIR, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=dirfd)
        except FileNotFoundError:
            if create:
                raise
            return None

    def _in_meta(self, dirfd: int, name: str, create: bool, fn: Callable[[int, str], T]) -> T:
        """``fn(dir_fd, file_name)`` for the metadata file of entry *name*;
        FileNotFoundError when there is no metadata directory (and not *create*)."""
        if name == ".":
            return fn(dirfd, META_ROOT)
        mdir = self._meta_dir(dirfd, create)
        if mdir is None:
            raise FileNotFoundError(errno.ENOENT, "no metadata directory")
        try:
            return fn(mdir, name)
        finally:
            os.close(mdir)

    @staticmethod
    def _read_file(mdir: int, mname: str) -> Meta:
        fd = os.open(mname, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=mdir)
        try:
            return parse_metadata(os.pread(fd, 65536, 0))
        finally:
            os.close(fd)

    @staticmethod
    def _write_file(mdir: int, mname: str, meta: Meta) -> None:
        # In place (O_TRUNC), never by rename: hard-linked files share one metadata inode.
        fd = os.open(mname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=mdir)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, format_metadata(meta))
        finally:
            os.close(fd)

    def load(self, dirfd: int, name: str, fd: int) -> Meta:
        try:
            return self._in_meta(dirfd, name, False, self._read_file)
        except OSError:
            return Meta()  # no (readable) metadata: the host values stand, as in QEMU

    def save(self, dirfd: int, name: str, fd: int, meta: Meta, fresh: bool) -> None:
        def update(mdir: int, mname: str) -> None:
            new = meta
            if not fresh:
                with suppress(FileNotFoundError):
                    new = meta.merged_into(self._read_file(mdir, mname))
            self._write_file(mdir, mname, new)

        with self._write_lock:
            self._in_meta(dirfd, name, True, update)
        if not fresh:
            with suppress(OSError):  # best effort: the change is stored either way
                os.chown(proc_path(fd), -1, -1)  # so that it shows in ctime

    @contextmanager
    def _pinned(self, dirfd: int, name: str, fd: int | None) -> Iterator[int]:
        """As the base, and an open *fd* must still be the file at (dirfd, name):
        metadata is found by name, so an unlinked file has none to change."""
        if fd is not None and not _same_inode(
                os.fstat(fd), os.stat(name, dir_fd=dirfd, follow_symlinks=False)):
            raise OSError(errno.ENOENT, "the open file has no name any more")
        with super()._pinned(dirfd, name, fd) as pfd:
            yield pfd

    def stat(self, dirfd: int, name: str) -> Stat:
        with self._pinned(dirfd, name, None) as pfd:
            return _without_meta_link(pfd, self.load(dirfd, name, pfd).over(os.fstat(pfd)))

    def fstat(self, fd: int) -> Stat:
        # no name, no metadata: QEMU's partial result
        return _without_meta_link(fd, Stat.from_os(os.fstat(fd)))

    def fstat_open(self, fd: int, at: Callable[[Callable[[int, str], Stat]], Stat]) -> Stat:
        """By name if that name is still this file (QEMU falls back to lstat), else
        the host's own attributes (QEMU's partial fstat of an unlinked file)."""
        host = os.fstat(fd)

        def by_name(dirfd: int, name: str) -> Stat:
            if not _same_inode(host, os.stat(name, dir_fd=dirfd, follow_symlinks=False)):
                raise FileNotFoundError(errno.ENOENT, "renamed or unlinked")
            return self.load(dirfd, name, fd).over(host)
        try:
            return _without_meta_link(fd, at(by_name))
        except OSError:
            return self.fstat(fd)

    # -- keeping metadata in step with the namespace ----------------------------------
    def _drop(self, dirfd: int, name: str) -> None:
        """Best effort: the entry is gone already, whether or not this works."""
        with suppress(OSError):
            self._in_meta(dirfd, name, False, lambda mdir, mname: os.unlink(mname, dir_fd=mdir))

    def _carry(self, olddirfd: int, oldname: str, newdirfd: int, newname: str,
               link: bool) -> None:
        """Give *newname* the metadata of *oldname* by rename or hard link;
        if *oldname* has none, *newname* must not keep a stale one either."""
        src = self._meta_dir(olddirfd, create=False)
        if src is None:
            self._drop(newdirfd, newname)
            return
        try:
            dst = self._meta_dir(newdirfd, create=True)
            assert dst is not None
            try:
                if link:
                    with suppress(FileNotFoundError):
                        os.unlink(newname, dir_fd=dst)
                try:
                    if link:
                        os.link(oldname, newname, src_dir_fd=src, dst_dir_fd=dst)
                    else:
                        os.rename(oldname, newname, src_dir_fd=src, dst_dir_fd=dst)
                except FileNotFoundError:  # the old name had no metadata
                    with suppress(FileNotFoundError):
                        os.unlink(newname, dir_fd=dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def on_rename(self, olddirfd: int, oldname: str, newdirfd: int, newname: str) -> None:
        try:
            self._carry(olddirfd, oldname, newdirfd, newname, link=False)
        except OSError:
            with suppress(OSError):  # undo, as QEMU does
                os.rename(newname, oldname, src_dir_fd=newdirfd, dst_dir_fd=olddirfd)
            raise

    def on_link(self, olddirfd: int, oldname: str, newdirfd: int, newname: str) -> None:
        try:
            self._carry(olddirfd, oldname, newdirfd, newname, link=True)
        except OSError:
            with suppress(OSError):
                os.unlink(newname, dir_fd=newdirfd)
            raise

    def on_unlink(self, dirfd: int, name: str, is_dir: bool) -> None:
        self._drop(dirfd, name)

    def unlink(self, dirfd: int, name: str, is_dir: bool) -> None:
        if is_dir:
            self._clear_side_data(dirfd, name)
        super().unlink(dirfd, name, is_dir)

    def _clear_side_data(self, dirfd: int, name: str) -> None:
        """Before rmdir: a directory the guest sees empty may still hold its
        children's (now orphaned) metadata; remove it so rmdir can succeed."""
        try:
            cfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=dirfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ENOTDIR, "not a directory") from None
            raise
        try:
            with os.scandir(cfd) as entries:
                present = set()
                for entry in entries:
                    if not self.is_hidden(entry.name):
                        raise OSError(errno.ENOTEMPTY, "directory not empty")
                    present.add(entry.name)
            if META_DIR in present:
                mfd = os.open(META_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=cfd)
                try:
                    for orphan in os.listdir(mfd):
                        os.unlink(orphan, dir_fd=mfd)
                finally:
                    os.close(mfd)
                os.rmdir(META_DIR, dir_fd=cfd)
            if META_ROOT in present:
                os.unlink(META_ROOT, dir_fd=cfd)
        finally:
            os.close(cfd)

    # -- the guest's xattrs: QEMU's passthrough_xattr_ops -----------------------------
    def xattr_host_name(self, name: str) -> str:
        if name.startswith("user.") or name.startswith("system.posix_acl_"):
            return name
        raise OSError(errno.EOPNOTSUPP, "xattr namespace not supported")

    def xattr_guest_names(self, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith("user.") or n.startswith("system.posix_acl_")]

    def xattr_set(self, fd: int, name: str, value: bytes, flags: int) -> None:
        self._refuse_mapped_xattr_names(name)
        super().xattr_set(fd, name, value, flags)

    def xattr_remove(self, fd: int, name: str) -> None:
        self._refuse_mapped_xattr_names(name)
        super().xattr_remove(fd, name)

    @staticmethod
    def _refuse_mapped_xattr_names(name: str) -> None:
        """Writing user.virtfs.* here would forge owners for a later mapped-xattr server."""
        if name.startswith(XATTR_PREFIX):
            raise OSError(errno.EACCES, "reserved xattr name")


def _without_meta_link(dirfd: int, st: Stat) -> Stat:
    """A directory's link count as the guest sees it: the hidden metadata
    directory inside it is not one of its subdirectories (QEMU counts it)."""
    if st_.S_ISDIR(st.mode) and st.nlink > 2:
        try:
            os.stat(META_DIR, dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            return st
        st.nlink -= 1
    return st


__all__ = ["MappedModel", "MappedXattrModel", "MappedFileModel", "Meta", "META_DIR", "META_ROOT",
           "XATTR_PREFIX", "parse_metadata", "format_metadata"]
