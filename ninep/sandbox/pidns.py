"""--pid-namespace: the server is pid 1 of a pid namespace of its own.

Unsharing CLONE_NEWPID only puts the caller's *children* in the new
namespace, so the server forks, as virtiofsd does: the child, pid 1 there,
goes on to serve and sees no other process (nothing to signal or ptrace,
nothing to read in /proc).  The parent becomes a supervisor that holds
nothing: it closes every fd but stdin, stdout and stderr, drops every
capability, loads a filter of the few calls it makes, forwards SIGTERM,
SIGINT and SIGHUP to the child and exits with the child's status.  The child
dies with it (PR_SET_PDEATHSIG), so it never outlives a killed supervisor.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, NoReturn

from .. import syscalls as sc
from .caps import limit_capabilities
from .seccomp import allow_list_filter

#: What the supervisor forwards; SIGHUP arrives as SIGTERM, since pid 1
#: ignores a signal it has no handler for, and the server handles SIGTERM.
FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT,
             signal.SIGHUP: signal.SIGTERM}
_WAITED = {*FORWARDED, signal.SIGCHLD}
#: The supervisor's calls: waiting for signals and the child, signalling,
#: exiting, and the interpreter's memory management.
SUPERVISOR_SYSCALLS = (
    "rt_sigtimedwait", "rt_sigprocmask", "rt_sigaction", "rt_sigreturn", "restart_syscall",
    "wait4", "waitid", "kill", "getpid", "exit", "exit_group",
    "brk", "mmap", "munmap", "mremap", "madvise", "write",
)


def fork_supervised(seccomp_mode: str) -> None:
    """Fork after ``unshare(CLONE_NEWPID)``: returns in the child only, pid 1
    of the new namespace; the parent supervises it until it exits."""
    loop = asyncio.get_running_loop()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)  # none lost before waiting
    child = os.fork()
    if child == 0:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        # asyncio ties the running loop to the pid that started it; this
        # process goes on running that loop under its new pid.
        asyncio._set_running_loop(loop)
        return
    try:
        _confine_supervisor(seccomp_mode)
        _exit_as(_wait_forwarding(child))
    except BaseException:
        os.kill(child, signal.SIGKILL)
    finally:  # never back into the server's code (it would unlink the sockets)
        os._exit(2)


def _confine_supervisor(seccomp_mode: str) -> None:
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    limit_capabilities(frozenset())
    if seccomp_mode != "none":
        supervisor_filter(seccomp_mode).load()


def supervisor_filter(mode: str) -> Any:
    """The supervisor's allow-list (``kill`` or ``log`` for anything else)."""
    return allow_list_filter(mode, SUPERVISOR_SYSCALLS)


def _wait_forwarding(child: int) -> int:
    """Forward signals to *child* until it exits; its wait status."""
    while True:
        info = signal.sigwaitinfo(_WAITED)
        if info.si_signo == signal.SIGCHLD:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid == child:
                return status
        else:
            os.kill(child, FORWARDED[signal.Signals(info.si_signo)])


def _exit_as(status: int) -> NoReturn:
    """Exit the way the child did: with its code, or killed by its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


__all__ = ["FORWARDED", "SUPERVISOR_SYSCALLS", "fork_supervised", "supervisor_filter"]
