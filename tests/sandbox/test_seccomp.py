"""--seccomp: the server's own allow-list, in the running server and in a forked child."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.sandbox.seccomp import build_filter

from .conftest import StartServer

_libc = ctypes.CDLL(None, use_errno=True)


def _inet_socket() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def _ptrace() -> None:
    _libc.ptrace(0, 0, 0, 0)  # PTRACE_TRACEME


def _mount() -> None:
    _libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)


def _allowed_work() -> None:
    """What serving does: files, a Unix socket, a thread, an eventfd."""
    import threading
    with tempfile.TemporaryFile() as f:
        os.pwritev(f.fileno(), [b"abc"], 0)
        assert os.preadv(f.fileno(), [bytearray(3)], 0) == 3
    socket.socketpair()[0].close()
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    os.close(os.eventfd(0))


def _in_filtered_child(mode: str, call: Callable[[], None]) -> int:
    """Run *call* in a forked child under the server's filter; its wait status."""
    syscall_filter = build_filter(mode)
    pid = os.fork()
    if pid == 0:
        try:
            syscall_filter.load()
            call()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("call", [_inet_socket, _ptrace, _mount], ids=["socket-inet", "ptrace",
                                                                      "mount"])
def test_an_off_list_call_kills_the_child(call: Callable[[], None]) -> None:
    status = _in_filtered_child("kill", call)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS, status


def test_what_serving_needs_is_allowed() -> None:
    status = _in_filtered_child("kill", _allowed_work)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_log_mode_lets_the_call_through() -> None:
    status = _in_filtered_child("log", _inet_socket)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


async def test_the_running_server_is_filtered(start_server: StartServer) -> None:
    async with start_server() as running:
        status = running.status()
        async with await Client.connect_unix(running.socket, msize=8192) as client:
            root = await client.attach()
            await client.create(root, "f")
            with pytest.raises(OSError) as info:
                await client.walk(root, ["missing"])
            assert info.value.errno == errno.ENOENT
        still = running.status()
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    assert still["State"].split()[0] in "SR"  # served and still alive under the filter


def _own_filters() -> int:
    """Filters this test process has (an in-process cli.main() may have loaded
    the small io_uring one, which children inherit)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("Seccomp_filters:")[1].split()[0])


async def test_seccomp_none_loads_no_filter(start_server: StartServer) -> None:
    async with start_server("--seccomp", "none") as running:
        none = int(running.status()["Seccomp_filters"])
    async with start_server() as running:
        default = int(running.status()["Seccomp_filters"])
    assert none == _own_filters()
    assert default == _own_filters() + 2  # io_uring refused before the loop, then the list
