"""Opening, reading, writing and listing through the dispatcher."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import dotl_to_host_flags

MSIZE = 8192


@pytest.fixture
async def small(serve) -> Client:
    """A client that negotiated an msize of 8192."""
    return await (await serve()).connect(msize=MSIZE)


# --- open flags ----------------------------------------------------------------------------

@pytest.mark.parametrize("dotl,host", [
    (p.DOTL_RDONLY, os.O_RDONLY),
    (p.DOTL_WRONLY | p.DOTL_TRUNC, os.O_WRONLY | os.O_TRUNC),
    (p.DOTL_RDWR | p.DOTL_APPEND | p.DOTL_NONBLOCK, os.O_RDWR | os.O_APPEND | os.O_NONBLOCK),
    (p.DOTL_RDWR | p.DOTL_DSYNC | p.DOTL_SYNC, os.O_RDWR | os.O_DSYNC | os.O_SYNC),
    (p.DOTL_RDONLY | p.DOTL_DIRECTORY | p.DOTL_LARGEFILE, os.O_RDONLY | os.O_DIRECTORY),
    # What a server must not honour is dropped (and EXCL/CREAT only come with Tlcreate).
    (p.DOTL_RDONLY | p.DOTL_NOCTTY | p.DOTL_FASYNC | p.DOTL_DIRECT | p.DOTL_NOATIME
     | p.DOTL_CLOEXEC | p.DOTL_CREATE | p.DOTL_EXCL, os.O_RDONLY),
])
def test_dotl_flags_translate_to_host_flags(dotl: int, host: int) -> None:
    assert dotl_to_host_flags(dotl) == host | os.O_NOFOLLOW | os.O_CLOEXEC


def test_dotl_create_flags_keep_excl_and_add_creat() -> None:
    flags = dotl_to_host_flags(p.DOTL_WRONLY | p.DOTL_CREATE | p.DOTL_EXCL, create=True)
    assert flags == os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


async def test_lopen_trunc_truncates(served: Client, export: Path) -> None:
    (export / "f").write_text("old contents")
    root = await served.attach()
    await served.walk_open(root, ["f"], p.DOTL_WRONLY | p.DOTL_TRUNC)
    assert (export / "f").read_text() == ""


async def test_lopen_append_appends_whatever_the_offset(served: Client, export: Path) -> None:
    (export / "f").write_text("abc")
    root = await served.attach()
    fid = await served.walk_open(root, ["f"], p.DOTL_WRONLY | p.DOTL_APPEND)
    await served.write(fid, 0, b"def")
    assert (export / "f").read_text() == "abcdef"


async def test_lopen_reports_qid_and_iounit(small: Client, export: Path) -> None:
    (export / "f").write_text("x")
    root = await small.attach()
    fid = await small.walk(root, ["f"])
    reply = await small.open(fid)
    assert reply.qid.path == os.stat(export / "f").st_ino
    assert 0 < reply.iounit <= MSIZE - p.IOHDRSZ


async def test_open_twice_is_refused(served: Client, export: Path, expect_errno) -> None:
    (export / "f").write_text("x")
    root = await served.attach()
    fid = await served.walk_open(root, ["f"])
    assert await expect_errno(served, p.Tlopen(fid, 0)) == errno.EINVAL


async def test_io_needs_the_right_open_mode(served: Client, export: Path, expect_errno) -> None:
    (export / "f").write_text("x")
    root = await served.attach()
    walked = await served.walk(root, ["f"])
    assert await expect_errno(served, p.Tread(walked, 0, 1)) == errno.EBADF
    ro = await served.walk_open(root, ["f"], p.DOTL_RDONLY)
    assert await expect_errno(served, p.Twrite(ro, 0, b"y")) == errno.EBADF
    wo = await served.walk_open(root, ["f"], p.DOTL_WRONLY)
    assert await expect_errno(served, p.Tread(wo, 0, 1)) == errno.EBADF


async def test_lcreate_creates_and_opens(served: Client, export: Path) -> None:
    root = await served.attach()
    fid, reply = await served.create(root, "new", p.DOTL_RDWR, 0o640, gid=55)
    assert reply.qid.type == p.QTFILE
    assert await served.write(fid, 0, b"hello") == 5
    assert await served.read(fid, 0, 100) == b"hello"
    st = os.stat(export / "new")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, 55)
    assert reply.qid.path == st.st_ino


async def test_lcreate_excl_on_existing_file_fails(served: Client, export: Path,
                                                   expect_errno) -> None:
    (export / "f").write_text("x")
    root = await served.attach()
    fid = await served.walk(root, [])
    assert await expect_errno(served, p.Tlcreate(fid, "f", p.DOTL_CREATE | p.DOTL_EXCL | p.DOTL_RDWR,
                                                 0o644, 0)) == errno.EEXIST


@pytest.mark.parametrize("name,err", [("a/b", errno.ENOENT), ("", errno.ENOENT),
                                      (".", errno.EEXIST), ("..", errno.EEXIST)])
async def test_create_type_ops_refuse_bad_names(served: Client, expect_errno, name: str,
                                                err: int) -> None:
    root = await served.attach()
    assert await expect_errno(served, p.Tmkdir(root, name, 0o755, 0)) == err
    assert await expect_errno(served, p.Tsymlink(root, name, "t", 0)) == err
    fid = await served.walk(root, [])
    assert await expect_errno(served, p.Tlcreate(fid, name, p.DOTL_RDWR, 0o644, 0)) == err


# --- read / write -----------------------------------------------------------------------------

async def test_read_count_is_clamped_to_msize_minus_24(small: Client, export: Path) -> None:
    data = os.urandom(3 * MSIZE)
    (export / "f").write_bytes(data)
    root = await small.attach()
    fid = await small.walk_open(root, ["f"])
    assert await small.read(fid, 0, 0xFFFFFFFF) == data[:MSIZE - p.IOHDRSZ]
    assert await small.read(fid, 100, MSIZE) == data[100:100 + MSIZE - p.IOHDRSZ]
    assert await small.read(fid, len(data) - 5, MSIZE) == data[-5:]
    assert await small.read(fid, len(data) + 5, MSIZE) == b""
    assert await small.read_all(fid) == data


async def test_write_count_is_clamped_to_msize_minus_24(small: Client, export: Path) -> None:
    """The largest Twrite that fits msize carries msize-23 bytes: the server
    writes msize-24 of them and says so in Rwrite."""
    root = await small.attach()
    fid, _ = await small.create(root, "f")
    data = os.urandom(MSIZE - 23)
    assert len(p.encode(p.Twrite(fid, 0, data), 1)) == MSIZE
    assert await small.write(fid, 0, data) == MSIZE - p.IOHDRSZ
    assert (export / "f").read_bytes() == data[:MSIZE - p.IOHDRSZ]


async def test_write_at_an_offset(served: Client, export: Path) -> None:
    (export / "f").write_bytes(b"0123456789")
    root = await served.attach()
    fid = await served.walk_open(root, ["f"], p.DOTL_RDWR)
    assert await served.write(fid, 4, b"xy") == 2
    assert await served.write(fid, 12, b"z") == 1
    assert (export / "f").read_bytes() == b"0123xy6789\0\0z"


async def test_fsync_needs_an_open_fid(served: Client, export: Path, expect_errno) -> None:
    (export / "f").write_text("x")
    root = await served.attach()
    assert await expect_errno(served, p.Tfsync(root, 0)) == errno.EBADF
    fid = await served.walk_open(root, ["f"], p.DOTL_RDWR)
    assert await served.rpc(p.Tfsync(fid, 0)) == p.Rfsync()
    assert await served.rpc(p.Tfsync(fid, 1)) == p.Rfsync()


# --- readdir ----------------------------------------------------------------------------------

async def test_readdir_in_small_pieces_lists_every_entry_once(served: Client, export: Path) -> None:
    names = {f"f{i:03d}" for i in range(500)}
    for name in names:
        (export / name).touch()
    root = await served.attach()
    fid = await served.walk_open(root, [])
    entries = await served.readdir_all(fid, count=100)
    listed = [name for _, _, _, name in entries]
    assert sorted(listed) == sorted(names | {".", ".."})
    assert len(listed) == len(set(listed))


async def test_readdir_resumes_from_any_returned_offset(served: Client, export: Path) -> None:
    for i in range(20):
        (export / f"e{i}").mkdir()
    root = await served.attach()
    fid = await served.walk_open(root, [])
    everything = await served.readdir_all(fid)
    for k in (1, 7, 21):
        data = (await served.rpc(p.Treaddir(fid, everything[k - 1][1], 8192))).data
        rest = p.decode_dirents(data)
        assert [e[3] for e in rest] == [e[3] for e in everything[k:]]


async def test_readdir_entries_carry_types_and_qids(served: Client, export: Path) -> None:
    (export / "d").mkdir()
    (export / "f").touch()
    (export / "l").symlink_to("f")
    root = await served.attach()
    fid = await served.walk_open(root, [])
    by_name = {name: (qid, dtype) for qid, _, dtype, name in await served.readdir_all(fid)}
    assert by_name["d"] == (p.Qid(p.QTDIR, 0, os.stat(export / "d").st_ino), 4)
    assert by_name["f"] == (p.Qid(p.QTFILE, 0, os.stat(export / "f").st_ino), 8)
    assert by_name["l"][0].type == p.QTSYMLINK and by_name["l"][1] == 10
    assert by_name["."][0].type == by_name[".."][0].type == p.QTDIR


async def test_readdir_count_is_respected(served: Client, export: Path) -> None:
    for i in range(50):
        (export / f"name{i:02d}").touch()
    root = await served.attach()
    fid = await served.walk_open(root, [])
    data = (await served.rpc(p.Treaddir(fid, 0, 100))).data
    assert 0 < len(data) <= 100


async def test_readdir_needs_an_open_directory(served: Client, export: Path, expect_errno) -> None:
    (export / "f").touch()
    root = await served.attach()
    assert await expect_errno(served, p.Treaddir(root, 0, 100)) == errno.EBADF
    fid = await served.walk_open(root, ["f"])
    assert await expect_errno(served, p.Treaddir(fid, 0, 100)) == errno.ENOTDIR
