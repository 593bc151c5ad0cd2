"""ctypes bindings the helper needs beyond ``ninep.syscalls``.

prctl, unshare, fstatfs, utimensat (with UTIME_NOW/UTIME_OMIT), and the
size-taking lgetxattr/llistxattr.  Like ``ninep.syscalls`` they raise
``OSError`` with the kernel's errno.  x86-64 and aarch64 (LP64) only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# --- prctl ------------------------------------------------------------------------

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


# --- utimensat --------------------------------------------------------------------

AT_SYMLINK_NOFOLLOW = 0x100


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_utimensat = _libc.utimensat
_utimensat.restype = ctypes.c_int
_utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]


def utimensat(dirfd: int, name: bytes, atime: tuple[int, int], mtime: tuple[int, int],
              flags: int = 0) -> None:
    """utimensat(2) with raw timespecs, so UTIME_NOW/UTIME_OMIT pass through."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _check(_utimensat(dirfd, name, times, flags))


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
            raise OSError(22, "embedded NUL")


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
