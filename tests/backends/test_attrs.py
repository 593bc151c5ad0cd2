"""getattr, setattr (on closed and on open nodes), statfs."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ninep.backends.base import UTIME_NOW, Node, SetAttr
from ninep.protocol.ninep import QTDIR, QTFILE, QTSYMLINK

from .conftest import CRED, Caps, Fs

OLD = (1_000_000_000, 123_456_789)  # 2001-09-09, with a nanosecond part
OLD_NS = OLD[0] * 10**9 + OLD[1]


def wait_for_clock_past(ns: int, scratch: Path) -> None:
    """Return once the kernel's file-time clock has moved past *ns*, so that the
    next inode change gets a strictly later timestamp (no timing asserted)."""
    for _ in range(10_000):
        os.utime(scratch)
        if os.stat(scratch).st_ctime_ns > ns:
            return
        time.sleep(0.001)
    raise AssertionError("file-time clock did not advance")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "clock"
    path.touch()
    return path


# --- getattr ---------------------------------------------------------------------------------

async def test_getattr_regular_file_matches_host(fs: Fs, caps: Caps) -> None:
    fs.host("f").write_bytes(b"hello")
    os.chmod(fs.host("f"), 0o640)
    qid, st = await fs.getattr("f")
    host = os.lstat(fs.host("f"))
    assert qid.type == QTFILE and qid.path == host.st_ino
    assert stat.S_ISREG(st.mode) and stat.S_IMODE(st.mode) == 0o640
    assert (st.size, st.nlink) == (5, 1)
    assert (st.atime_ns, st.mtime_ns, st.ctime_ns) == (host.st_atime_ns, host.st_mtime_ns,
                                                     host.st_ctime_ns)
    assert st.blksize > 0 and st.blocks == host.st_blocks
    if caps.host_owners:
        assert (st.uid, st.gid) == (host.st_uid, host.st_gid)


async def test_getattr_types(fs: Fs) -> None:
    fs.host("d/e").mkdir(parents=True)
    fs.host("d/f").mkdir()
    fs.host("ln").symlink_to("some/where/else")
    os.mkfifo(fs.host("fifo"))
    qid, st = await fs.getattr("d")
    assert qid.type == QTDIR and stat.S_ISDIR(st.mode) and st.nlink == 4
    qid, st = await fs.getattr("ln")
    assert qid.type == QTSYMLINK and stat.S_ISLNK(st.mode) and st.size == len("some/where/else")
    qid, st = await fs.getattr("fifo")
    assert qid.type == QTFILE and stat.S_ISFIFO(st.mode)


async def test_qid_path_unique_per_file_and_shared_by_hard_links(fs: Fs) -> None:
    names = [f"f{i}" for i in range(10)] + [f"d{i}" for i in range(5)]
    for name in names:
        (fs.host(name).mkdir() if name.startswith("d") else fs.host(name).touch())
    os.link(fs.host("f0"), fs.host("hard"))
    paths = [(await fs.getattr(name))[0].path for name in names]
    assert len(set(paths)) == len(names)
    assert (await fs.getattr("hard"))[0].path == paths[0]
    assert (await fs.getattr("hard"))[1].nlink == 2


async def test_qid_version_changes_on_write_and_setattr(fs: Fs) -> None:
    node = await fs.create("f")
    v0 = (await fs.backend.getattr(node))[0].version
    await fs.write(node, b"more data")
    v1 = (await fs.backend.getattr(node))[0].version
    assert v1 != v0
    await fs.backend.setattr(node, SetAttr(mtime=OLD))
    assert (await fs.backend.getattr(node))[0].version not in (v0, v1)


async def test_getattr_of_vanished_path_is_enoent(fs: Fs) -> None:
    fs.host("f").touch()
    node = await fs.walk("f")
    os.unlink(fs.host("f"))
    with pytest.raises(FileNotFoundError):
        await fs.backend.getattr(node)


# --- setattr ---------------------------------------------------------------------------------

Target = Callable[[str], Awaitable[Node]]


@pytest.fixture(params=["closed", "open-rdonly", "open-rdwr"])
def target(request: pytest.FixtureRequest, fs: Fs) -> Target:
    """How the node under change is held: only walked, or opened."""
    async def get(path: str) -> Node:
        if request.param == "closed":
            return await fs.walk(path)
        is_dir = fs.host(path).is_dir()
        flags = os.O_RDONLY if is_dir or request.param == "open-rdonly" else os.O_RDWR
        return await fs.open(path, flags)
    return get


@pytest.mark.parametrize("mode", [0o600, 0o4755, 0o2750, 0o1777, 0o6711, 0])
async def test_setattr_mode_file(fs: Fs, caps: Caps, target: Target, mode: int) -> None:
    fs.host("f").touch()
    node = await target("f")
    await fs.backend.setattr(node, SetAttr(mode=mode))
    st = (await fs.backend.getattr(node))[1]
    assert stat.S_ISREG(st.mode) and stat.S_IMODE(st.mode) == mode
    if caps.host_modes:
        assert stat.S_IMODE(os.stat(fs.host("f")).st_mode) == mode


async def test_setattr_mode_dir_sticky(fs: Fs, caps: Caps, target: Target) -> None:
    fs.host("d").mkdir()
    node = await target("d")
    await fs.backend.setattr(node, SetAttr(mode=0o1777))
    st = (await fs.backend.getattr(node))[1]
    assert stat.S_ISDIR(st.mode) and stat.S_IMODE(st.mode) == 0o1777
    if caps.host_modes:
        assert stat.S_IMODE(os.stat(fs.host("d")).st_mode) == 0o1777


async def test_setattr_owner(fs: Fs, caps: Caps, target: Target) -> None:
    fs.host("f").touch()
    node = await target("f")
    await fs.backend.setattr(node, SetAttr(uid=CRED.uid, gid=CRED.gid))
    st = (await fs.backend.getattr(node))[1]
    assert (st.uid, st.gid) == CRED
    await fs.backend.setattr(node, SetAttr(gid=777))
    st = (await fs.backend.getattr(node))[1]
    assert (st.uid, st.gid) == (CRED.uid, 777)
    await fs.backend.setattr(node, SetAttr(uid=888))
    st = (await fs.backend.getattr(node))[1]
    assert (st.uid, st.gid) == (888, 777)
    if caps.host_owners:
        host = os.stat(fs.host("f"))
        assert (host.st_uid, host.st_gid) == (888, 777)


async def test_setattr_chown_keeps_mode_given_with_it(fs: Fs, target: Target) -> None:
    """chown clears set-id bits; a mode in the same request must survive it."""
    fs.host("f").touch()
    node = await target("f")
    await fs.backend.setattr(node, SetAttr(mode=0o6755, uid=CRED.uid, gid=CRED.gid))
    st = (await fs.backend.getattr(node))[1]
    assert stat.S_IMODE(st.mode) == 0o6755 and (st.uid, st.gid) == CRED


async def test_setattr_size_shrink_and_grow(fs: Fs, target: Target) -> None:
    fs.host("f").write_bytes(b"0123456789")
    node = await target("f")
    await fs.backend.setattr(node, SetAttr(size=4))
    assert fs.host("f").read_bytes() == b"0123"
    assert (await fs.backend.getattr(node))[1].size == 4
    await fs.backend.setattr(node, SetAttr(size=100))
    assert fs.host("f").read_bytes() == b"0123" + bytes(96)
    await fs.backend.setattr(node, SetAttr(size=0))
    assert fs.host("f").read_bytes() == b""


async def test_setattr_size_of_directory_fails(fs: Fs, target: Target) -> None:
    fs.host("d").mkdir()
    node = await target("d")
    with pytest.raises(OSError) as exc:
        await fs.backend.setattr(node, SetAttr(size=0))
    assert exc.value.errno in (errno.EISDIR, errno.EINVAL)


async def test_setattr_explicit_times(fs: Fs, target: Target) -> None:
    fs.host("f").touch()
    node = await target("f")
    await fs.backend.setattr(node, SetAttr(atime=OLD, mtime=(OLD[0] + 5, 7)))
    st = (await fs.backend.getattr(node))[1]
    assert (st.atime_ns, st.mtime_ns) == (OLD_NS, (OLD[0] + 5) * 10**9 + 7)
    host = os.stat(fs.host("f"))
    assert (host.st_atime_ns, host.st_mtime_ns) == (st.atime_ns, st.mtime_ns)


async def test_setattr_only_mtime_leaves_atime(fs: Fs, target: Target) -> None:
    fs.host("f").touch()
    node = await target("f")
    await fs.backend.setattr(node, SetAttr(atime=OLD, mtime=OLD))
    await fs.backend.setattr(node, SetAttr(mtime=(2_000_000_000, 0)))
    st = (await fs.backend.getattr(node))[1]
    assert (st.atime_ns, st.mtime_ns) == (OLD_NS, 2_000_000_000 * 10**9)
    await fs.backend.setattr(node, SetAttr(atime=(1_500_000_000, 1)))
    st = (await fs.backend.getattr(node))[1]
    assert (st.atime_ns, st.mtime_ns) == (1_500_000_000 * 10**9 + 1, 2_000_000_000 * 10**9)


async def test_setattr_utime_now(fs: Fs, target: Target) -> None:
    fs.host("f").touch()
    node = await target("f")
    await fs.backend.setattr(node, SetAttr(atime=OLD, mtime=OLD))
    await fs.backend.setattr(node, SetAttr(mtime=(0, UTIME_NOW)))
    st = (await fs.backend.getattr(node))[1]
    assert st.atime_ns == OLD_NS
    assert abs(st.mtime_ns - time.time_ns()) < 3600 * 10**9
    await fs.backend.setattr(node, SetAttr(atime=(0, UTIME_NOW)))
    st = (await fs.backend.getattr(node))[1]
    assert abs(st.atime_ns - time.time_ns()) < 3600 * 10**9


async def test_setattr_ctime_only_touches_ctime(fs: Fs, target: Target, scratch: Path) -> None:
    fs.host("f").write_bytes(b"data")
    os.utime(fs.host("f"), ns=(OLD_NS, OLD_NS))
    node = await target("f")
    before = (await fs.backend.getattr(node))[1]
    wait_for_clock_past(before.ctime_ns, scratch)
    await fs.backend.setattr(node, SetAttr(ctime=True))
    after = (await fs.backend.getattr(node))[1]
    assert after.ctime_ns > before.ctime_ns
    assert (after.atime_ns, after.mtime_ns, after.mode, after.uid, after.gid, after.size) == \
        (before.atime_ns, before.mtime_ns, before.mode, before.uid, before.gid, before.size)


async def test_setattr_all_fields_at_once(fs: Fs, target: Target) -> None:
    fs.host("f").write_bytes(b"abcdef")
    node = await target("f")
    await fs.backend.setattr(node, SetAttr(mode=0o751, uid=CRED.uid, gid=CRED.gid, size=2,
                                           atime=OLD, mtime=OLD, ctime=True))
    st = (await fs.backend.getattr(node))[1]
    assert (stat.S_IMODE(st.mode), st.uid, st.gid, st.size, st.atime_ns, st.mtime_ns) == \
        (0o751, CRED.uid, CRED.gid, 2, OLD_NS, OLD_NS)


async def test_setattr_root_directory(fs: Fs, caps: Caps) -> None:
    await fs.backend.setattr(fs.root, SetAttr(mode=0o751, mtime=OLD))
    st = (await fs.backend.getattr(fs.root))[1]
    assert stat.S_IMODE(st.mode) == 0o751 and st.mtime_ns == OLD_NS
    if caps.host_modes:
        assert stat.S_IMODE(os.stat(fs.export).st_mode) == 0o751


async def test_setattr_missing_file_is_enoent(fs: Fs) -> None:
    fs.host("f").touch()
    node = await fs.walk("f")
    os.unlink(fs.host("f"))
    for change in (SetAttr(mode=0o600), SetAttr(uid=1), SetAttr(size=0), SetAttr(mtime=OLD)):
        with pytest.raises(FileNotFoundError):
            await fs.backend.setattr(node, change)


# --- statfs ----------------------------------------------------------------------------------

async def test_statfs_sane(fs: Fs) -> None:
    fs.host("d").mkdir()
    node = await fs.walk("d")
    s = await fs.backend.statfs(node)
    host = os.statvfs(fs.export)
    assert s.bsize == host.f_bsize > 0
    assert s.blocks == host.f_blocks >= s.bfree >= s.bavail
    assert s.files >= s.ffree
    assert s.namelen == host.f_namemax == 255
    assert s.fsid == host.f_fsid
    at_root = await fs.backend.statfs(fs.root)
    stable = lambda r: (r.type, r.bsize, r.blocks, r.files, r.fsid, r.namelen)  # noqa: E731
    assert stable(at_root) == stable(s)
