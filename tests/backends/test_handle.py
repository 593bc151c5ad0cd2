"""What only the handle back end promises: nodes follow inodes, not paths.

The shared suite (``BACKENDS["handle"]`` in conftest) covers everything the
handle back end has in common with local passthrough; these tests cover
host renames under held nodes, the start-up checks, the CLI refusal of
``--security-model``, symlinks, and ``..`` confinement.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ninep import syscalls
from ninep.backends.base import SetAttr
from ninep.backends.handle import HandleBackend
from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.protocol.ninep import QTDIR, QTSYMLINK

from .conftest import CRED, Fs, open_fd_count


def _has_handle_caps() -> bool:
    return bool(syscalls.capget()[0] & (1 << syscalls.CAP_DAC_READ_SEARCH))


pytestmark = pytest.mark.skipif(not _has_handle_caps(),
                                reason="the handle back end needs CAP_DAC_READ_SEARCH")


@pytest.fixture
async def hfs(export: Path) -> AsyncIterator[Fs]:
    """An attached handle back end on *export*; checks for fd leaks at the end."""
    fds = open_fd_count()
    backend = HandleBackend(str(export))
    root, _ = await backend.attach("root", 0, "")
    fs = Fs(backend, root, export)
    fs.track(root)
    yield fs
    await fs.clunk_all()
    await backend.close()
    assert open_fd_count() == fds, "the handle back end leaked file descriptors"


# --- host renames under held nodes ---------------------------------------------------------

async def test_walked_file_survives_host_move(hfs: Fs) -> None:
    hfs.host("a/b").mkdir(parents=True)
    hfs.host("a/b/f").write_bytes(b"data")
    node = await hfs.walk("a/b/f")
    qid_before, _ = await hfs.getattr(node)
    hfs.host("elsewhere").mkdir()
    os.rename(hfs.host("a/b/f"), hfs.host("elsewhere/g"))
    os.rename(hfs.host("a"), hfs.host("z"))
    qid, st = await hfs.getattr(node)
    assert qid.path == qid_before.path == os.stat(hfs.host("elsewhere/g")).st_ino
    assert st.size == 4
    await hfs.backend.setattr(node, SetAttr(mode=0o600))
    assert stat.S_IMODE(os.stat(hfs.host("elsewhere/g")).st_mode) == 0o600
    await hfs.backend.open(node, os.O_RDWR)
    assert await hfs.read(node, 10) == b"data"
    assert await hfs.write(node, b"DA") == 2
    assert hfs.host("elsewhere/g").read_bytes() == b"DAta"


async def test_opened_file_survives_host_rename(hfs: Fs) -> None:
    hfs.host("d").mkdir()
    hfs.host("d/f").write_bytes(b"one")
    node = await hfs.open("d/f", os.O_RDWR)
    os.rename(hfs.host("d"), hfs.host("d2"))
    os.rename(hfs.host("d2/f"), hfs.host("d2/f2"))
    assert await hfs.write(node, b"two", 3) == 3
    assert await hfs.read(node, 10) == b"onetwo"
    _, st = await hfs.getattr(node)
    assert st.size == 6 and st.ino == os.stat(hfs.host("d2/f2")).st_ino
    await hfs.backend.setattr(node, SetAttr(size=2))
    assert hfs.host("d2/f2").read_bytes() == b"on"


async def test_walked_directory_survives_host_rename(hfs: Fs) -> None:
    hfs.host("old").mkdir()
    dnode = await hfs.walk("old")
    os.rename(hfs.host("old"), hfs.host("new"))
    await hfs.backend.mkdir(dnode, "sub", 0o755, CRED)
    await hfs.backend.create(dnode, "f", os.O_RDWR, 0o644, CRED)  # dnode becomes f
    await hfs.write(dnode, b"x")
    assert hfs.host("new/f").read_bytes() == b"x"
    assert hfs.host("new/sub").is_dir()


async def test_rename_and_remove_find_a_name_changed_on_the_host(hfs: Fs) -> None:
    hfs.host("d").mkdir()
    hfs.host("d/f").write_bytes(b"f")
    hfs.host("d/g").write_bytes(b"g")
    f = await hfs.walk("d/f")
    g = await hfs.walk("d/g")
    dnode = await hfs.walk("d")
    os.rename(hfs.host("d/f"), hfs.host("d/f-host"))
    os.rename(hfs.host("d/g"), hfs.host("d/g-host"))
    await hfs.backend.rename(f, dnode, "f-guest")
    assert hfs.host("d/f-guest").read_bytes() == b"f"
    await hfs.backend.remove(g)
    assert sorted(os.listdir(hfs.host("d"))) == ["f-guest"]


async def test_rename_of_a_directory_uses_its_real_parent(hfs: Fs) -> None:
    hfs.host("a/sub").mkdir(parents=True)
    hfs.host("b").mkdir()
    sub = await hfs.walk("a/sub")
    b = await hfs.walk("b")
    os.rename(hfs.host("a/sub"), hfs.host("b/moved"))  # host moves it to another directory
    await hfs.backend.rename(sub, b, "renamed")
    assert os.listdir(hfs.host("b")) == ["renamed"]


@pytest.mark.parametrize("host_holds_it", [False, True])
async def test_file_removed_on_host_is_enoent(hfs: Fs, host_holds_it: bool) -> None:
    """Even while a host process keeps the unlinked inode alive (so its handle
    still decodes), a walked node of it is gone, as its path would be."""
    hfs.host("f").write_bytes(b"x")
    node = await hfs.walk("f")
    held = os.open(hfs.host("f"), os.O_RDONLY) if host_holds_it else None
    try:
        os.unlink(hfs.host("f"))
        for op in (hfs.backend.getattr(node), hfs.backend.open(node, os.O_RDONLY),
                   hfs.backend.setattr(node, SetAttr(mode=0o600)),
                   hfs.backend.xattr_set(node, "user.x", b"1", 0)):
            with pytest.raises(FileNotFoundError):
                await op
    finally:
        if held is not None:
            os.close(held)


# --- symlinks --------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["plain", "../outside/secret", "/etc/passwd", "dir/"])
async def test_symlink_create_readlink_lstat(hfs: Fs, target: str) -> None:
    hfs.host("plain").write_bytes(b"p")
    qid = await hfs.backend.symlink(hfs.root, "ln", target, CRED)
    host = os.lstat(hfs.host("ln"))
    assert qid.type == QTSYMLINK and qid.path == host.st_ino
    assert os.readlink(hfs.host("ln")) == target
    assert (host.st_uid, host.st_gid) == (CRED.uid, CRED.gid)
    node = await hfs.walk("ln")
    gqid, st = await hfs.getattr(node)
    assert gqid == qid
    assert stat.S_ISLNK(st.mode) and st.size == len(target) and st.ino == host.st_ino
    assert await hfs.backend.readlink(node) == target
    with pytest.raises(OSError) as exc:
        await hfs.backend.open(node, os.O_RDONLY)
    assert exc.value.errno == errno.ELOOP


async def test_symlink_attributes_change_the_link_not_its_target(hfs: Fs) -> None:
    hfs.host("target").write_bytes(b"t")
    os.chmod(hfs.host("target"), 0o640)
    hfs.host("ln").symlink_to("target")
    node = await hfs.walk("ln")
    await hfs.backend.setattr(node, SetAttr(uid=CRED.uid, gid=CRED.gid, mtime=(1000, 0)))
    link, tgt = os.lstat(hfs.host("ln")), os.stat(hfs.host("target"))
    assert (link.st_uid, link.st_gid, link.st_mtime_ns) == (CRED.uid, CRED.gid, 1000 * 10**9)
    assert (tgt.st_uid, tgt.st_mtime_ns) != (CRED.uid, 1000 * 10**9)
    with pytest.raises(OSError) as exc:
        await hfs.backend.setattr(node, SetAttr(mode=0o777))
    assert exc.value.errno == errno.EOPNOTSUPP
    assert stat.S_IMODE(os.stat(hfs.host("target")).st_mode) == 0o640


async def test_readlink_of_a_non_symlink_is_einval(hfs: Fs) -> None:
    hfs.host("f").touch()
    for node in (await hfs.walk("f"), hfs.root):
        with pytest.raises(OSError) as exc:
            await hfs.backend.readlink(node)
        assert exc.value.errno == errno.EINVAL


async def test_hard_link_to_a_symlink_links_the_symlink(hfs: Fs) -> None:
    hfs.host("ln").symlink_to("../outside/secret")
    node = await hfs.walk("ln")
    await hfs.backend.link(hfs.root, node, "ln2")
    assert os.lstat(hfs.host("ln2")).st_ino == os.lstat(hfs.host("ln")).st_ino
    assert os.readlink(hfs.host("ln2")) == "../outside/secret"


async def test_walk_never_follows_a_symlink(hfs: Fs) -> None:
    hfs.host("real").mkdir()
    hfs.host("real/f").touch()
    hfs.host("ln").symlink_to("real")
    qids, node = await hfs.backend.walk(hfs.root, ["ln", "f"])
    assert node is None and [q.type for q in qids] == [QTSYMLINK]


# --- .. confinement --------------------------------------------------------------------------

async def test_dotdot_never_leaves_the_root(hfs: Fs) -> None:
    hfs.host("a/b").mkdir(parents=True)
    root_qid, _ = await hfs.getattr(hfs.root)
    qids, node = await hfs.backend.walk(hfs.root, ["a", "b", "..", "..", "..", ".."])
    assert node is not None
    hfs.track(node)
    assert qids[2].path == os.stat(hfs.host("a")).st_ino
    assert qids[3:] == [root_qid] * 3
    assert (await hfs.getattr(node))[0] == root_qid
    qids, up = await hfs.backend.walk(node, [".."])
    assert up is not None and hfs.track(up) and qids == [root_qid]


async def test_dotdot_from_a_directory_moved_out_of_the_export(hfs: Fs, tmp_path: Path) -> None:
    """A host process moves a held directory out of the export: the node still
    works (it is that inode), but ``..`` and parent-based operations refuse to
    climb into the host's tree."""
    hfs.host("d/inner").mkdir(parents=True)
    d = await hfs.walk("d")
    inner = await hfs.walk("d/inner")
    away = tmp_path / "away"
    away.mkdir()
    os.rename(hfs.host("d"), away / "d")
    assert (await hfs.getattr(d))[0].path == os.stat(away / "d").st_ino
    for node, names in ((d, [".."]), (inner, [".."]), (inner, ["..", ".."])):
        with pytest.raises(FileNotFoundError):
            await hfs.backend.walk(node, names)
    qids, partial = await hfs.backend.walk(d, ["inner", "..", "inner"])
    assert partial is None and len(qids) == 1
    with pytest.raises(FileNotFoundError):
        await hfs.backend.remove(d)
    with pytest.raises(FileNotFoundError):
        await hfs.backend.rename(inner, hfs.root, "stolen")
    assert (away / "d" / "inner").is_dir() and not hfs.host("stolen").exists()


async def test_root_cannot_be_removed_renamed_or_linked(hfs: Fs) -> None:
    with pytest.raises(OSError) as exc:
        await hfs.backend.remove(hfs.root)
    assert exc.value.errno == errno.EBUSY
    with pytest.raises(OSError) as exc:
        await hfs.backend.rename(hfs.root, hfs.root, "x")
    assert exc.value.errno == errno.EBUSY
    with pytest.raises(OSError) as exc:
        await hfs.backend.link(hfs.root, hfs.root, "x")
    assert exc.value.errno == errno.EPERM


# --- start-up checks --------------------------------------------------------------------------

def test_handle_size_is_found_at_startup(export: Path) -> None:
    backend = HandleBackend(str(export))
    try:
        fd = os.open(export, os.O_PATH)
        try:
            _, handle, _ = syscalls.name_to_handle_at(fd, "", syscalls.AT_EMPTY_PATH)
        finally:
            os.close(fd)
        assert backend.handle_size == len(handle) > 0
    finally:
        asyncio.run(backend.close())


def test_file_system_without_handles_is_one_clear_error() -> None:
    fds = open_fd_count()
    with pytest.raises(OSError) as exc:
        HandleBackend("/proc")
    message = str(exc.value)
    assert "\n" not in message and "cannot export file handles" in message
    assert "/proc" in message
    assert open_fd_count() == fds


def run_cli(*args: str, drop_cap: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``ninep`` in a child, optionally without CAP_DAC_READ_SEARCH."""
    code = "import sys\n"
    if drop_cap:
        code += ("from ninep import syscalls as s\n"
                 "e, p, i = s.capget()\n"
                 "s.capset(e & ~(1 << s.CAP_DAC_READ_SEARCH), p, i)\n")
    code += "from ninep.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_cli_refuses_security_model_like_qemu(export: Path, tmp_path: Path) -> None:
    res = run_cli("--backend", "handle", "--security-model", "mapped-xattr", "--export",
                  str(export), "--listen", f"unix:{tmp_path / 'sock'}")
    assert res.returncode == 2
    assert res.stderr == ("ninep: error: Invalid argument security_model specified with handle "
                          "fsdriver\n")
    assert not (tmp_path / "sock").exists()


def test_cli_export_without_handles_exits_2(tmp_path: Path) -> None:
    res = run_cli("--backend", "handle", "--export", "/proc", "--listen",
                  f"unix:{tmp_path / 'sock'}")
    assert res.returncode == 2
    assert res.stderr.startswith("ninep: error: --export /proc: ")
    assert res.stderr.count("\n") == 1 and "file handles" in res.stderr


def test_cli_without_cap_dac_read_search_exits_2(export: Path, tmp_path: Path) -> None:
    res = run_cli("--backend", "handle", "--export", str(export), "--listen",
                  f"unix:{tmp_path / 'sock'}", drop_cap=True)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1
    assert res.stderr.startswith("ninep: error: ") and "CAP_DAC_READ_SEARCH" in res.stderr


async def test_cli_serves_through_handles(export: Path, tmp_path: Path) -> None:
    (export / "d").mkdir()
    (export / "d" / "f").write_bytes(b"served")
    sock = tmp_path / "sock"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ninep", "--backend", "handle", "--export", str(export),
        "--listen", f"unix:{sock}", "--log-level", "error", stdin=subprocess.DEVNULL)
    try:
        for _ in range(200):  # wait (bounded) for the socket to appear
            if sock.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert sock.exists(), "server did not start"
        async with await Client.connect_unix(str(sock)) as client:
            root = await client.attach()
            fid = await client.walk(root, ["d"])
            os.rename(export / "d", export / "d-renamed")  # the held fid must not care
            ffid = await client.walk_open(fid, ["f"])
            assert await client.read(ffid, 0, 100) == b"served"
            reply = await client.getattr(fid)
            assert reply.qid.type == QTDIR
            assert reply.qid.path == os.stat(export / "d-renamed").st_ino
            await client.rpc(p.Tclunk(ffid))
    finally:
        proc.terminate()
        assert await proc.wait() in (0, -15)
