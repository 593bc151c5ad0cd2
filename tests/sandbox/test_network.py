"""Network exposure: a non-loopback listener needs --allow-network-share, and warns."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.sandbox.network import check_exposure
from ninep.transport.stream import ListenAddress

NINEP = [sys.executable, "-m", "ninep"]


@pytest.mark.parametrize("text", ["tcp:127.0.0.1:564", "tcp::564", "tcp:[::1]:0",
                                  "tcp:localhost:0", "tcp:127.8.9.10:1", "unix:/x"])
def test_loopback_and_unix_listeners_need_no_flag(text: str) -> None:
    assert check_exposure([ListenAddress.parse(text)], allowed=False) == []


@pytest.mark.parametrize("text", ["tcp:0.0.0.0:564", "tcp:[::]:564", "tcp:192.0.2.1:564"])
def test_non_loopback_listeners_are_refused_unless_allowed(text: str) -> None:
    address = ListenAddress.parse(text)
    with pytest.raises(ValueError, match="--allow-network-share"):
        check_exposure([address], allowed=False)
    assert check_exposure([address], allowed=True) == [str(address)]


def _run(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NINEP, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, pass_fds=pass_fds)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]"])
def test_the_real_process_refuses_an_open_share_in_one_line(export: Path, host: str) -> None:
    result = _run("--export", str(export), "--listen", f"tcp:{host}:0")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ninep: error: --listen tcp:")
    assert "--allow-network-share" in lines[0]


def test_an_inherited_wildcard_tcp_listener_is_refused_too(export: Path) -> None:
    with socket.create_server(("0.0.0.0", 0)) as listener:
        result = _run("--export", str(export), "--listen", f"fd:{listener.fileno()}",
                      pass_fds=(listener.fileno(),))
    assert result.returncode == 2
    assert "--allow-network-share" in result.stderr and len(result.stderr.splitlines()) == 1


async def test_with_the_flag_it_serves_and_warns(export: Path) -> None:
    (export / "f").write_text("shared")
    listener = socket.create_server(("0.0.0.0", 0))
    port = listener.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        *NINEP, "--export", str(export), "--listen", f"fd:{listener.fileno()}",
        "--allow-network-share", pass_fds=[listener.fileno()],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    listener.close()
    try:
        assert proc.stderr is not None
        warning = b""
        while b"WARNING" not in warning:
            warning = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert warning, "the server ended without a warning"
        assert b"reachable from the network" in warning and b"without authentication" in warning
        async with await Client.connect_tcp("127.0.0.1", port, msize=8192) as client:
            root = await client.attach()
            assert (await client.getattr(await client.walk(root, ["f"]))).size == 6
    finally:
        proc.terminate()
        await proc.wait()
