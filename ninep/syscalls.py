"""ctypes bindings for the few Linux syscalls the standard library lacks.

This is the one module that uses ctypes: the back ends, the proxy back end
and the proxy helper all import their raw syscalls from here.

Everything here raises ``OSError`` with the kernel's errno, exactly like the
``os`` module, so callers never see ctypes details.  x86-64 and aarch64 only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
import threading

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_MACHINE = platform.machine()
_NR = {
    "x86_64": {"openat2": 437, "renameat2": 316, "getdents64": 217, "capget": 125, "capset": 126,
               "pivot_root": 155},
    "aarch64": {"openat2": 437, "renameat2": 276, "getdents64": 61, "capget": 90, "capset": 91,
                "pivot_root": 41},
}.get(_MACHINE, {})

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _nr(name: str) -> int:
    try:
        return _NR[name]
    except KeyError:
        raise OSError(errno.ENOSYS, f"{name} is not bound on {_MACHINE}") from None


# --- openat2 -----------------------------------------------------------------

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

#: The resolution that confines a guest-supplied relative path to a directory.
RESOLVE_CONFINED = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str | bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open *path* below *dirfd* with RESOLVE_* restrictions."""
    creates = flags & (os.O_CREAT | getattr(os, "O_TMPFILE", 0))
    how = _OpenHow(flags, mode if creates else 0, resolve)
    raw = os.fsencode(path)
    return _check(_syscall(_nr("openat2"), ctypes.c_int(dirfd), ctypes.c_char_p(raw),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))


def have_openat2() -> bool:
    """True when the running kernel implements openat2 (Linux >= 5.6)."""
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        os.close(openat2(root, ".", os.O_PATH | os.O_CLOEXEC, 0, RESOLVE_CONFINED))
    except OSError:
        return False
    finally:
        os.close(root)
    return True


# --- renameat2 ---------------------------------------------------------------

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4


def renameat2(olddirfd: int, old: str | bytes, newdirfd: int, new: str | bytes,
              flags: int = 0) -> None:
    _check(_syscall(_nr("renameat2"),
                    ctypes.c_int(olddirfd), ctypes.c_char_p(os.fsencode(old)),
                    ctypes.c_int(newdirfd), ctypes.c_char_p(os.fsencode(new)),
                    ctypes.c_uint(flags)))


# --- getdents64 ----------------------------------------------------------------

_DIRENT_HEAD = struct.Struct("<QqHB")  # d_ino, d_off, d_reclen, d_type


_dirent_buffers = threading.local()


def getdents64(fd: int, bufsize: int = 32768) -> list[tuple[int, int, int, bytes]]:
    """One getdents64(2) call: ``[(ino, d_off, d_type, name), …]``; empty at end.

    ``d_off`` is the file system's own cookie for the position *after* the
    entry, which is what 9P's Treaddir offsets must be to stay stable.  Each
    thread reuses one buffer (a large listing calls this with up to 1 MiB).
    """
    buf = getattr(_dirent_buffers, "buf", None)
    if buf is None or len(buf) < bufsize:
        buf = _dirent_buffers.buf = bytearray(bufsize)
    cbuf = (ctypes.c_char * bufsize).from_buffer(buf)
    try:
        n = _check(_syscall(_nr("getdents64"), ctypes.c_int(fd), cbuf, ctypes.c_uint(bufsize)))
    finally:
        del cbuf  # release the export of buf, so the next call may resize it
    raw = bytes(memoryview(buf)[:n])
    out = []
    pos = 0
    unpack, find = _DIRENT_HEAD.unpack_from, raw.find
    while pos < n:
        ino, off, reclen, dtype = unpack(raw, pos)
        out.append((ino, off, dtype, raw[pos + 19:find(b"\0", pos + 19, pos + reclen)]))
        pos += reclen
    return out


# --- fsuid / fsgid ---------------------------------------------------------------

def setfsuid(uid: int) -> int:
    """setfsuid(2); returns the previous fsuid (the call cannot report errors)."""
    return _libc.setfsuid(ctypes.c_uint(uid))


def setfsgid(gid: int) -> int:
    return _libc.setfsgid(ctypes.c_uint(gid))


# --- capabilities ----------------------------------------------------------------

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_CHROOT = 18
CAP_MKNOD = 27


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread as 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_syscall(_nr("capget"), ctypes.byref(hdr), data))
    join = lambda a, b: a | (b << 32)  # noqa: E731
    return (join(data[0].effective, data[1].effective),
            join(data[0].permitted, data[1].permitted),
            join(data[0].inheritable, data[1].inheritable))


def capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    """Set the calling thread's capability sets (masks of 1 << CAP_*)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_syscall(_nr("capset"), ctypes.byref(hdr), data))


# --- file handles ----------------------------------------------------------------

MAX_HANDLE_SZ = 128
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_FOLLOW = 0x400


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


def name_to_handle_at(dirfd: int, path: str | bytes, flags: int = 0) -> tuple[int, bytes, int]:
    """name_to_handle_at(2): ``(handle_type, handle_bytes, mount_id)``."""
    fh = _FileHandle(MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int(0)
    _check(_libc.name_to_handle_at(ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                                   ctypes.byref(fh), ctypes.byref(mount_id), ctypes.c_int(flags)))
    return fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes]), mount_id.value


def open_by_handle_at(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at(2); needs CAP_DAC_READ_SEARCH."""
    if len(handle) > MAX_HANDLE_SZ:
        raise OSError(errno.EINVAL, "file handle too long")
    fh = _FileHandle(len(handle), handle_type)
    ctypes.memmove(fh.f_handle, handle, len(handle))
    return _check(_libc.open_by_handle_at(ctypes.c_int(mount_fd), ctypes.byref(fh),
                                          ctypes.c_int(flags)))


# --- utimensat --------------------------------------------------------------------

AT_SYMLINK_NOFOLLOW = 0x100


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(dirfd: int, path: str | bytes | None, atime: tuple[int, int],
              mtime: tuple[int, int], flags: int = 0) -> None:
    """utimensat(2) with (sec, nsec) pairs; nsec may be UTIME_NOW or UTIME_OMIT.

    With *path* None it acts on *dirfd* itself (futimens).
    """
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if path is None:
        _check(_libc.futimens(ctypes.c_int(dirfd), times))
        return
    _check(_libc.utimensat(ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)), times,
                           ctypes.c_int(flags)))


# --- prctl ------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5))


def cap_last_cap() -> int:
    """Highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        # Probe the bounding set: PR_CAPBSET_READ fails with EINVAL past the end.
        cap = 0
        while True:
            try:
                prctl(PR_CAPBSET_READ, cap + 1)
            except OSError:
                return cap
            cap += 1


# --- unshare ----------------------------------------------------------------------

CLONE_FS = 0x00000200

_unshare = _libc.unshare
_unshare.restype = ctypes.c_int
_unshare.argtypes = [ctypes.c_int]


def unshare(flags: int) -> None:
    _check(_unshare(flags))


# --- mounts -----------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

_mount = _libc.mount
_mount.restype = ctypes.c_int
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]
_umount2 = _libc.umount2
_umount2.restype = ctypes.c_int
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_mount(enc(source), enc(target), enc(fstype), flags, enc(data)))


def umount2(target: str, flags: int) -> None:
    _check(_umount2(os.fsencode(target), flags))


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(_nr("pivot_root"), os.fsencode(new_root), os.fsencode(put_old)))


# --- fstatfs ----------------------------------------------------------------------

class _StatFS(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_uint64),
        ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64),
        ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


_fstatfs = _libc.fstatfs
_fstatfs.restype = ctypes.c_int
_fstatfs.argtypes = [ctypes.c_int, ctypes.POINTER(_StatFS)]

_U64 = (1 << 64) - 1


def fstatfs(fd: int) -> tuple[int, ...]:
    """fstatfs(2) as QEMU's helper widens it to u64s: (type, bsize, blocks,
    bfree, bavail, files, ffree, fsid0, fsid1, namelen, frsize)."""
    buf = _StatFS()
    _check(_fstatfs(fd, ctypes.byref(buf)))
    return tuple(v & _U64 for v in (
        buf.f_type, buf.f_bsize, buf.f_blocks, buf.f_bfree, buf.f_bavail, buf.f_files,
        buf.f_ffree, buf.f_fsid[0], buf.f_fsid[1], buf.f_namelen, buf.f_frsize))


# --- size-taking xattr calls ------------------------------------------------------

_lgetxattr = _libc.lgetxattr
_lgetxattr.restype = ctypes.c_ssize_t
_lgetxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_llistxattr = _libc.llistxattr
_llistxattr.restype = ctypes.c_ssize_t
_llistxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]

#: The kernel never returns more than this from one getxattr/listxattr.
XATTR_SIZE_MAX = 65536


def _nul_free(*args: bytes) -> None:
    for a in args:
        if b"\0" in a:
            raise OSError(errno.EINVAL, "embedded NUL")


def lgetxattr(path: bytes, name: bytes, size: int) -> int | bytes:
    """lgetxattr(2): with size 0 the value's length, else the value (ERANGE if bigger)."""
    _nul_free(path, name)
    if size == 0:
        return _check(_lgetxattr(path, name, None, 0))
    size = min(size, XATTR_SIZE_MAX)
    buf = ctypes.create_string_buffer(size)
    n = _check(_lgetxattr(path, name, buf, size))
    return buf.raw[:n]


def llistxattr(path: bytes, size: int) -> int | bytes:
    """llistxattr(2): with size 0 the list's length, else the NUL-separated names."""
    _nul_free(path)
    if size == 0:
        return _check(_llistxattr(path, None, 0))
    size = min(size, XATTR_SIZE_MAX)
    buf = ctypes.create_string_buffer(size)
    n = _check(_llistxattr(path, buf, size))
    return buf.raw[:n]
