"""open flags and refusals, create, mkdir, symlink, mknod, link."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from collections.abc import Iterator

import pytest

from ninep.backends.base import Credentials
from ninep.protocol.ninep import QTDIR, QTFILE, QTSYMLINK

from .conftest import CRED, Caps, Fs, open_fd_count


def expected_owner(caps: Caps, cred: Credentials) -> tuple[int, int]:
    return (cred.uid, cred.gid) if caps.creates_as_caller else (os.geteuid(), os.getegid())


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A restrictive server umask: the guest's mode must still be exact."""
    old = os.umask(0o077)
    yield
    os.umask(old)


# --- open ------------------------------------------------------------------------------------

async def test_open_rdonly_reads_and_refuses_writes(fs: Fs) -> None:
    fs.host("f").write_bytes(b"abc")
    node = await fs.open("f", os.O_RDONLY)
    assert await fs.read(node, 10) == b"abc"
    with pytest.raises(OSError) as exc:
        await fs.write(node, b"x")
    assert exc.value.errno == errno.EBADF


async def test_open_wronly_writes_and_refuses_reads(fs: Fs) -> None:
    fs.host("f").write_bytes(b"abc")
    node = await fs.open("f", os.O_WRONLY)
    assert await fs.write(node, b"X", 1) == 1
    assert fs.host("f").read_bytes() == b"aXc"
    with pytest.raises(OSError) as exc:
        await fs.read(node, 10)
    assert exc.value.errno == errno.EBADF


async def test_open_rdwr(fs: Fs) -> None:
    fs.host("f").write_bytes(b"abc")
    node = await fs.open("f", os.O_RDWR)
    await fs.write(node, b"Z", 2)
    assert await fs.read(node, 10) == b"abZ"


async def test_open_trunc(fs: Fs) -> None:
    fs.host("f").write_bytes(b"abc")
    node = await fs.open("f", os.O_WRONLY | os.O_TRUNC)
    assert fs.host("f").read_bytes() == b""
    assert (await fs.backend.getattr(node))[1].size == 0


async def test_open_append_writes_at_end(fs: Fs) -> None:
    fs.host("f").write_bytes(b"abc")
    node = await fs.open("f", os.O_WRONLY | os.O_APPEND)
    await fs.write(node, b"de", 0)
    assert fs.host("f").read_bytes() == b"abcde"


async def test_open_directory_flag(fs: Fs) -> None:
    fs.host("d").mkdir()
    fs.host("f").touch()
    node = await fs.open("d", os.O_RDONLY | os.O_DIRECTORY)
    qid, _ = await fs.backend.getattr(node)
    assert qid.type == QTDIR
    with pytest.raises(NotADirectoryError):
        await fs.open("f", os.O_RDONLY | os.O_DIRECTORY)


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC])
async def test_directories_open_read_only(fs: Fs, flags: int) -> None:
    fs.host("d").mkdir()
    with pytest.raises(IsADirectoryError):
        await fs.open("d", flags)
    with pytest.raises(IsADirectoryError):
        await fs.backend.open(fs.root, flags)


async def test_open_returns_qid_of_file(fs: Fs) -> None:
    fs.host("f").touch()
    node = await fs.walk("f")
    qid, iounit = await fs.backend.open(node, os.O_RDONLY)
    assert qid.type == QTFILE and qid.path == os.stat(fs.host("f")).st_ino
    assert iounit >= 0


async def test_open_symlink_is_eloop(fs: Fs) -> None:
    fs.host("f").write_bytes(b"target")
    fs.host("ln").symlink_to("f")
    for flags in (os.O_RDONLY, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(OSError) as exc:
            await fs.open("ln", flags)
        assert exc.value.errno == errno.ELOOP
    assert fs.host("f").read_bytes() == b"target"


async def test_open_vanished_file_is_enoent(fs: Fs) -> None:
    fs.host("f").touch()
    node = await fs.walk("f")
    os.unlink(fs.host("f"))
    with pytest.raises(FileNotFoundError):
        await fs.backend.open(node, os.O_RDONLY)


async def test_open_twice_is_refused_without_leaking(fs: Fs) -> None:
    fs.host("f").write_bytes(b"one")
    node = await fs.open("f")
    before = open_fd_count()
    with pytest.raises(OSError):
        await fs.backend.open(node, os.O_RDONLY)
    assert open_fd_count() == before
    assert await fs.read(node, 10) == b"one"


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY, os.O_RDWR | os.O_NONBLOCK])
async def test_open_fifo_refused_without_blocking(fs: Fs, flags: int) -> None:
    """CVE-2023-2861: a FIFO placed in the export must never be opened."""
    os.mkfifo(fs.host("fifo"))
    try:
        with pytest.raises(OSError) as exc:
            await asyncio.wait_for(fs.open("fifo", flags), 10)
        assert exc.value.errno == errno.ENXIO
    finally:  # should the server ever block in open(), let it go
        for mode in (os.O_RDONLY, os.O_WRONLY):
            try:
                os.close(os.open(fs.host("fifo"), mode | os.O_NONBLOCK))
            except OSError:
                pass


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY])
async def test_open_device_or_socket_refused(fs: Fs, flags: int) -> None:
    os.mknod(fs.host("null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(fs.host("sock")))
        for name in ("null", "sock"):
            with pytest.raises(OSError) as exc:
                await fs.open(name, flags)
            assert exc.value.errno == errno.ENXIO


# --- create ----------------------------------------------------------------------------------

async def test_create_owner_and_node_becomes_file(fs: Fs, caps: Caps) -> None:
    fs.host("d").mkdir()
    node = await fs.walk("d")
    qid, iounit = await fs.backend.create(node, "new", os.O_RDWR, 0o640, CRED)
    assert qid.type == QTFILE and qid.path == os.stat(fs.host("d/new")).st_ino
    assert (await fs.backend.getattr(node))[0] == qid
    await fs.write(node, b"payload")
    assert await fs.read(node, 100) == b"payload"
    st = (await fs.backend.getattr(node))[1]
    assert (st.uid, st.gid) == expected_owner(caps, CRED)
    if caps.host_owners:
        host = os.stat(fs.host("d/new"))
        assert (host.st_uid, host.st_gid) == expected_owner(caps, CRED)


@pytest.mark.parametrize("mode", [0o666, 0o600, 0o4755, 0o2711, 0o000])
async def test_create_mode_exact_despite_umask(fs: Fs, caps: Caps, umask_077: None,
                                               mode: int) -> None:
    node = await fs.create("f", os.O_WRONLY, mode)
    st = (await fs.backend.getattr(node))[1]
    assert stat.S_ISREG(st.mode) and stat.S_IMODE(st.mode) == mode
    if caps.host_modes:
        assert stat.S_IMODE(os.stat(fs.host("f")).st_mode) == mode


async def test_create_existing_with_excl_is_eexist(fs: Fs) -> None:
    fs.host("f").write_bytes(b"keep")
    node = await fs.walk("")
    with pytest.raises(FileExistsError):
        await fs.backend.create(node, "f", os.O_RDWR | os.O_EXCL, 0o600, CRED)
    assert fs.host("f").read_bytes() == b"keep"


async def test_create_existing_without_excl_opens_it_untouched(fs: Fs) -> None:
    fs.host("f").write_bytes(b"keep")
    os.chmod(fs.host("f"), 0o604)
    os.chown(fs.host("f"), 11, 12)
    before = os.stat(fs.host("f"))
    node = await fs.walk("")
    await fs.backend.create(node, "f", os.O_RDWR, 0o600, CRED)
    assert await fs.read(node, 10) == b"keep"
    after = os.stat(fs.host("f"))
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, 11, 12)


async def test_create_over_directory_or_symlink_fails(fs: Fs) -> None:
    fs.host("d").mkdir()
    fs.host("ln").symlink_to("d")
    node = await fs.walk("")
    for name in ("d", "ln"):
        with pytest.raises(OSError) as exc:
            await fs.backend.create(node, name, os.O_RDWR, 0o600, CRED)
        assert exc.value.errno in (errno.EISDIR, errno.ELOOP, errno.EEXIST)
    assert fs.host("ln").is_symlink() and not fs.host("d/ln").exists()


async def test_create_in_file_is_enotdir(fs: Fs) -> None:
    fs.host("f").touch()
    node = await fs.walk("f")
    with pytest.raises(NotADirectoryError):
        await fs.backend.create(node, "x", os.O_RDWR, 0o600, CRED)


# --- mkdir / symlink / mknod -----------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o755, 0o700, 0o1777, 0o2775])
async def test_mkdir(fs: Fs, caps: Caps, umask_077: None, mode: int) -> None:
    qid = await fs.backend.mkdir(fs.root, "d", mode, CRED)
    host = os.stat(fs.host("d"))
    assert qid.type == QTDIR and qid.path == host.st_ino
    st = (await fs.getattr("d"))[1]
    assert stat.S_ISDIR(st.mode) and stat.S_IMODE(st.mode) == mode
    assert (st.uid, st.gid) == expected_owner(caps, CRED)
    if caps.host_modes:
        assert stat.S_IMODE(host.st_mode) == mode
    if caps.host_owners:
        assert (host.st_uid, host.st_gid) == expected_owner(caps, CRED)
    with pytest.raises(FileExistsError):
        await fs.backend.mkdir(fs.root, "d", mode, CRED)


@pytest.mark.parametrize("target", ["plain", "/etc/passwd", "../../../escape", "dangling/x/",
                                    "a b\tc", "é\udcff"])
async def test_symlink_target_kept_verbatim(fs: Fs, caps: Caps, target: str) -> None:
    qid = await fs.backend.symlink(fs.root, "ln", target, CRED)
    assert qid.type == QTSYMLINK and qid.path == os.lstat(fs.host("ln")).st_ino
    if caps.host_file_types:
        assert os.readlink(fs.host("ln")) == target
    node = await fs.walk("ln")
    assert await fs.backend.readlink(node) == target
    st = (await fs.backend.getattr(node))[1]
    assert stat.S_ISLNK(st.mode) and (st.uid, st.gid) == expected_owner(caps, CRED)
    if caps.host_owners:
        host = os.lstat(fs.host("ln"))
        assert (host.st_uid, host.st_gid) == expected_owner(caps, CRED)
    with pytest.raises(FileExistsError):
        await fs.backend.symlink(fs.root, "ln", "other", CRED)


async def test_readlink_of_non_symlink_is_einval(fs: Fs) -> None:
    fs.host("f").touch()
    for node in (await fs.walk("f"), fs.root):
        with pytest.raises(OSError) as exc:
            await fs.backend.readlink(node)
        assert exc.value.errno == errno.EINVAL


async def test_mknod_fifo(fs: Fs, caps: Caps, umask_077: None) -> None:
    qid = await fs.backend.mknod(fs.root, "fifo", stat.S_IFIFO | 0o640, 0, CRED)
    assert qid.type == QTFILE
    st = (await fs.getattr("fifo"))[1]
    assert stat.S_ISFIFO(st.mode) and stat.S_IMODE(st.mode) == 0o640
    assert (st.uid, st.gid) == expected_owner(caps, CRED)
    if caps.host_file_types:
        assert stat.S_ISFIFO(os.lstat(fs.host("fifo")).st_mode)
        with pytest.raises(OSError) as exc:
            await fs.open("fifo", os.O_RDONLY)
        assert exc.value.errno == errno.ENXIO


async def test_mknod_char_device(fs: Fs, caps: Caps) -> None:
    if not caps.mknod_devices:
        pytest.skip("back end cannot create devices")
    await fs.backend.mknod(fs.root, "null", stat.S_IFCHR | 0o600, os.makedev(1, 3), CRED)
    st = (await fs.getattr("null"))[1]
    assert stat.S_ISCHR(st.mode) and stat.S_IMODE(st.mode) == 0o600
    assert st.rdev == os.makedev(1, 3)
    assert (st.uid, st.gid) == expected_owner(caps, CRED)
    if caps.host_file_types:
        host = os.lstat(fs.host("null"))
        assert stat.S_ISCHR(host.st_mode) and host.st_rdev == os.makedev(1, 3)


async def test_mknod_existing_is_eexist(fs: Fs) -> None:
    fs.host("f").touch()
    with pytest.raises(FileExistsError):
        await fs.backend.mknod(fs.root, "f", stat.S_IFIFO | 0o600, 0, CRED)


# --- link ------------------------------------------------------------------------------------

async def test_link(fs: Fs) -> None:
    fs.host("d").mkdir()
    fs.host("f").write_bytes(b"shared")
    node = await fs.walk("f")
    dnode = await fs.walk("d")
    await fs.backend.link(dnode, node, "hard")
    assert os.stat(fs.host("d/hard")).st_ino == os.stat(fs.host("f")).st_ino
    qid, st = await fs.getattr("d/hard")
    assert st.nlink == 2 and qid.path == (await fs.backend.getattr(node))[0].path
    with pytest.raises(FileExistsError):
        await fs.backend.link(dnode, node, "hard")


async def test_link_to_symlink_links_the_symlink(fs: Fs) -> None:
    fs.host("f").touch()
    fs.host("ln").symlink_to("f")
    await fs.backend.link(fs.root, await fs.walk("ln"), "ln2")
    assert os.readlink(fs.host("ln2")) == "f"
    assert os.lstat(fs.host("ln2")).st_ino == os.lstat(fs.host("ln")).st_ino


async def test_link_of_directory_is_eperm(fs: Fs) -> None:
    fs.host("d").mkdir()
    with pytest.raises(PermissionError):
        await fs.backend.link(fs.root, await fs.walk("d"), "d2")
    with pytest.raises(OSError):
        await fs.backend.link(fs.root, fs.root, "r2")
