"""--sandbox chroot: the root is the export, and nothing a guest plants there is followed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.sandbox.caps import CAP_NAMES

from .conftest import NORMAL_UID, StartServer, status_mask

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (or a normal user to become)")

DECOY = b"planted by the guest\n"


@pytest.fixture
def export(normal_user_export: Path) -> Path:
    return normal_user_export


def plant_fd_links(export: Path, count: int = 256) -> None:
    """What a guest can create through 9P: ``proc/self/fd/N -> /decoy`` for every
    fd number the server may use, so that a server resolving ``/proc/self/fd/N``
    in its new root lands on the decoy."""
    (export / "decoy").write_bytes(DECOY)
    (export / "decoy").chmod(0o644)
    fds = export / "proc" / "self" / "fd"
    fds.mkdir(parents=True)
    for n in range(count):
        (fds / str(n)).symlink_to("/decoy")


async def serve_through_pinned_fds(socket: str) -> None:
    """Operations that go through fdops.fd_path: reopening a pinned inode for
    I/O, chmod of a pinned inode, and (mapped models) its xattrs."""
    async with await Client.connect_unix(socket, msize=8192) as client:
        top = await client.attach()
        opened = await client.walk_open(top, ["real"])
        assert await client.read(opened, 0, 100) == b"the real file\n"
        fid = await client.walk(top, ["real"])
        await client.rpc(p.Tsetattr(fid, p.SETATTR_MODE, 0o600, 0, 0, 0, 0, 0, 0, 0))
        assert (await client.getattr(fid)).mode & 0o777 == 0o600
        new, _ = await client.create(top, "from-guest")
        assert await client.write(new, 0, b"ok") == 2


@root_only
@pytest.mark.parametrize("model", ["passthrough", "mapped-xattr"])
async def test_a_planted_proc_self_fd_is_never_followed(
        start_server: StartServer, export: Path, model: str) -> None:
    (export / "real").write_bytes(b"the real file\n")
    (export / "real").chmod(0o644)
    plant_fd_links(export)
    async with start_server("--sandbox", "chroot", "--security-model", model) as running:
        pid = running.pid
        assert os.readlink(f"/proc/{pid}/root") == str(export)
        await serve_through_pinned_fds(running.socket)
        status = running.status()
    assert running.proc.returncode == 0
    assert (export / "decoy").read_bytes() == DECOY
    assert (export / "decoy").stat().st_mode & 0o777 == 0o644
    assert (export / "from-guest").read_bytes() == b"ok"
    if model == "passthrough":
        assert (export / "real").stat().st_mode & 0o777 == 0o600
    # the other layers still apply after the chroot, and chroot itself is gone
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    assert not status_mask(status["CapBnd"]) & 1 << CAP_NAMES.index("sys_chroot")
    assert not status_mask(status["CapEff"]) & 1 << CAP_NAMES.index("sys_chroot")


@root_only
async def test_a_normal_user_chroots_through_a_user_namespace(
        start_server: StartServer, export: Path) -> None:
    (export / "real").write_bytes(b"the real file\n")
    plant_fd_links(export)
    for path in (export / "real", export / "decoy"):
        os.chown(path, NORMAL_UID, NORMAL_UID)  # the guest's files, as the server's user
    async with start_server("--sandbox", "chroot", "--security-model", "mapped-xattr",
                            normal_user=True) as running:
        assert os.readlink(f"/proc/{running.pid}/root") == str(export)
        assert os.readlink(f"/proc/{running.pid}/ns/user") != os.readlink(
            "/proc/self/ns/user")
        await serve_through_pinned_fds(running.socket)
    assert (export / "decoy").read_bytes() == DECOY
    assert (export / "from-guest").read_bytes() == b"ok"


def test_chroot_with_the_proxy_back_end_is_refused_in_one_line(export: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ninep", "--export", str(export), "--listen",
                             "unix:/nonexistent/s", "--backend", "proxy", "--sandbox", "chroot"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "--sandbox none" in result.stderr


def test_after_the_chroot_nothing_is_imported_by_path(tmp_path: Path) -> None:
    """A late import must fail, not run a file a guest planted on sys.path."""
    planted = tmp_path / "planted_module.py"
    planted.write_text("raise SystemExit('planted code ran')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from ninep.sandbox.chroot import forbid_imports_by_path\n"
            "forbid_imports_by_path()\n"
            "try:\n    import planted_module\n"
            "except ModuleNotFoundError:\n    print('refused')\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout == "refused\n", result.stderr


#: The escape suites whose every request goes through pinned fds.
ESCAPE_SUITES = ("tests/security/test_symlinks.py", "tests/security/test_names.py",
                 "tests/security/test_special_files.py")


def test_the_escape_suites_pass_with_fds_named_as_under_chroot() -> None:
    """Every back-end path through fd_path, in its chroot form (relative to a
    held /proc/self/fd), against the export-escape traps."""
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-p", "tests.sandbox.fd_names_from_cwd", *ESCAPE_SUITES],
                            cwd=repo, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout.splitlines()[-1]

