"""The ``ninep`` command, run as a real process (``python -m ninep``)."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ninep.cli import main
from ninep.client import Client

NINEP = [sys.executable, "-m", "ninep"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NINEP, *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def regular_file(tmp_path: Path) -> Path:
    path = tmp_path / "precious"
    path.write_text("keep")
    return path


#: Refused while parsing: (arguments, what the one error line names, also as a real process?).
BAD_OPTIONS = [
    ([], "--export", True),
    (["--listen", "unix:{sock}"], "--export", False),
    (["--export", "{missing}", "--listen", "unix:{sock}"], "not a directory", True),
    (["--export", "{file}", "--listen", "unix:{sock}"], "not a directory", False),
    (["--export", "{export}"], "--listen", False),
    (["--export", "{export}", "--listen", "udp:1.2.3.4:5"], "--listen", True),
    (["--export", "{export}", "--listen", "unix:{sock}", "--msize", "100"], "--msize", False),
    (["--export", "{export}", "--listen", "unix:{sock}", "--msize", "lots"], "--msize", False),
    (["--export", "{export}", "--listen", "unix:{sock}", "--security-model", "bogus"],
     "--security-model", False),
    (["--export", "{export}", "--listen", "unix:{sock}", "--fmode", "999"], "--fmode", False),
    (["--export", "{export}", "--listen", "unix:{sock}", "--fmode", "0644"], "--fmode", True),
    (["--export", "{export}", "--listen", "unix:{sock}", "--bogus"], "--bogus", True),
    (["--export", "{export}", "--listen", "unix:{sock}", "--inline", "always"], "--inline", False),
]
#: Refused only once serving starts (so only a real process shows them).
BAD_AT_START = [
    (["--export", "{export}", "--listen", "unix:{nodir}"], "--listen unix:"),
    (["--export", "{export}", "--listen", "unix:{file}"], "not a socket"),
    (["--export", "{export}", "--listen", "fd:987"], "fd:987"),
]


@pytest.fixture
def cli_names(export: Path, tmp_path: Path, sockdir: Path, regular_file: Path) -> dict[str, Path]:
    return {"export": export, "sock": sockdir / "s", "missing": tmp_path / "missing",
            "file": regular_file, "nodir": tmp_path / "no" / "such" / "dir" / "s"}


def assert_one_error_line(stderr: str, needle: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ninep: error: ") and needle in lines[0], lines[0]


@pytest.mark.parametrize("args,needle", [(a, n) for a, n, real in BAD_OPTIONS if real]
                         + BAD_AT_START)
def test_bad_invocations_print_one_line_and_exit_2(cli_names: dict[str, Path],
                                                   regular_file: Path, args: list[str],
                                                   needle: str) -> None:
    result = run_cli(*[a.format(**cli_names) for a in args])
    assert result.returncode == 2, result
    assert_one_error_line(result.stderr, needle)
    assert regular_file.read_text() == "keep"


@pytest.mark.parametrize("args,needle", [(a, n) for a, n, _ in BAD_OPTIONS])
def test_bad_options_are_refused_before_serving(cli_names: dict[str, Path], capsys,
                                                args: list[str], needle: str) -> None:
    """The same checks in-process (quick), for every option error."""
    assert main([a.format(**cli_names) for a in args]) == 2
    assert_one_error_line(capsys.readouterr().err, needle)


@pytest.mark.parametrize("option,inline", [([], True), (["--inline", "auto"], True),
                                           (["--inline", "never"], False)])
@pytest.mark.parametrize("backend", ["local", "handle"])
def test_inline_option_reaches_the_worker_pool(export: Path, option: list[str], inline: bool,
                                              backend: str) -> None:
    """auto: calls of a lone request run on the loop when the export is local (the
    tests' export is); never: always in a worker thread."""
    from ninep.cli import make_backend, parse_args
    be = make_backend(parse_args(["--export", str(export), "--listen", "unix:/x",
                                  "--backend", backend, *option]))
    try:
        assert be._pool.inline_when_alone is inline
    finally:
        asyncio.run(be.close())


def test_help_exits_0() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--export" in result.stdout and "--listen" in result.stdout


async def _wait_for_socket(proc: asyncio.subprocess.Process, path: Path) -> None:
    for _ in range(1000):
        if path.exists():
            return
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server never listened (exit status {proc.returncode})")


async def test_the_real_process_serves_until_sigterm(export: Path, sockdir: Path) -> None:
    (export / "hello.txt").write_text("from the host")
    sock = sockdir / "ninep.sock"
    proc = await asyncio.create_subprocess_exec(
        *NINEP, "--export", str(export), "--listen", f"unix:{sock}", "--log-level", "warning",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await _wait_for_socket(proc, sock)
        async with await Client.connect_unix(str(sock), msize=65536) as client:
            assert client.msize == 65536
            root = await client.attach()
            fid = await client.walk_open(root, ["hello.txt"])
            assert await client.read(fid, 0, 100) == b"from the host"
            new, _ = await client.create(root, "from-guest.txt")
            assert await client.write(new, 0, b"hi") == 2
            await client.clunk(new)
            names = {e[3] for e in await client.readdir_all(await client.walk_open(root, []))}
            assert names == {".", "..", "hello.txt", "from-guest.txt"}
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr
    assert b"Traceback" not in stderr
    assert (export / "from-guest.txt").read_text() == "hi"
    assert not sock.exists()


async def test_the_real_process_serves_an_inherited_connection(export: Path) -> None:
    """``--listen fd:N`` with a connected socket: serve it, exit 0 when it closes."""
    (export / "f").write_text("x")
    ours, theirs = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        *NINEP, "--export", str(export), "--listen", f"fd:{theirs.fileno()}", "--readonly",
        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    theirs.close()
    try:
        async with await Client.connect_socket(ours, msize=8192) as client:
            root = await client.attach()
            assert (await client.getattr(await client.walk(root, ["f"]))).size == 1
            with pytest.raises(OSError) as info:
                await client.mkdir(root, "nope")
            assert info.value.errno == errno.EROFS  # the options reached the server
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr
    assert not (export / "nope").exists()
