"""Enter every confinement layer, in order, once start-up is done."""

from __future__ import annotations

import argparse
import logging
import os
import time
from functools import partial

from ..backends.base import Backend
from .caps import limit_capabilities, set_nofile_limit
from .chroot import enter_chroot
from .mounts import SocketFiles, enter_namespace
from .pidns import fork_supervised
from .seccomp import build_filter, refuse_io_uring

log = logging.getLogger("ninep")


def prepare(args: argparse.Namespace) -> None:
    """Before the event loop exists: with a seccomp filter, libuv must not set
    up io_uring, whose queued operations no filter sees (it then uses epoll)."""
    if args.seccomp != "none":
        refuse_io_uring()


def capabilities_to_keep(args: argparse.Namespace, backend: Backend) -> frozenset[int]:
    """The back end's needs, adjusted by every --modcaps."""
    keep = set(backend.capabilities())
    for added, removed in args.modcaps:
        keep |= added
        keep -= removed
    return frozenset(keep)


def _wait_until_single_threaded(timeout: float = 2.0) -> int:
    """The number of threads, once start-up's helper threads (joined, maybe
    not yet gone from the kernel) have ended, or after *timeout*."""
    deadline = time.monotonic() + timeout
    while (threads := len(os.listdir("/proc/self/task"))) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return threads


def confine(args: argparse.Namespace, backend: Backend, socket_paths: list[str]) -> SocketFiles:
    """Apply the layers (after every socket is open, before serving): the fd
    limit, the sandbox, capabilities and no_new_privs, then the seccomp filter.

    Capabilities are per thread, so this must run while the process is
    single-threaded: worker threads start later and inherit what is left.
    Returns what removes our Unix socket files at the end (their paths are
    gone from a sandboxed root).
    """
    threads = _wait_until_single_threaded()
    if threads != 1:
        log.warning("confining with %d threads running: only this one loses capabilities",
                    threads)
    sockets = SocketFiles(socket_paths)
    try:
        if args.rlimit_nofile is not None:
            set_nofile_limit(args.rlimit_nofile)
        # Built now: libseccomp is a library the sandbox's root does not hold.
        syscall_filter = build_filter(args.seccomp) if args.seccomp != "none" else None
        if args.sandbox == "namespace":
            enter_namespace(args.export, fork=partial(fork_supervised, args.seccomp)
                            if args.pid_namespace else None)
        elif args.sandbox == "chroot":
            enter_chroot(args.export)
        bounding_left = limit_capabilities(capabilities_to_keep(args, backend))
        if syscall_filter is not None:
            syscall_filter.load()
    except BaseException:
        sockets.remove()
        raise
    if bounding_left and os.geteuid() == 0:
        log.warning("could not empty the capability bounding set (no CAP_SETPCAP)")
    return sockets


__all__ = ["capabilities_to_keep", "confine", "prepare"]
