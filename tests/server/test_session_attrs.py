"""Attributes, qids, xattrs and namespace operations through the dispatcher."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ninep.backends.local import LocalBackend
from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import XATTR_SIZE_MAX



# --- Tgetattr ------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0, p.GETATTR_MODE, p.GETATTR_SIZE | p.GETATTR_MTIME,
                                  p.GETATTR_BASIC, p.GETATTR_ALL])
async def test_getattr_always_returns_the_basic_fields(served: Client, export: Path,
                                                       mask: int) -> None:
    """Whatever the mask asks, the reply carries (and claims) every basic field
    and nothing it does not have (no gen/data_version)."""
    (export / "f").write_bytes(b"12345")
    os.chmod(export / "f", 0o640)
    os.chown(export / "f", 1234, 5678)
    os.utime(export / "f", ns=(1_000_000_001, 2_000_000_002))
    st = os.stat(export / "f")
    root = await served.attach()
    fid = await served.walk(root, ["f"])
    r = await served.getattr(fid, mask)
    assert r.valid & p.GETATTR_BASIC == p.GETATTR_BASIC
    assert r.valid & (p.GETATTR_GEN | p.GETATTR_DATA_VERSION) == 0
    assert (r.mode, r.uid, r.gid, r.nlink, r.size) == (st.st_mode, 1234, 5678, 1, 5)
    assert (r.blksize, r.blocks, r.rdev) == (st.st_blksize, st.st_blocks, 0)
    assert (r.atime_sec, r.atime_nsec, r.mtime_sec, r.mtime_nsec) == (1, 1, 2, 2)
    assert r.ctime_sec * 10**9 + r.ctime_nsec == st.st_ctime_ns
    assert r.qid.path == st.st_ino


async def test_getattr_of_each_file_type(served: Client, export: Path) -> None:
    (export / "d").mkdir()
    (export / "f").touch()
    (export / "l").symlink_to("f")
    os.mkfifo(export / "p")
    root = await served.attach()
    want = {"d": (p.QTDIR, stat.S_IFDIR), "f": (p.QTFILE, stat.S_IFREG),
            "l": (p.QTSYMLINK, stat.S_IFLNK), "p": (p.QTFILE, stat.S_IFIFO)}
    for name, (qtype, fmt) in want.items():
        r = await served.getattr(await served.walk(root, [name]))
        assert (r.qid.type, stat.S_IFMT(r.mode)) == (qtype, fmt), name


# --- qids ----------------------------------------------------------------------------------

async def test_qid_path_is_unique_per_file_and_stable(served: Client, export: Path) -> None:
    for i in range(10):
        (export / f"f{i}").touch()
    os.link(export / "f0", export / "hard")
    root = await served.attach()
    paths = {}
    for name in [f"f{i}" for i in range(10)] + ["hard"]:
        paths[name] = (await served.rpc(p.Twalk(root, 100, [name]))).wqids[0].path
        await served.clunk(100)
    assert len({paths[f"f{i}"] for i in range(10)}) == 10
    assert paths["hard"] == paths["f0"]  # same file, same qid.path
    again = (await served.rpc(p.Twalk(root, 100, ["f3"]))).wqids[0].path
    assert again == paths["f3"]


async def test_qid_version_changes_when_the_file_does(served: Client, export: Path) -> None:
    (export / "f").write_text("x")
    root = await served.attach()
    fid = await served.walk_open(root, ["f"], p.DOTL_RDWR)
    v0 = (await served.getattr(fid)).qid.version
    assert (await served.getattr(fid)).qid.version == v0  # no change, same version
    await served.write(fid, 1, b"more")
    v1 = (await served.getattr(fid)).qid.version
    assert v1 != v0
    await served.rpc(p.Tsetattr(fid, p.SETATTR_MTIME | p.SETATTR_MTIME_SET, 0, 0, 0, 0, 0, 0, 5, 0))
    assert (await served.getattr(fid)).qid.version not in (v0, v1)


# --- Tsetattr ------------------------------------------------------------------------------

def setattr_msg(fid: int, valid: int, mode: int = 0, uid: int = 0, gid: int = 0, size: int = 0,
                atime: tuple[int, int] = (0, 0), mtime: tuple[int, int] = (0, 0)) -> p.Tsetattr:
    return p.Tsetattr(fid, valid, mode, uid, gid, size, *atime, *mtime)


@pytest.fixture
async def target(served: Client, export: Path) -> tuple[Client, int, Path]:
    path = export / "f"
    path.write_bytes(b"0123456789")
    os.chmod(path, 0o644)
    os.utime(path, ns=(10**9, 10**9))
    root = await served.attach()
    return served, await served.walk(root, ["f"]), path


async def test_setattr_mode(target) -> None:
    client, fid, path = target
    await client.rpc(setattr_msg(fid, p.SETATTR_MODE, mode=stat.S_IFREG | 0o4751))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o4751


async def test_setattr_uid_and_gid(target) -> None:
    client, fid, path = target
    await client.rpc(setattr_msg(fid, p.SETATTR_UID, uid=321, gid=999))
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (321, 0)
    await client.rpc(setattr_msg(fid, p.SETATTR_GID, uid=999, gid=654))
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (321, 654)
    await client.rpc(setattr_msg(fid, p.SETATTR_UID | p.SETATTR_GID, uid=p.NOFID, gid=77))
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (321, 77)


@pytest.mark.parametrize("size", [0, 3, 100])
async def test_setattr_size(target, size: int) -> None:
    client, fid, path = target
    await client.rpc(setattr_msg(fid, p.SETATTR_SIZE, size=size))
    assert path.read_bytes() == b"0123456789"[:size].ljust(size, b"\0")


async def test_setattr_size_on_an_open_file(target) -> None:
    client, fid, path = target
    await client.open(fid, p.DOTL_RDWR)
    await client.rpc(setattr_msg(fid, p.SETATTR_SIZE, size=4))
    assert path.read_bytes() == b"0123"


async def test_setattr_times_set_explicitly(target) -> None:
    client, fid, path = target
    await client.rpc(setattr_msg(fid, p.SETATTR_ATIME | p.SETATTR_ATIME_SET, atime=(7, 8)))
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (7_000_000_008, 10**9)
    await client.rpc(setattr_msg(fid, p.SETATTR_MTIME | p.SETATTR_MTIME_SET, atime=(1, 1),
                                 mtime=(9, 10)))
    st = os.stat(path)
    assert (st.st_atime_ns, st.st_mtime_ns) == (7_000_000_008, 9_000_000_010)


@pytest.mark.parametrize("bits,field", [(p.SETATTR_ATIME, "st_atime_ns"),
                                        (p.SETATTR_MTIME, "st_mtime_ns")])
async def test_setattr_times_without_set_mean_now(target, bits: int, field: str) -> None:
    client, fid, path = target
    before = os.stat(path)
    await client.rpc(setattr_msg(fid, bits, atime=(7, 8), mtime=(9, 10)))
    after = os.stat(path)
    assert getattr(after, field) > 10**18  # the current time, not 7 s or 9 s
    other = "st_mtime_ns" if field == "st_atime_ns" else "st_atime_ns"
    assert getattr(after, other) == getattr(before, other)


async def test_setattr_ctime_only_touches_ctime(target) -> None:
    client, fid, path = target
    os.utime(path, ns=(10**9, 10**9))
    before = os.stat(path)
    await client.rpc(setattr_msg(fid, p.SETATTR_CTIME))
    after = os.stat(path)
    assert after.st_ctime_ns >= before.st_ctime_ns
    assert (after.st_mode, after.st_uid, after.st_size, after.st_mtime_ns) == \
        (before.st_mode, before.st_uid, before.st_size, before.st_mtime_ns)


async def test_setattr_with_no_bits_changes_nothing(target) -> None:
    client, fid, path = target
    before = os.stat(path)
    await client.rpc(setattr_msg(fid, 0, mode=0o777, uid=5, gid=5, size=1, atime=(1, 1),
                                 mtime=(1, 1)))
    after = os.stat(path)
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_size, after.st_atime_ns,
            after.st_mtime_ns) == (before.st_mode, before.st_uid, before.st_gid, before.st_size,
                                   before.st_atime_ns, before.st_mtime_ns)


async def test_setattr_all_bits_at_once(target) -> None:
    client, fid, path = target
    valid = (p.SETATTR_MODE | p.SETATTR_UID | p.SETATTR_GID | p.SETATTR_SIZE | p.SETATTR_ATIME
             | p.SETATTR_MTIME | p.SETATTR_CTIME | p.SETATTR_ATIME_SET | p.SETATTR_MTIME_SET)
    await client.rpc(setattr_msg(fid, valid, 0o600, 11, 12, 2, (3, 4), (5, 6)))
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o600, 11, 12, 2)
    assert (st.st_atime_ns, st.st_mtime_ns) == (3_000_000_004, 5_000_000_006)


# --- xattrs --------------------------------------------------------------------------------

@pytest.fixture
async def xclient(serve, xattr_export: Path) -> tuple[Client, int, Path]:
    path = xattr_export / "f"
    path.write_text("x")
    client = await (await serve(backend=LocalBackend(str(xattr_export)))).connect()
    root = await client.attach()
    return client, await client.walk(root, ["f"]), path


async def xattr_read(client: Client, fid: int, name: str) -> bytes:
    newfid = client.new_fid()
    size = (await client.rpc(p.Txattrwalk(fid, newfid, name))).size
    data = await client.read(newfid, 0, size + 10) if size else b""
    assert len(data) == size
    await client.clunk(newfid)
    return data


async def xattr_write(client: Client, fid: int, name: str, value: bytes, flags: int = 0) -> None:
    xfid = await client.walk(fid, [])
    await client.rpc(p.Txattrcreate(xfid, name, len(value), flags))
    for off in range(0, len(value), 1000):
        await client.write(xfid, off, value[off:off + 1000])
    await client.clunk(xfid)


async def test_xattr_read_and_list(xclient) -> None:
    client, fid, path = xclient
    os.setxattr(path, "user.one", b"1")
    os.setxattr(path, "user.two", b"22")
    assert await xattr_read(client, fid, "user.two") == b"22"
    names = (await xattr_read(client, fid, "")).split(b"\0")
    assert {b"user.one", b"user.two"} <= set(names)


async def test_xattr_write_in_pieces(xclient) -> None:
    client, fid, path = xclient
    value = os.urandom(3000)  # ext4 keeps all of a file's xattrs in one 4 KiB block
    await xattr_write(client, fid, "user.big", value)
    assert os.getxattr(path, "user.big") == value
    assert await xattr_read(client, fid, "user.big") == value


async def test_xattr_remove_as_linux_sends_it(xclient) -> None:
    """removexattr(2) in a Linux guest is Txattrcreate(size 0, XATTR_REPLACE)."""
    client, fid, path = xclient
    os.setxattr(path, "user.gone", b"v")
    await xattr_write(client, fid, "user.gone", b"", os.XATTR_REPLACE)
    assert "user.gone" not in os.listxattr(path)


async def test_xattr_create_flag_is_honoured(xclient, expect_errno) -> None:
    client, fid, path = xclient
    os.setxattr(path, "user.there", b"v")
    xfid = await client.walk(fid, [])
    await client.rpc(p.Txattrcreate(xfid, "user.there", 1, os.XATTR_CREATE))
    await client.write(xfid, 0, b"w")
    assert await expect_errno(client, p.Tclunk(xfid)) == errno.EEXIST
    assert await expect_errno(client, p.Tclunk(xfid)) == errno.EBADF  # freed all the same
    assert os.getxattr(path, "user.there") == b"v"


async def test_missing_xattr_is_enodata(xclient, expect_errno) -> None:
    client, fid, _ = xclient
    assert await expect_errno(client, p.Txattrwalk(fid, 200, "user.none")) == errno.ENODATA
    assert await expect_errno(client, p.Tgetattr(200, 0)) == errno.EBADF


async def test_xattrs_are_capped_at_64k(xclient, expect_errno) -> None:
    client, fid, _ = xclient
    xfid = await client.walk(fid, [])
    assert await expect_errno(client, p.Txattrcreate(xfid, "user.huge", XATTR_SIZE_MAX + 1,
                                                     0)) == errno.E2BIG


async def test_xattr_short_value_is_refused_at_clunk(xclient, expect_errno) -> None:
    client, fid, path = xclient
    xfid = await client.walk(fid, [])
    await client.rpc(p.Txattrcreate(xfid, "user.short", 10, 0))
    await client.write(xfid, 0, b"abc")
    assert await expect_errno(client, p.Twrite(xfid, 0, b"abc")) == errno.EINVAL  # not in order
    assert await expect_errno(client, p.Tclunk(xfid)) == errno.EINVAL
    assert "user.short" not in os.listxattr(path)


# --- namespace operations -----------------------------------------------------------------

async def test_symlink_readlink_mknod_link(served: Client, export: Path) -> None:
    root = await served.attach()
    qid = (await served.rpc(p.Tsymlink(root, "l", "some/target", 0))).qid
    assert qid.type == p.QTSYMLINK
    assert os.readlink(export / "l") == "some/target"
    assert (await served.rpc(p.Treadlink(await served.walk(root, ["l"])))).target == "some/target"
    await served.rpc(p.Tmknod(root, "fifo", stat.S_IFIFO | 0o600, 0, 0, 0))
    assert stat.S_ISFIFO(os.lstat(export / "fifo").st_mode)
    (export / "f").touch()
    await served.rpc(p.Tlink(root, await served.walk(root, ["f"]), "f2"))
    assert os.stat(export / "f2").st_ino == os.stat(export / "f").st_ino


async def test_renames_and_unlinkat(served: Client, export: Path, expect_errno) -> None:
    (export / "d").mkdir()
    (export / "f").write_text("x")
    root = await served.attach()
    d = await served.walk(root, ["d"])
    f = await served.walk(root, ["f"])
    await served.rpc(p.Trename(f, d, "g"))
    assert (export / "d" / "g").read_text() == "x"
    assert (await served.getattr(f)).size == 1  # the fid follows its file
    await served.rpc(p.Trenameat(d, "g", root, "h"))
    assert (export / "h").exists()
    assert await expect_errno(served, p.Tunlinkat(root, "d", 0)) == errno.EISDIR
    await served.rpc(p.Tunlinkat(root, "d", p.AT_REMOVEDIR))
    await served.rpc(p.Tunlinkat(root, "h", 0))
    assert sorted(os.listdir(export)) == []
    assert await expect_errno(served, p.Tunlinkat(root, "x", 0x1)) == errno.EINVAL


async def test_statfs(served: Client, export: Path) -> None:
    root = await served.attach()
    reply = await served.rpc(p.Tstatfs(root))
    vfs = os.statvfs(export)
    assert (reply.bsize, reply.blocks, reply.namelen) == (vfs.f_bsize, vfs.f_blocks, vfs.f_namemax)


async def test_locks(served: Client, export: Path, expect_errno) -> None:
    (export / "f").write_text("x")
    root = await served.attach()
    a = await served.walk_open(root, ["f"], p.DOTL_RDWR)
    b = await served.walk_open(root, ["f"], p.DOTL_RDWR)
    ok = await served.rpc(p.Tlock(a, p.LOCK_TYPE_WRLCK, 0, 0, 10, 1, "c"))
    assert ok == p.Rlock(p.LOCK_SUCCESS)
    assert await served.rpc(p.Tlock(b, p.LOCK_TYPE_WRLCK, 0, 0, 10, 2, "c")) == \
        p.Rlock(p.LOCK_BLOCKED)
    held = await served.rpc(p.Tgetlock(b, p.LOCK_TYPE_WRLCK, 0, 10, 2, "c"))
    assert held.type == p.LOCK_TYPE_WRLCK
    await served.rpc(p.Tlock(a, p.LOCK_TYPE_UNLCK, 0, 0, 10, 1, "c"))
    free = await served.rpc(p.Tgetlock(b, p.LOCK_TYPE_WRLCK, 0, 10, 2, "c"))
    assert free.type == p.LOCK_TYPE_UNLCK
    assert await expect_errno(served, p.Tlock(a, 7, 0, 0, 10, 1, "c")) == errno.EINVAL
    assert await expect_errno(served, p.Tlock(root, p.LOCK_TYPE_RDLCK, 0, 0, 1, 1, "c")) == \
        errno.EBADF
