"""--seccomp kill|log|none: an allow-list of the system calls serving needs.

Built with libseccomp (PyPI's ``pyseccomp``) and loaded last, once every
socket, the export and the sandbox are in place: from then on the server
only reads and writes fds it holds, manages files under the export, runs
its event loop and worker threads.  It cannot open a network socket, bind,
listen, mount, ptrace, load modules, execute a program or make a new
process.  ``kill`` ends the whole process on any other call (SIGSYS; the
kernel's audit log names the call: ``type=1326 ... syscall=N``); ``log``
allows it but logs it there, which is how the list was derived: the test
suites that spawn the server ran under ``log`` and every call they logged
was reviewed and added.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from typing import Any

SECCOMP_CHOICES = ("kill", "log", "none")

#: Allowed with any arguments.
ALLOWED = (
    # fds and I/O (the hot path: preadv/pwritev into guest memory)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2",
    "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl", "pipe", "pipe2",
    "sendfile", "copy_file_range", "splice", "fsync", "fdatasync", "sync_file_range", "syncfs",
    "fallocate", "ftruncate", "truncate", "flock",
    # files under the export (all *at relative to held directory fds)
    "open", "openat", "openat2", "creat", "stat", "lstat", "fstat", "newfstatat", "statx",
    "statfs", "fstatfs", "access", "faccessat", "faccessat2", "getdents", "getdents64",
    "mkdir", "mkdirat", "mknod", "mknodat", "unlink", "unlinkat", "rmdir", "rename", "renameat",
    "renameat2", "link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat", "chmod",
    "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime", "utimes",
    "futimesat", "utimensat", "umask", "chdir", "fchdir", "getcwd",
    "setxattr", "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    "name_to_handle_at", "open_by_handle_at", "setfsuid", "setfsgid",
    # sockets already open: accept, send and receive (fds of guest memory
    # and eventfds arrive with SCM_RIGHTS)
    "accept", "accept4", "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg",
    "shutdown", "getsockname", "getpeername", "getsockopt", "setsockopt", "socketpair",
    "connect",
    # the event loop
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "poll", "ppoll", "select", "pselect6", "eventfd", "eventfd2", "memfd_create",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd4",
    # memory (guest memory is mmapped from fds QEMU passes)
    "mmap", "munmap", "mremap", "mprotect", "madvise", "brk", "mincore",
    # threads, signals, time
    "futex", "futex_waitv", "set_robust_list", "get_robust_list", "rseq", "set_tid_address",
    "sched_yield", "sched_getaffinity", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "rt_sigtimedwait", "sigaltstack", "restart_syscall", "tgkill", "tkill", "kill",
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
    "getrandom", "exit", "exit_group", "wait4", "waitid",
    # identity and limits (read-only)
    "getpid", "gettid", "getppid", "getpgrp", "getuid", "geteuid", "getgid", "getegid",
    "getresuid", "getresgid", "getgroups", "capget", "uname", "sysinfo", "getrlimit",
    "prlimit64", "getrusage", "times", "arch_prctl", "getpriority",
)

PR_SET_NAME = 15
PR_GET_NAME = 16
TIOCSTI = 0x5412
CLONE_THREAD = 0x10000


def allow_list_filter(mode: str, names: Iterable[str]) -> Any:
    """A filter allowing the calls *names* (those this architecture has) and,
    for anything else, *mode*: ``kill`` the process or ``log`` it.  Not yet
    loaded (``.load()``)."""
    import pyseccomp as sc  # libseccomp is loaded here, before the sandbox hides it

    f = sc.SyscallFilter(sc.KILL_PROCESS if mode == "kill" else sc.LOG)
    for name in names:
        number = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if number != -1:  # not a call this architecture has
            f.add_rule(sc.ALLOW, number)
    return f


def build_filter(mode: str) -> Any:
    """The server's filter for *mode* (``kill`` or ``log``), not yet loaded (``.load()``)."""
    import pyseccomp as sc

    f = allow_list_filter(mode, ALLOWED)
    # New sockets: Unix ones only (the proxy back end's helper connections).
    f.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, socket.AF_UNIX))
    # Threads, not processes: clone only with CLONE_THREAD; glibc falls back
    # to clone when clone3 (whose flags a filter cannot see) says ENOSYS.
    f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # Thread names; nothing else of prctl.
    f.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, PR_SET_NAME))
    f.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, PR_GET_NAME))
    # ioctl: the file ioctls the back ends use, but never faking terminal input.
    f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.NE, TIOCSTI))
    f.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread, should one exist already
    try:
        f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # a binary tree: the hot calls pay a few compares
    except OSError:
        pass  # libseccomp < 2.5: a linear list
    return f


def refuse_io_uring() -> None:
    """Before the event loop exists: io_uring_setup fails with ENOSYS from now on.

    libuv sets up an io_uring when its loop starts, and the operations queued
    on a ring are done by the kernel with no filter looking.  Refused, libuv
    uses plain epoll calls, which the allow-list does see.  (This small
    filter stays under the full one; it also sets no_new_privs, which an
    unprivileged process needs to load any filter.)
    """
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    f.add_rule(sc.ERRNO(errno.ENOSYS), "io_uring_setup")
    f.load()


__all__ = ["ALLOWED", "SECCOMP_CHOICES", "allow_list_filter", "build_filter", "refuse_io_uring"]
