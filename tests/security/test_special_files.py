"""Host device nodes, FIFOs and sockets placed in the export (CVE-2023-2861 class).

QEMU's CVE-2023-2861: the guest could open a device node or FIFO the host
had in the export (or the guest made with mknod) and so reach a host device.
Policy: every open of anything but a regular file or directory is refused
with ENXIO, *without side effects*: the server never opens the special file
at all (it pins the inode with O_PATH, looks, and refuses), so a FIFO gains
no reader or writer and nothing blocks, and a device driver's open is never
called.  inotify proves the "never opened": every successful open(2) raises
IN_OPEN, while O_PATH pinning does not.  The device used is /dev/null's
(char 1:3), which opens for anyone in any mode, so a server that tried to
open it would be seen, and it is harmless if the protection fails.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from collections.abc import Iterator

import pytest

from ninep.protocol import ninep as p

from .conftest import EscapeRig
from .harness import OpenWatch, expect_error, fd_count, rpc

NULL_DEV = os.makedev(1, 3)
OPEN_FLAGS = {
    "rdonly": p.DOTL_RDONLY, "wronly": p.DOTL_WRONLY, "rdwr": p.DOTL_RDWR,
    "wronly-trunc": p.DOTL_WRONLY | p.DOTL_TRUNC,
    "rdonly-nonblock": p.DOTL_RDONLY | p.DOTL_NONBLOCK,
}


def fifo_has_reader(path: str) -> bool:
    """Opening a FIFO's write end without blocking fails with ENXIO when nobody reads."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        assert exc.errno == errno.ENXIO
        return False
    os.close(fd)
    return True


@pytest.fixture
def specials(rig: EscapeRig) -> Iterator[dict[str, str]]:
    """A FIFO, a char device node and a bound Unix socket in the export, each
    watched for opens: the test fails if the server opened any of them."""
    paths = {"fifo": str(rig.export / "fifo"), "chardev": str(rig.export / "chardev"),
             "sock": str(rig.export / "sock")}
    os.mkfifo(paths["fifo"])
    try:
        os.mknod(paths["chardev"], stat.S_IFCHR | 0o666, NULL_DEV)
    except PermissionError:
        pytest.skip("needs CAP_MKNOD to place a device node")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(paths["sock"])
    sock.close()
    with OpenWatch(*paths.values()) as watch:
        yield paths
        assert not watch.opened(), "the server opened a special file"


@pytest.mark.parametrize("flags", OPEN_FLAGS)
@pytest.mark.parametrize("kind", ["fifo", "chardev", "sock"])
async def test_cve_2023_2861_lopen_special_file_is_enxio(rig: EscapeRig, specials: dict[str, str],
                                                         kind: str, flags: str) -> None:
    """CVE-2023-2861: Tlopen of a FIFO/device/socket answers ENXIO at once; nothing opened."""
    fid = await rig.walk(kind)
    before_fds = fd_count()
    await expect_error(rig.client, p.Tlopen(fid, OPEN_FLAGS[flags]), errno.ENXIO)
    assert fd_count() == before_fds
    assert not fifo_has_reader(specials["fifo"])
    await expect_error(rig.client, p.Tread(fid, 0, 100), errno.EBADF)


@pytest.mark.parametrize("flags", ["rdwr", "wronly", "wronly-trunc"])
@pytest.mark.parametrize("kind", ["fifo", "chardev", "sock"])
async def test_cve_2023_2861_lcreate_on_special_name(rig: EscapeRig, specials: dict[str, str],
                                                     kind: str, flags: str) -> None:
    """CVE-2023-2861: Tlcreate (O_CREAT without O_EXCL) on an existing special file's name
    must not open it: a blocking FIFO open would hang a worker, a device open reaches
    the host device."""
    dfid = await rig.walk()
    msg = p.Tlcreate(dfid, kind, OPEN_FLAGS[flags] | p.DOTL_CREATE, 0o644, 0)
    await expect_error(rig.client, msg, errno.ENXIO, errno.EEXIST)
    assert not fifo_has_reader(specials["fifo"])
    assert stat.S_ISFIFO(os.lstat(specials["fifo"]).st_mode)


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
async def test_cve_2023_2861_truncate_special_file_opens_nothing(
        rig: EscapeRig, specials: dict[str, str], kind: str) -> None:
    """CVE-2023-2861: Tsetattr(size) on a path fid of a special file fails without
    opening it (the truncate path must not open a device to find out what it is)."""
    fid = await rig.walk(kind)
    await expect_error(rig.client, p.Tsetattr(fid, p.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0),
                       errno.EINVAL, errno.ENXIO)


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
async def test_cve_2023_2861_metadata_ops_on_special_file_open_nothing(
        rig: EscapeRig, specials: dict[str, str], kind: str) -> None:
    """CVE-2023-2861: getattr, chmod, chown, utimes and xattr calls act on the node
    without opening it (the fixture's inotify watch would see an open)."""
    fid = await rig.walk(kind)
    await rig.client.getattr(fid)
    for valid in (p.SETATTR_MODE, p.SETATTR_UID, p.SETATTR_ATIME | p.SETATTR_MTIME,
                  p.SETATTR_CTIME):
        await rpc(rig.client, p.Tsetattr(fid, valid, 0o600, 0, 0, 0, 0, 0, 0, 0))
    for name in ("", "user.x"):
        try:
            await rpc(rig.client, p.Txattrwalk(fid, rig.client.new_fid(), name))
        except OSError as exc:
            assert exc.errno in (errno.ENODATA, errno.EPERM, errno.EOPNOTSUPP), exc


async def test_cve_2023_2861_fifo_with_host_writer_is_still_refused(rig: EscapeRig) -> None:
    """CVE-2023-2861: even with a host process holding the FIFO open, the guest gets ENXIO
    and no bytes from it."""
    fifo = str(rig.export / "busy_fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(writer, b"host pipe data")
        fid = await rig.walk("busy_fifo")
        for flags in (p.DOTL_RDONLY, p.DOTL_RDWR):
            await expect_error(rig.client, p.Tlopen(fid, flags), errno.ENXIO)
        assert os.read(reader, 100) == b"host pipe data"
    finally:
        os.close(writer)
        os.close(reader)


@pytest.mark.parametrize("mode,rdev", [(stat.S_IFIFO | 0o666, 0),
                                       (stat.S_IFCHR | 0o666, NULL_DEV),
                                       (stat.S_IFSOCK | 0o666, 0)], ids=["fifo", "chardev", "sock"])
async def test_cve_2023_2861_guest_made_special_file_cannot_be_opened(
        rig: EscapeRig, mode: int, rdev: int) -> None:
    """CVE-2023-2861: a node the guest made itself with Tmknod is refused the same way."""
    try:
        await rpc(rig.client, p.Tmknod(rig.root, "made", mode, os.major(rdev), os.minor(rdev), 0))
    except OSError as exc:
        assert exc.errno == errno.EPERM  # no CAP_MKNOD: nothing to open
        return
    fid = await rig.walk("made")
    with OpenWatch(rig.export / "made") as watch:
        for flags in (p.DOTL_RDONLY, p.DOTL_WRONLY, p.DOTL_RDWR):
            await expect_error(rig.client, p.Tlopen(fid, flags), errno.ENXIO)
        await expect_error(rig.client, p.Tlcreate(await rig.walk(), "made", p.DOTL_RDWR, 0o644, 0),
                           errno.ENXIO, errno.EEXIST)
        assert not watch.opened(), "the server opened the node"


async def test_cve_2023_2861_blocking_fifo_open_does_not_hang_server(
        rig: EscapeRig, specials: dict[str, str]) -> None:
    """CVE-2023-2861: many concurrent opens of a reader-less FIFO all answer promptly,
    so no worker thread is left blocked in open(2)."""
    fids = [await rig.walk("fifo") for _ in range(16)]
    replies = await asyncio.wait_for(asyncio.gather(
        *(rig.client.start(p.Tlopen(fid, p.DOTL_RDONLY))[1] for fid in fids)), 10)
    assert all(isinstance(r, p.Rlerror) and r.ecode == errno.ENXIO for r in replies)
    assert (await rig.client.read(await rig.client.walk_open(rig.root, ["file.txt"]), 0, 5))
