"""Fids used after they are gone (CVE-2018-19364 and CVE-2021-20181 classes).

QEMU's CVE-2018-19364 was a use-after-free of a fid's path while another
request renamed it; CVE-2021-20181 a race that freed a fid under a request
still using it.  Here a fid is used after Tclunk, after Tremove (which clunks
even when it fails), after a new Tversion, and concurrently with its own
clunk/remove: every late use is EBADF, nothing crashes, and the rig's
teardown checks every node and fd was released.
"""

from __future__ import annotations

import asyncio
import errno
import stat
from pathlib import Path

import pytest

from ninep.backends.local import LocalBackend
from ninep.protocol import ninep as p
from ninep.server.session import Session, SessionConfig

from .conftest import INSIDE, EscapeRig
from .harness import RecordingSink, expect_error, rpc


def late_uses(fid: int, other: int) -> list[object]:
    """Every message that names *fid* as its subject."""
    return [
        p.Tread(fid, 0, 10), p.Twrite(fid, 0, b"x"), p.Twalk(fid, other, []),
        p.Tgetattr(fid, p.GETATTR_BASIC),
        p.Tsetattr(fid, p.SETATTR_MODE, 0o600, 0, 0, 0, 0, 0, 0, 0),
        p.Tlopen(fid, p.DOTL_RDONLY), p.Treaddir(fid, 0, 100), p.Tfsync(fid, 0),
        p.Txattrwalk(fid, other, ""), p.Txattrcreate(fid, "user.x", 1, 0), p.Treadlink(fid),
        p.Tstatfs(fid), p.Tclunk(fid), p.Tremove(fid), p.Tmkdir(fid, "x", 0o755, 0),
        p.Tlcreate(fid, "x", p.DOTL_RDWR, 0o644, 0), p.Tlock(fid, 1, 0, 0, 0, 1, "c"),
        p.Tgetlock(fid, 1, 0, 0, 1, "c"), p.Trename(fid, fid, "x"),
        p.Tunlinkat(fid, "file.txt", 0), p.Tlink(fid, fid, "x"),
    ]


async def _assert_all_ebadf(rig: EscapeRig, fid: int) -> None:
    for msg in late_uses(fid, rig.client.new_fid()):
        await expect_error(rig.client, msg, errno.EBADF)


async def test_cve_2018_19364_use_after_clunk(rig: EscapeRig) -> None:
    """CVE-2018-19364: every use of a clunked fid is EBADF."""
    fid = await rig.client.walk_open(rig.root, ["file.txt"], p.DOTL_RDWR)
    await rig.client.clunk(fid)
    await _assert_all_ebadf(rig, fid)


async def test_cve_2018_19364_use_after_remove(rig: EscapeRig) -> None:
    """CVE-2018-19364: Tremove clunks the fid; it is EBADF afterwards."""
    fid = await rig.client.walk_open(rig.root, ["file.txt"], p.DOTL_RDWR)
    await rpc(rig.client, p.Tremove(fid))
    assert not (rig.export / "file.txt").exists()
    await _assert_all_ebadf(rig, fid)


async def test_cve_2018_19364_use_after_failed_remove(rig: EscapeRig) -> None:
    """CVE-2018-19364: a Tremove that fails (non-empty dir) still clunks the fid."""
    fid = await rig.walk("dir")
    await expect_error(rig.client, p.Tremove(fid), errno.ENOTEMPTY, errno.EEXIST)
    assert (rig.export / "dir").is_dir()
    await _assert_all_ebadf(rig, fid)


async def test_cve_2018_19364_use_after_tversion(rig: EscapeRig) -> None:
    """CVE-2018-19364: a new Tversion ends the session's fids, open ones included; their
    numbers can then be attached afresh."""
    opened = await rig.client.walk_open(rig.root, ["file.txt"], p.DOTL_RDWR)
    walked = await rig.walk("dir")
    await rig.client.version(rig.client.msize)
    for fid in (rig.root, opened, walked):
        await _assert_all_ebadf(rig, fid)
    await rpc(rig.client, p.Tattach(rig.root, p.NOFID, "root", "", 0))


async def test_cve_2021_20181_tversion_with_requests_in_flight(rig: EscapeRig) -> None:
    """CVE-2021-20181: Tversion racing in-flight requests on the same fids: every request
    gets one answer (its reply, or an error), and afterwards the fids are gone."""
    fids = [await rig.client.walk_open(rig.root, ["file.txt"], p.DOTL_RDWR) for _ in range(8)]
    futs = []
    for fid in fids:
        for msg in (p.Tread(fid, 0, 4096), p.Twrite(fid, 100, b"y" * 1000),
                    p.Tgetattr(fid, p.GETATTR_ALL), p.Twalk(fid, rig.client.new_fid(), [])):
            futs.append(rig.client.start(msg)[1])
    _, vfut = rig.client.start(p.Tversion(rig.client.msize, p.VERSION_9P2000L), tag=p.NOTAG)
    replies = await asyncio.wait_for(asyncio.gather(*futs, vfut), 20)
    assert isinstance(replies[-1], p.Rversion)
    for fid in fids:
        await expect_error(rig.client, p.Tread(fid, 0, 10), errno.EBADF)
    await rpc(rig.client, p.Tattach(rig.root, p.NOFID, "root", "", 0))


@pytest.mark.parametrize("ender", ["Tclunk", "Tremove"])
async def test_cve_2021_20181_fid_ended_while_in_use(rig: EscapeRig, ender: str) -> None:
    """CVE-2021-20181: reads, writes, walks and setattrs racing a Tclunk/Tremove of the
    same fid all get an answer; the fid is then EBADF and no node leaks (teardown)."""
    for round_ in range(50):
        name = f"victim{round_}"
        (rig.export / name).write_bytes(INSIDE)
        fid = await rig.client.walk_open(rig.root, [name], p.DOTL_RDWR)
        futs = [rig.client.start(msg)[1] for msg in (
            p.Tread(fid, 0, 4096), p.Twrite(fid, 0, b"z" * 512),
            p.Twalk(fid, rig.client.new_fid(), []),
            p.Tsetattr(fid, p.SETATTR_SIZE, 0, 0, 0, 3, 0, 0, 0, 0), p.Tfsync(fid, 0))]
        end = p.Tclunk(fid) if ender == "Tclunk" else p.Tremove(fid)
        futs.insert(round_ % len(futs), rig.client.start(end)[1])
        replies = await asyncio.wait_for(asyncio.gather(*futs), 20)
        assert len(replies) == 6
        for reply in replies:
            assert not (isinstance(reply, p.Rlerror) and reply.ecode == errno.EIO), replies
        await expect_error(rig.client, p.Tgetattr(fid, p.GETATTR_BASIC), errno.EBADF)
        # Clones made by the racing Twalk (if it won) are still valid and released at teardown.


async def test_cve_2021_20181_rename_while_fid_in_use(rig: EscapeRig) -> None:
    """CVE-2021-20181 / CVE-2018-19364: renames of a file (and its parent) racing reads and
    getattrs through fids on it never crash the server or point a fid outside."""
    (rig.export / "dir" / "moving").write_bytes(INSIDE)
    fid = await rig.walk("dir", "moving")
    opened = await rig.client.walk_open(rig.root, ["dir", "moving"])
    for i in range(100):
        src, dst = ("dir", "dir2") if i % 2 == 0 else ("dir2", "dir")
        futs = [rig.client.start(msg)[1] for msg in (
            p.Trenameat(rig.root, src, rig.root, dst), p.Tgetattr(fid, p.GETATTR_BASIC),
            p.Tread(opened, 0, 100), p.Twalk(fid, rig.client.new_fid(), ["..", "inner.txt"]))]
        replies = await asyncio.wait_for(asyncio.gather(*futs), 20)
        assert isinstance(replies[0], p.Rrenameat), replies[0]
        assert isinstance(replies[2], p.Rread) and replies[2].data == INSIDE
        for reply in replies:
            if isinstance(reply, p.Rwalk):
                rig.assert_no_canary_qids(reply.wqids)
            if isinstance(reply, p.Rgetattr):
                rig.assert_no_canary_qids([reply.qid])
    assert (await rig.client.getattr(fid)).size == len(INSIDE)


async def test_cve_2018_19364_fid_numbers_are_per_session(rig: EscapeRig) -> None:
    """CVE-2018-19364: a second connection cannot use (or clunk) the first one's fids."""
    from .harness import connect
    other = await connect(rig.server.socket_path)
    try:
        await expect_error(other, p.Tread(rig.root, 0, 10), errno.EBADF)
        await expect_error(other, p.Tclunk(rig.root), errno.EBADF)
        await expect_error(other, p.Twalk(rig.root, 77, ["file.txt"]), errno.EBADF)
    finally:
        await other.close()
    assert (await rig.client.getattr(rig.root)).qid.type == p.QTDIR


async def test_cve_2018_19364_fid_reuse_is_refused(rig: EscapeRig) -> None:
    """CVE-2018-19364: a fid number in use cannot be attached or walked onto, and an
    open fid cannot be opened, created on or turned into an xattr fid again."""
    opened = await rig.client.walk_open(rig.root, ["file.txt"])
    await expect_error(rig.client, p.Tattach(opened, p.NOFID, "root", "", 0), errno.EBADF)
    await expect_error(rig.client, p.Twalk(rig.root, opened, ["dir"]), errno.EBADF)
    await expect_error(rig.client, p.Txattrwalk(rig.root, opened, ""), errno.EBADF)
    await expect_error(rig.client, p.Tlopen(opened, p.DOTL_RDONLY), errno.EINVAL, errno.EBADF)
    await expect_error(rig.client, p.Txattrcreate(opened, "user.x", 1, 0), errno.EINVAL,
                       errno.EBADF)
    assert await rig.client.read(opened, 0, 100) == INSIDE


async def test_cve_2018_19364_xattr_fid_cannot_pose_as_node(rig: EscapeRig) -> None:
    """CVE-2018-19364: an xattr fid is no file: walking, opening, creating or readdir on it
    is refused, and it is EBADF once clunked."""
    fid = await rig.walk("dir")
    xfid = rig.client.new_fid()
    await rpc(rig.client, p.Txattrwalk(fid, xfid, ""))
    for msg in (p.Twalk(xfid, rig.client.new_fid(), ["inner.txt"]), p.Tlopen(xfid, p.DOTL_RDONLY),
                p.Tmkdir(xfid, "x", 0o755, 0), p.Treaddir(xfid, 0, 100),
                p.Tmknod(xfid, "x", stat.S_IFIFO | 0o600, 0, 0, 0),
                p.Tlcreate(xfid, "x", p.DOTL_RDWR, 0o644, 0)):
        await expect_error(rig.client, msg)
    await rig.client.clunk(xfid)
    await _assert_all_ebadf(rig, xfid)


RACERS = {
    "Tclunk": lambda fid, c: p.Tclunk(fid),
    "Tremove": lambda fid, c: p.Tremove(fid),
    "Twalk-onto-itself": lambda fid, c: p.Twalk(fid, fid, []),
    "second-Tlopen": lambda fid, c: p.Tlopen(fid, p.DOTL_RDONLY),
    "Txattrwalk-onto-itself": lambda fid, c: p.Txattrwalk(fid, fid, ""),
    "Tversion": None,
}


@pytest.mark.parametrize("racer", RACERS)
@pytest.mark.parametrize("opener", ["Tlopen", "Tlcreate"])
async def test_cve_2021_20181_open_racing_fid_release(rig: EscapeRig, opener: str,
                                                      racer: str) -> None:
    """CVE-2021-20181: a Tlopen/Tlcreate racing a clunk, remove, replacing walk, second
    open or Tversion of its fid must not leave the fd it opens behind (teardown counts
    the process's fds) nor answer twice."""
    for i in range(60):
        (rig.export / f"f{i}").write_bytes(INSIDE)
        if opener == "Tlopen":
            fid = await rig.walk(f"f{i}")
            first = p.Tlopen(fid, p.DOTL_RDWR)
        else:
            fid = await rig.walk()
            first = p.Tlcreate(fid, f"new{i}", p.DOTL_RDWR, 0o644, 0)
        futs = [rig.client.start(first)[1]]
        if RACERS[racer] is None:
            futs.append(rig.client.start(p.Tversion(rig.client.msize, p.VERSION_9P2000L),
                                         tag=p.NOTAG)[1])
        else:
            futs.append(rig.client.start(RACERS[racer](fid, rig.client))[1])
        replies = await asyncio.wait_for(asyncio.gather(*futs), 20)
        for reply in replies:
            assert not (isinstance(reply, p.Rlerror) and reply.ecode == errno.EIO), replies
        if racer == "Tversion":
            await rpc(rig.client, p.Tattach(rig.root, p.NOFID, "root", "", 0))
        else:
            try:
                await rig.client.clunk(fid)
            except OSError as exc:
                assert exc.errno == errno.EBADF


async def test_cve_2021_20181_tversion_ahead_of_pipelined_requests(tmp_path: Path) -> None:
    """CVE-2021-20181 class: a Tversion that aborts requests queued right behind it
    (their tasks never got to run) must still end each one: a reply, or a drop that
    hands the buffer back (a virtqueue would otherwise leak the descriptor chain)."""
    (tmp_path / "f").write_bytes(INSIDE)
    backend = LocalBackend(str(tmp_path), threads=2)
    session = Session(backend, SessionConfig(msize=8192))
    sinks = []

    def submit(msg: object, tag: int) -> None:
        sink = RecordingSink(8192)
        session.submit([memoryview(p.encode(msg, tag))], sink)
        sinks.append(sink)

    submit(p.Tversion(8192, p.VERSION_9P2000L), p.NOTAG)
    submit(p.Tattach(0, p.NOFID, "root", "", 0), 1)
    await asyncio.sleep(0.1)
    for round_ in range(20):
        submit(p.Tversion(8192, p.VERSION_9P2000L), p.NOTAG)
        for tag in range(2, 12):  # queued behind the Tversion in the same tick
            submit(p.Tgetattr(0, p.GETATTR_BASIC), tag)
        submit(p.Tattach(0, p.NOFID, "root", "", 0), 12)
        await asyncio.sleep(0.05)
    await session.close()
    await backend.close()
    for sink in sinks:
        assert len(sink.frames) + sink.dropped == 1, (sink.frames, sink.dropped)
    assert session.inflight == 0
