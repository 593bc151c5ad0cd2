"""The ``ninep`` command, run as a real process (``python -m ninep``)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ninep.cli import main
from ninep.client import Client
from ninep.testing.process import wait_for_path

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
    (["--export", "{export}", "--listen", "unix:{sock}", "--backend", "nfs"],
     "local, handle, proxy", True),
    (["--export", "{export}", "--listen", "unix:{sock}", "--multidevs", "merge"],
     "remap, forbid, warn", False),
    (["--listen", "unix:{sock}", "--fsdev", "local,path={export}"],
     "--fsdev: security_model property not set", True),
    (["--listen", "unix:{sock}", "--fsdev", "local,path={missing},security_model=none"],
     "not a directory", False),
    (["--export", "{export}", "--listen", "unix:{sock}", "--fsdev",
      "local,path={missing},security_model=none"], "is also given: give it once", False),
    (["--listen", "unix:{sock}", "--security-model", "none", "--fsdev",
      "local,path={export},security_model=mapped"], "--security-model none is also given", False),
    (["--listen", "unix:{sock}", "--backend", "proxy"], "--export", False),
    (["--listen", "unix:{sock}", "--fmode", "0600", "--fsdev",
      "local,path={export},security_model=mapped,fmode=0640"], "--fmode to 0o640", False),
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


async def _serve_in_process(args: list[str], sock: Path, monkeypatch: pytest.MonkeyPatch,
                            **serve_options: object) -> tuple[asyncio.Task, Client]:
    """``cli.serve`` on this loop (unconfined: the test process must keep its
    file system and syscalls) and a client of its Unix socket."""
    from ninep import cli
    monkeypatch.setattr(cli, "confine", lambda *_: None)
    ready = asyncio.Event()
    task = asyncio.ensure_future(cli.serve(cli.parse_args([*args, "--listen", f"unix:{sock}"]),
                                           ready.set, **serve_options))  # type: ignore[arg-type]
    await asyncio.wait_for(ready.wait(), 30)
    return task, await Client.connect_unix(str(sock))


async def test_serve_shares_its_request_count_with_the_back_end(
        export: Path, sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sessions count requests in the RequestLoad the back end's pool reads:
    a lone request's read runs on the event loop (``--inline auto``)."""
    import threading

    from ninep import cli
    (export / "f").write_bytes(b"x" * 4096)
    built = []
    make_backend = cli.make_backend
    monkeypatch.setattr(cli, "make_backend",
                        lambda *a: built.append(make_backend(*a)) or built[-1])
    task, client = await _serve_in_process(["--export", str(export)], sockdir / "s", monkeypatch)
    try:
        pool = built[0]._pool
        ran_on: list[int] = []
        pool_run = pool.run

        async def run(fn, *args):  # type: ignore[no-untyped-def]
            return await pool_run(lambda *a: (ran_on.append(threading.get_ident()), fn(*a))[1],
                                  *args)

        pool.run = run
        fid = await client.walk_open(await client.attach(), ["f"])
        ran_on.clear()
        assert len(await client.read(fid, 0, 100)) == 100
        assert ran_on == [threading.get_ident()]
    finally:
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_serve_starts_the_back_end_before_serving_and_closes_it(
        export: Path, sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ninep.backends.local import LocalBackend
    events: list[str] = []

    class Recording(LocalBackend):
        async def start(self) -> None:
            events.append("start")

        async def close(self) -> None:
            events.append("close")
            await super().close()

    task, client = await _serve_in_process(["--export", str(export)], sockdir / "s",
                                           monkeypatch, backend=Recording(str(export)))
    assert events == ["start"]  # by the time it is ready
    await client.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert events == ["start", "close"]


def test_help_exits_0() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--export" in result.stdout and "--listen" in result.stdout


def _help_entry(help_text: str, option: str) -> str:
    """The help of one option, joined onto one line."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(option + " "))
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 8) or line.strip().startswith("--"):
            break
        entry.append(line)
    return " ".join(" ".join(entry).split()).replace("- ", "-")


@pytest.mark.parametrize("option,choices,default", [
    ("--backend", ["local", "handle", "proxy"], "local"),
    ("--security-model", ["passthrough", "mapped-xattr", "mapped", "mapped-file", "none"],
     "passthrough"),
    ("--multidevs", ["remap", "forbid", "warn"], "warn"),
    ("--msize", [], "512000"),
    ("--threads", [], "4 x cores"),
    ("--inline", ["auto", "never"], "auto"),
    ("--log-level", ["debug", "info", "warning", "error"], "info"),
    ("--fmode", [], "0600"),
    ("--dmode", [], "0700"),
    ("--max-fids", [], "65536"),
    ("--max-inflight", [], "1024"),
    ("--tag", [], "ninep"),
])
def test_help_names_every_choice_and_default(capsys, option: str, choices: list[str],
                                             default: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    entry = _help_entry(capsys.readouterr().out, option)
    assert f"(default: {default}" in entry, entry
    for choice in choices:
        assert choice in entry, (choice, entry)


def test_help_groups_the_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    headings = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line[0].isspace()]
    assert headings[1:7] == ["transports", "back end", "security", "limits", "logging",
                            "statistics"], headings


def test_version() -> None:
    import ninep
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ninep {ninep.__version__}"


# --- --fsdev: QEMU's option string ---------------------------------------------------------

def test_fsdev_sets_the_same_options_as_the_long_flags(export: Path) -> None:
    from ninep.cli import parse_args
    args = parse_args(["--listen", "unix:/x", "--fsdev",
                       f"local,id=fs0,path={export},security_model=mapped-file,readonly=on,"
                       "fmode=0640,dmode=0750,multidevs=remap"])
    assert (args.backend, args.export, args.security_model, args.readonly, args.fmode,
            args.dmode, args.multidevs) == \
        ("local", str(export), "mapped-file", True, 0o640, 0o750, "remap")
    same = parse_args(["--listen", "unix:/x", "--export", str(export), "--security-model",
                       "mapped-file", "--readonly", "--fmode", "0640", "--dmode", "0750",
                       "--multidevs", "remap"])
    assert vars(same) | {"fsdev": None} == vars(args) | {"fsdev": None}


def test_fsdev_agrees_with_a_long_flag_that_says_the_same(export: Path) -> None:
    from ninep.cli import parse_args
    args = parse_args(["--listen", "unix:/x", "--export", str(export), "--readonly",
                       "--fsdev", f"local,path={export},security_model=none,readonly=on"])
    assert args.readonly is True and args.security_model == "none"


def test_fsdev_path_with_a_comma(tmp_path: Path) -> None:
    from ninep.cli import parse_args
    odd = tmp_path / "a,b"
    odd.mkdir()
    args = parse_args(["--listen", "unix:/x", "--fsdev",
                       f"local,path={str(odd).replace(',', ',,')},security_model=passthrough"])
    assert args.export == str(odd)


def test_fsdev_proxy_needs_no_export() -> None:
    from ninep.cli import parse_args
    args = parse_args(["--listen", "unix:/x", "--fsdev", "proxy,socket=/run/helper.sock"])
    assert (args.backend, args.proxy_socket, args.export) == ("proxy", "/run/helper.sock", None)
    args = parse_args(["--listen", "unix:/x", "--fsdev", "proxy,sock_fd=5,readonly=on"])
    assert (args.backend, args.proxy_fd, args.readonly) == ("proxy", 5, True)
    args = parse_args(["--listen", "unix:/x", "--backend", "proxy", "--proxy-socket", "/h"])
    assert (args.proxy_socket, args.export) == ("/h", None)


async def _serve_and_check_readonly(args: list[str], export: Path, sock: Path) -> None:
    """Serve with *args* as a real process: the export's file reads back, a mkdir is EROFS."""
    proc = await asyncio.create_subprocess_exec(
        *NINEP, *args, "--listen", f"unix:{sock}", "--log-level", "warning",
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_for_path(proc, sock)
        async with await Client.connect_unix(str(sock), msize=65536) as client:
            root = await client.attach()
            fid = await client.walk_open(root, ["hello.txt"])
            assert await client.read(fid, 0, 100) == b"from the host"
            with pytest.raises(OSError) as info:
                await client.mkdir(root, "nope")
            assert info.value.errno == errno.EROFS
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr
    assert not (export / "nope").exists()


async def test_the_real_process_serves_an_fsdev_local_string(export: Path, sockdir: Path) -> None:
    (export / "hello.txt").write_text("from the host")
    await _serve_and_check_readonly(
        ["--fsdev", f"local,id=fs0,path={export},security_model=mapped-xattr,readonly=on"],
        export, sockdir / "s")


async def test_the_real_process_serves_an_fsdev_proxy_string(export: Path, sockdir: Path) -> None:
    """proxy,socket=PATH: a helper started on its own serves the export; no --export."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the proxy helper needs root")
        pytest.skip("the proxy helper needs root")
    (export / "hello.txt").write_text("from the host")
    helper_sock = sockdir / "helper"
    helper = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ninep.helper", "-p", str(export), "-s", str(helper_sock),
        "-u", "0", "-g", "0", "-n", stdin=subprocess.DEVNULL)
    try:
        await wait_for_path(helper, helper_sock)
        await _serve_and_check_readonly(["--fsdev", f"proxy,socket={helper_sock},readonly=on"],
                                        export, sockdir / "s")
    finally:
        helper.terminate()
        await helper.wait()


async def test_the_real_process_serves_until_sigterm(export: Path, sockdir: Path) -> None:
    (export / "hello.txt").write_text("from the host")
    sock = sockdir / "ninep.sock"
    proc = await asyncio.create_subprocess_exec(
        *NINEP, "--export", str(export), "--listen", f"unix:{sock}", "--log-level", "warning",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await wait_for_path(proc, sock)
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
