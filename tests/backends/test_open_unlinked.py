"""A file the guest holds open keeps working after its name is gone.

Each test opens export/d/f, then takes the name away in one of several ways
(with a host fd kept on the original inode to check effects), and runs one
operation through the open node: it must act on the original file, never on
whatever now has its old name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from ninep.backends.base import Node, SetAttr
from ninep.protocol.ninep import LOCK_SUCCESS, LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK, LOCK_TYPE_WRLCK

from .conftest import CRED, Caps, Fs


TakeNameAway = Callable[[Fs], None]


def unlink(fs: Fs) -> None:
    os.unlink(fs.host("d/f"))


def replace(fs: Fs) -> None:
    """Unlink, then put another file under the old name."""
    os.unlink(fs.host("d/f"))
    fs.host("d/f").write_bytes(b"impostor")


def remove_parent(fs: Fs) -> None:
    os.unlink(fs.host("d/f"))
    os.rmdir(fs.host("d"))


def rename_on_host(fs: Fs) -> None:
    """Moved by someone else: the back end cannot re-point the node."""
    fs.host("elsewhere").mkdir()
    os.rename(fs.host("d/f"), fs.host("elsewhere/g"))


@dataclass
class Orphan:
    node: Node
    host_fd: int  # on the original inode

    def host_stat(self) -> os.stat_result:
        return os.fstat(self.host_fd)

    def host_data(self) -> bytes:
        return os.pread(self.host_fd, 1 << 20, 0)


@pytest.fixture(params=[unlink, replace, remove_parent, rename_on_host],
                ids=["unlinked", "replaced", "parent-removed", "renamed-on-host"])
def take_name_away(request: pytest.FixtureRequest) -> TakeNameAway:
    return request.param


@pytest.fixture(params=[os.O_RDWR, os.O_RDONLY], ids=["rdwr", "rdonly"])
def open_flags(request: pytest.FixtureRequest) -> int:
    return request.param


@pytest.fixture
async def orphan(fs: Fs, take_name_away: TakeNameAway, open_flags: int) -> AsyncIterator[Orphan]:
    fs.host("d").mkdir()
    fs.host("d/f").write_bytes(b"original")
    node = await fs.open("d/f", open_flags)
    host_fd = os.open(fs.host("d/f"), os.O_RDONLY)
    take_name_away(fs)
    yield Orphan(node, host_fd)
    os.close(host_fd)


def impostor_untouched(fs: Fs) -> None:
    if fs.host("d/f").exists():
        assert fs.host("d/f").read_bytes() == b"impostor"


async def test_read(fs: Fs, orphan: Orphan) -> None:
    assert await fs.read(orphan.node, 100) == b"original"


async def test_write(fs: Fs, orphan: Orphan, open_flags: int) -> None:
    if open_flags == os.O_RDONLY:
        with pytest.raises(OSError) as exc:
            await fs.write(orphan.node, b"ORIG", 0)
        assert exc.value.errno == errno.EBADF
        assert orphan.host_data() == b"original"
    else:
        await fs.write(orphan.node, b"ORIG", 0)
        assert orphan.host_data() == b"ORIGinal"
    impostor_untouched(fs)


async def test_getattr(fs: Fs, orphan: Orphan) -> None:
    qid, st = await fs.backend.getattr(orphan.node)
    host = orphan.host_stat()
    assert qid.path == host.st_ino and st.size == 8 and st.nlink == host.st_nlink


async def test_chmod_chown(fs: Fs, caps: Caps, orphan: Orphan) -> None:
    change = SetAttr(mode=0o4711, uid=CRED.uid, gid=CRED.gid)
    if caps.metadata_by_name:
        with pytest.raises(FileNotFoundError):
            await fs.backend.setattr(orphan.node, change)
        impostor_untouched(fs)
        return
    await fs.backend.setattr(orphan.node, change)
    st = (await fs.backend.getattr(orphan.node))[1]
    assert (stat.S_IMODE(st.mode), st.uid, st.gid) == (0o4711, CRED.uid, CRED.gid)
    host = orphan.host_stat()
    if caps.host_modes:
        assert stat.S_IMODE(host.st_mode) == 0o4711
    if caps.host_owners:
        assert (host.st_uid, host.st_gid) == CRED
    impostor_untouched(fs)


async def test_truncate(fs: Fs, orphan: Orphan) -> None:
    await fs.backend.setattr(orphan.node, SetAttr(size=3))
    assert orphan.host_data() == b"ori"
    await fs.backend.setattr(orphan.node, SetAttr(size=5))
    assert orphan.host_data() == b"ori\0\0"
    impostor_untouched(fs)


async def test_utimens(fs: Fs, orphan: Orphan) -> None:
    await fs.backend.setattr(orphan.node, SetAttr(atime=(1_000_000_000, 5), mtime=(1_000_000_001, 6)))
    host = orphan.host_stat()
    assert (host.st_atime_ns, host.st_mtime_ns) == (1_000_000_000_000_000_005,
                                                    1_000_000_001_000_000_006)
    impostor_untouched(fs)


async def test_xattrs(fs: Fs, orphan: Orphan) -> None:
    await fs.backend.xattr_set(orphan.node, "user.orphan", b"yes", 0)
    assert await fs.backend.xattr_get(orphan.node, "user.orphan") == b"yes"
    assert b"user.orphan\0" in await fs.backend.xattr_list(orphan.node)
    assert os.getxattr(orphan.host_fd, "user.orphan") == b"yes"
    await fs.backend.xattr_remove(orphan.node, "user.orphan")
    assert "user.orphan" not in os.listxattr(orphan.host_fd)
    if fs.host("d/f").exists():
        assert os.listxattr(fs.host("d/f")) == []


async def test_fsync(fs: Fs, orphan: Orphan) -> None:
    await fs.backend.fsync(orphan.node, False)
    await fs.backend.fsync(orphan.node, True)
    assert orphan.host_data() == b"original"


async def test_lock(fs: Fs, orphan: Orphan, open_flags: int) -> None:
    ltype = LOCK_TYPE_RDLCK if open_flags == os.O_RDONLY else LOCK_TYPE_WRLCK  # as the open allows
    assert await fs.backend.lock(orphan.node, ltype, 0, 0, 1, "") == LOCK_SUCCESS
    res = await fs.backend.getlock(orphan.node, LOCK_TYPE_WRLCK, 0, 0, 1, "")
    assert res.type == LOCK_TYPE_UNLCK  # its own lock never conflicts
    other = os.open(f"/proc/self/fd/{orphan.host_fd}", os.O_RDWR)  # the same inode, anew
    try:
        with pytest.raises(OSError):
            fcntl.lockf(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert await fs.backend.lock(orphan.node, LOCK_TYPE_UNLCK, 0, 0, 1, "") == LOCK_SUCCESS
        fcntl.lockf(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)
