"""diod's own client tools (libnpclient) against a real ninep process.

``diodls`` and ``diodcat`` send Tauth before Tattach and give up unless the
server answers as diod does without authentication: Rlerror(ENOENT).  The
tools come from Debian's diod package (``scripts/install-deps``); without
them this skips locally and fails in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.guest import GuestError, wait_for_listener
from tests.e2e.servers import free_tcp_port, require, stop

DIODLS = "diodls"
DIODCAT = "diodcat"


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin")
    require(path is not None, f"{name} is not installed (Debian package diod)")
    assert path is not None
    return path


@pytest.fixture
def ninep_tcp(export: Path, tmp_path: Path) -> Iterator[str]:
    """``HOST:PORT`` of a ``python -m ninep`` process serving *export* over TCP."""
    for _ in range(3):  # the free port may be taken between probe and bind
        port = free_tcp_port()
        log = open(tmp_path / "ninep.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ninep", "--export", str(export),
             "--listen", f"tcp:127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_listener(("127.0.0.1", port), timeout=30, proc=proc)
            break
        except GuestError:
            stop(proc)
            log.close()
    else:
        raise AssertionError((tmp_path / "ninep.log").read_text())
    yield f"127.0.0.1:{port}"
    stop(proc)
    log.close()
    assert "Traceback" not in (tmp_path / "ninep.log").read_text()


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_diodls_lists_the_export(ninep_tcp: str, export: Path) -> None:
    diodls = _tool(DIODLS)
    (export / "hello.txt").write_text("hi\n")
    (export / "sub").mkdir()
    res = _run(diodls, "-s", ninep_tcp, "-a", "/", "/")
    assert res.returncode == 0, res.stderr
    assert "authenticating" not in res.stderr
    assert set(res.stdout.split()) >= {"hello.txt", "sub"}

    long = _run(diodls, "-l", "-s", ninep_tcp, "-a", "/", "/")
    assert long.returncode == 0, long.stderr
    line = next(ln for ln in long.stdout.splitlines() if ln.endswith(" hello.txt"))
    assert line.startswith("-rw") and " 3 " in line  # mode and size from Tgetattr


def test_diodcat_reads_files_larger_than_its_msize(ninep_tcp: str, export: Path) -> None:
    diodcat = _tool(DIODCAT)
    data = os.urandom(300_000)  # several Tread at diodcat's default 64 KiB msize
    (export / "blob").write_bytes(data)
    (export / "note").write_text("from ninep\n")
    res = subprocess.run([diodcat, "-s", ninep_tcp, "-a", "/", "blob"], capture_output=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data
    note = _run(diodcat, "-s", ninep_tcp, "-a", "/", "note")
    assert note.returncode == 0 and note.stdout == "from ninep\n", note.stderr


def test_diodcat_reports_a_missing_file(ninep_tcp: str) -> None:
    res = _run(_tool(DIODCAT), "-s", ninep_tcp, "-a", "/", "absent")
    assert res.returncode != 0
    assert "No such file" in res.stderr and "authenticating" not in res.stderr
