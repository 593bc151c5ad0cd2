"""Session setup and the fid table: Tversion, Tauth, Tattach, Twalk, Tclunk, Tremove."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import SessionConfig

MiB = 1 << 20


# --- Tversion ----------------------------------------------------------------------------

@pytest.mark.parametrize("asked,expected", [(8192, 8192), (512000, 512000), (10 * MiB, 512000)])
async def test_version_negotiates_the_smaller_msize(serve, asked: int, expected: int) -> None:
    client = await (await serve()).connect(msize=asked)
    assert client.msize == expected
    reply = await client.version(asked)
    assert reply == p.Rversion(expected, "9P2000.L")


async def test_version_accepts_4mib_when_server_allows_it(serve, export: Path) -> None:
    data = os.urandom(4 * MiB)
    (export / "big").write_bytes(data)
    client = await (await serve(SessionConfig(msize=4 * MiB))).connect(msize=4 * MiB)
    assert client.msize == 4 * MiB
    fid = await client.walk_open(await client.attach(), ["big"])
    first = await client.read(fid, 0, 4 * MiB)
    assert first == data[:4 * MiB - p.IOHDRSZ]
    written = await client.write(fid := (await client.create(await client.attach(), "copy"))[0],
                                 0, data[:4 * MiB - p.IOHDRSZ])
    assert written == 4 * MiB - p.IOHDRSZ
    assert (export / "copy").read_bytes() == data[:written]
    await client.clunk(fid)


@pytest.mark.parametrize("version,answer", [
    ("9P2000.L", "9P2000.L"), ("9P2000.L.ext", "9P2000.L"), ("9P2000", "9P2000"),
    ("9P2000.u", "9P2000.u"), ("9P2000.u.ext", "9P2000.u"), ("", "unknown"), ("9P1999", "unknown"),
    # An unknown 9P2000 extension falls back to plain 9P2000 (version(5)).
    ("9P2000.Lx", "9P2000"), ("9P2000.X", "9P2000")])
async def test_version_string(served: Client, version: str, answer: str) -> None:
    assert (await served.version(8192, version)).version == answer


async def test_version_too_small_msize_is_refused(served: Client) -> None:
    _, fut = served.start(p.Tversion(100, "9P2000.L"), tag=p.NOTAG)
    assert await fut == p.Rlerror(errno.EINVAL)


async def test_version_resets_the_session(served: Client, export: Path, fd_count) -> None:
    (export / "f").touch()
    before = fd_count()
    root = await served.attach()
    fid = await served.walk(root, [])
    await served.walk_open(root, ["f"])
    await served.version(8192)
    assert fd_count() == before
    for old in (root, fid):
        with pytest.raises(OSError) as info:
            await served.getattr(old)
        assert info.value.errno == errno.EBADF
    root = await served.attach()  # fid numbers are free again and the session works
    assert (await served.getattr(root)).qid.type == p.QTDIR


# --- Tauth / Tattach ---------------------------------------------------------------------

async def test_auth_answers_no_authentication_needed_as_diod_does(served: Client,
                                                                  expect_errno) -> None:
    """ENOENT, diod's answer: libnpclient (diodls, diodcat) then attaches
    without an afid; any other errno makes it give up."""
    assert await expect_errno(served, p.Tauth(7, "root", "", 0)) == errno.ENOENT
    root = await served.attach()
    assert (await served.getattr(root)).qid.type == p.QTDIR


async def test_attach_returns_the_root_qid(served: Client, export: Path) -> None:
    reply = await served.rpc(p.Tattach(5, p.NOFID, "root", "", 0))
    assert reply.qid.type == p.QTDIR
    assert reply.qid.path == os.stat(export).st_ino


async def test_attach_with_an_auth_fid_is_refused(served: Client, expect_errno) -> None:
    assert await expect_errno(served, p.Tattach(5, 1, "root", "", 0)) == errno.EINVAL


async def test_attach_uses_n_uname_for_new_files(served: Client, export: Path) -> None:
    root = served.new_fid()
    await served.rpc(p.Tattach(root, p.NOFID, "nobody", "", 4321))
    await served.mkdir(root, "owned", gid=4322)
    st = os.stat(export / "owned")
    assert (st.st_uid, st.st_gid) == (4321, 4322)


async def test_attach_to_a_fid_in_use_is_ebadf(served: Client, expect_errno) -> None:
    root = await served.attach()
    assert await expect_errno(served, p.Tattach(root, p.NOFID, "root", "", 0)) == errno.EBADF


@pytest.mark.parametrize("msg", [
    p.Tgetattr(99, p.GETATTR_BASIC), p.Twalk(99, 100, []), p.Tclunk(99), p.Tremove(99),
    p.Tlopen(99, 0), p.Tread(99, 0, 10), p.Twrite(99, 0, b"x"), p.Treaddir(99, 0, 100),
    p.Tstatfs(99), p.Txattrwalk(99, 100, ""), p.Tfsync(99, 0), p.Tsetattr(99, 0, 0, 0, 0, 0, 0, 0, 0, 0),
])
async def test_unknown_fid_is_ebadf(served: Client, expect_errno, msg) -> None:
    await served.attach()
    assert await expect_errno(served, msg) == errno.EBADF


# --- Twalk -------------------------------------------------------------------------------

@pytest.fixture
def tree(export: Path) -> Path:
    (export / "a" / "b").mkdir(parents=True)
    (export / "a" / "b" / "f").write_text("x")
    (export / "a" / "link").symlink_to("b")
    return export


async def test_walk_returns_one_qid_per_name(served: Client, tree: Path) -> None:
    root = await served.attach()
    reply = await served.rpc(p.Twalk(root, 10, ["a", "b", "f"]))
    assert [q.path for q in reply.wqids] == [os.stat(tree / n).st_ino for n in ("a", "a/b", "a/b/f")]
    assert [q.type for q in reply.wqids] == [p.QTDIR, p.QTDIR, p.QTFILE]
    assert (await served.getattr(10)).qid == reply.wqids[-1]


async def test_walk_with_no_names_clones(served: Client, tree: Path) -> None:
    root = await served.attach()
    a = await served.walk(root, ["a"])
    assert (await served.rpc(p.Twalk(a, 20, []))).wqids == []
    assert (await served.getattr(20)).qid == (await served.getattr(a)).qid
    await served.clunk(a)
    assert (await served.getattr(20)).qid.path == os.stat(tree / "a").st_ino  # independent


async def test_walk_in_place_moves_the_fid(served: Client, tree: Path) -> None:
    root = await served.attach()
    a = await served.walk(root, [])
    await served.rpc(p.Twalk(a, a, ["a", "b"]))
    assert (await served.getattr(a)).qid.path == os.stat(tree / "a/b").st_ino


async def test_partial_walk_returns_fewer_qids_and_no_newfid(served: Client, tree: Path,
                                                             expect_errno) -> None:
    root = await served.attach()
    reply = await served.rpc(p.Twalk(root, 30, ["a", "missing", "f"]))
    assert len(reply.wqids) == 1
    assert await expect_errno(served, p.Tgetattr(30, 0)) == errno.EBADF
    # In place: the fid stays where it was.
    await served.rpc(p.Twalk(root, root, ["a", "nope"]))
    assert (await served.getattr(root)).qid.path == os.stat(tree).st_ino


async def test_walk_fails_only_when_the_first_name_fails(served: Client, tree: Path,
                                                         expect_errno) -> None:
    root = await served.attach()
    assert await expect_errno(served, p.Twalk(root, 31, ["missing", "a"])) == errno.ENOENT
    assert len((await served.rpc(p.Twalk(root, 31, ["a", "missing"]))).wqids) == 1


async def test_walk_through_a_file_stops_there(served: Client, tree: Path) -> None:
    root = await served.attach()
    reply = await served.rpc(p.Twalk(root, 32, ["a", "b", "f", "g"]))
    assert len(reply.wqids) == 3


async def test_walk_does_not_follow_symlinks(served: Client, tree: Path) -> None:
    root = await served.attach()
    reply = await served.rpc(p.Twalk(root, 33, ["a", "link", "f"]))
    assert [q.type for q in reply.wqids] == [p.QTDIR, p.QTSYMLINK]


async def test_dotdot_at_the_root_stays_at_the_root(served: Client, tree: Path) -> None:
    root = await served.attach()
    root_qid = (await served.getattr(root)).qid
    reply = await served.rpc(p.Twalk(root, 40, [".."] * 16))
    assert reply.wqids == [root_qid] * 16
    reply = await served.rpc(p.Twalk(root, 41, ["a", "..", "..", "a"]))
    assert [q.path for q in reply.wqids] == [reply.wqids[0].path, root_qid.path, root_qid.path,
                                             reply.wqids[0].path]


async def test_walk_takes_16_names_and_refuses_17(served: Client, export: Path,
                                                  expect_errno) -> None:
    deep = export.joinpath(*["d"] * 16)
    deep.mkdir(parents=True)
    root = await served.attach()
    assert len((await served.rpc(p.Twalk(root, 50, ["d"] * 16))).wqids) == 16
    assert await expect_errno(served, p.Twalk(root, 51, ["d"] * 17)) == errno.EINVAL
    assert await expect_errno(served, p.Tgetattr(51, 0)) == errno.EBADF


@pytest.mark.parametrize("name", ["a/b", "", "/", "a\0"])
async def test_walk_refuses_bad_names(served: Client, tree: Path, expect_errno, name: str) -> None:
    root = await served.attach()
    assert await expect_errno(served, p.Twalk(root, 60, [name])) == errno.ENOENT
    assert await expect_errno(served, p.Tgetattr(60, 0)) == errno.EBADF


async def test_walk_to_a_newfid_in_use_is_ebadf(served: Client, tree: Path, expect_errno) -> None:
    root = await served.attach()
    other = await served.walk(root, ["a"])
    assert await expect_errno(served, p.Twalk(root, other, ["a", "b"])) == errno.EBADF
    assert (await served.getattr(other)).qid.path == os.stat(tree / "a").st_ino


# --- Tclunk / Tremove --------------------------------------------------------------------

async def test_clunk_frees_the_fid(served: Client, expect_errno) -> None:
    root = await served.attach()
    fid = await served.walk(root, [])
    await served.clunk(fid)
    assert await expect_errno(served, p.Tclunk(fid)) == errno.EBADF
    await served.rpc(p.Twalk(root, fid, []))  # the number is free again


async def test_remove_removes_and_frees_the_fid(served: Client, tree: Path, expect_errno) -> None:
    root = await served.attach()
    fid = await served.walk(root, ["a", "b", "f"])
    await served.rpc(p.Tremove(fid))
    assert not (tree / "a/b/f").exists()
    assert await expect_errno(served, p.Tgetattr(fid, 0)) == errno.EBADF


@pytest.mark.parametrize("names,err", [([], errno.EBUSY), (["a"], errno.ENOTEMPTY)])
async def test_failed_remove_still_frees_the_fid(served: Client, tree: Path, expect_errno,
                                                 names: list[str], err: int) -> None:
    root = await served.attach()
    fid = await served.walk(root, names)
    assert await expect_errno(served, p.Tremove(fid)) == err
    assert await expect_errno(served, p.Tgetattr(fid, 0)) == errno.EBADF
    assert (tree / "a").is_dir()


async def test_clunk_releases_the_open_fd(served: Client, tree: Path, fd_count) -> None:
    root = await served.attach()
    before = fd_count()
    fids = [await served.walk_open(root, ["a", "b", "f"]) for _ in range(5)]
    assert fd_count() == before + 5
    for fid in fids:
        await served.clunk(fid)
    assert fd_count() == before
