"""The escape suite's attacks in 9P2000.u and plain 9P2000 (CVE-2016-7116,
CVE-2016-9602, CVE-2023-2861 classes).

These dialects reach the back end through other messages than .L: Tcreate
(whose extension makes symlinks, hard links and device nodes), Topen,
Twstat (which renames and truncates) and directory reads that stat every
entry.  Each attack runs on the same rig as the .L suite, with a second,
tapped client that speaks the old dialect; the rig's teardown is again the
real assertion (canary unchanged, no canary byte in any reply, no probe file
outside, every fid and fd released).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from ninep.client import Client
from ninep.protocol import dotu as u
from ninep.protocol import ninep as p

from .conftest import INSIDE, EscapeRig
from .harness import PROBE, connect, expect_error, rpc
from .test_names import BAD_NAMES
from .test_symlinks import DANGLING, FILE_LINKS, OUT_LINKS, swap_dir_for_symlink


@dataclass
class OldRig:
    """The escape rig plus a client in 9P2000.u or plain 9P2000."""

    rig: EscapeRig
    client: Client
    root: int

    @property
    def dotu(self) -> bool:
        return self.client.messages is u.DOTU

    async def walk(self, *names: str) -> int:
        return await self.client.walk(self.root, list(names))

    def tcreate(self, fid: int, name: str, perm: int, mode: int = u.OREAD,
                extension: str = "") -> Any:
        if self.dotu:
            return u.Tcreate(fid, name, perm, mode, extension)
        return u.TcreatePlain(fid, name, perm, mode)

    def twstat(self, fid: int, **changes: Any) -> Any:
        if self.dotu:
            return u.Twstat(fid, u.DONT_TOUCH._replace(**changes))
        return u.TwstatPlain(fid, u.DONT_TOUCH_PLAIN._replace(**changes))

    def assert_no_canary_qids(self, qids: list[p.Qid]) -> None:
        self.rig.assert_no_canary_qids(qids)


@pytest.fixture(params=[u.VERSION_9P2000U, u.VERSION_9P2000])
async def old(rig: EscapeRig, request: pytest.FixtureRequest) -> AsyncIterator[OldRig]:
    client = await connect(rig.server.socket_path, version=request.param)
    try:
        yield OldRig(rig, client, await client.attach())
        await rpc(client, u.Tstat(1))  # the attack is over: still serving
    finally:
        await client.close()
    assert client.reader.leaks == [], "a reply carried canary content"  # type: ignore[attr-defined]


#: Tcreate perm kinds; the .u-only ones are plain files in 9P2000 (no extension).
CREATE_KINDS = {
    "file": (0o644, ""), "dir": (u.DMDIR | 0o755, ""), "symlink": (u.DMSYMLINK | 0o777, "file.txt"),
    "fifo": (u.DMNAMEDPIPE | 0o644, ""), "device": (u.DMDEVICE | 0o644, "c 1 3"),
    "socket": (u.DMSOCKET | 0o644, ""),
}


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", BAD_NAMES)
@pytest.mark.parametrize("what", CREATE_KINDS)
async def test_cve_2016_7116_tcreate_rejects_bad_name(old: OldRig, what: str, kind: str) -> None:
    perm, extension = CREATE_KINDS[what]
    fid = await old.walk()
    name = BAD_NAMES[kind](old.rig, PROBE)
    await expect_error(old.client, old.tcreate(fid, name, perm, u.ORDWR if not perm >> 24 else
                                               u.OREAD, extension))


@pytest.mark.parametrize("kind", BAD_NAMES)
async def test_cve_2016_7116_tcreate_hard_link_rejects_bad_name(old: OldRig, kind: str) -> None:
    if not old.dotu:
        pytest.skip("hard links are a 9P2000.u extension")
    target = await old.walk("file.txt")
    fid = await old.walk()
    await expect_error(old.client, old.tcreate(fid, BAD_NAMES[kind](old.rig, PROBE), u.DMLINK,
                                               u.OREAD, str(target)))


@pytest.mark.parametrize("kind", [k for k in BAD_NAMES if k != "empty"])  # empty: "don't touch"
async def test_cve_2016_7116_wstat_rename_rejects_bad_name(old: OldRig, kind: str) -> None:
    fid = await old.walk("file.txt")
    await expect_error(old.client, old.twstat(fid, name=BAD_NAMES[kind](old.rig, "secret.txt")))
    assert (old.rig.export / "file.txt").read_bytes() == INSIDE


async def test_cve_2016_7116_directory_read_at_root_hides_parent(old: OldRig) -> None:
    """The root's listing names nothing outside; its '..' (in .u) is the root itself."""
    fid = await old.walk()
    await old.client.topen(fid)
    entries = await old.client.read_dir(fid)
    names = {e.name for e in entries}
    assert "outside" not in names and "file.txt" in names
    root_qid = (await old.client.stat(old.root)).qid
    if old.dotu:
        assert [e.qid.path for e in entries if e.name == ".."] == [root_qid.path]
    old.assert_no_canary_qids([e.qid for e in entries])


async def test_cve_2016_7116_walk_dotdot_at_root_then_stat(old: OldRig) -> None:
    fid = await old.walk("..", "..")
    d = await old.client.stat(fid)
    assert d.qid == (await old.client.stat(old.root)).qid
    await expect_error(old.client, p.Twalk(fid, old.client.new_fid(), ["outside"]), errno.ENOENT)


# --- symlinks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("link", OUT_LINKS)
async def test_cve_2016_9602_walk_through_symlink_stops_at_it(old: OldRig, link: str) -> None:
    inner = ["outside", "secret.txt"] if link == "up" else ["secret.txt"]
    fid = old.client.new_fid()
    try:
        reply = await rpc(old.client, p.Twalk(old.root, fid, [link, *inner]))
    except OSError as exc:
        assert exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT)
        return
    assert len(reply.wqids) == 1 and reply.wqids[0].type == p.QTSYMLINK
    old.assert_no_canary_qids(reply.wqids)


@pytest.mark.parametrize("link", OUT_LINKS + FILE_LINKS)
async def test_cve_2016_9602_stat_of_symlink_is_the_link(old: OldRig, link: str) -> None:
    d = await old.client.stat(await old.walk(link))
    assert d.qid.type == p.QTSYMLINK
    assert d.qid.path == os.lstat(old.rig.export / link).st_ino
    if isinstance(d, u.DirU):
        assert d.mode & u.DMSYMLINK and d.extension == os.readlink(old.rig.export / link)
    old.assert_no_canary_qids([d.qid])


@pytest.mark.parametrize("mode", [u.OREAD, u.ORDWR | u.OTRUNC, u.OWRITE | u.OAPPEND,
                                  u.OREAD | u.ORCLOSE], ids=["read", "rdwr-trunc", "append",
                                                            "rclose"])
@pytest.mark.parametrize("link", FILE_LINKS + ("link_out_dir",))
async def test_cve_2016_9602_topen_symlink_refused(old: OldRig, link: str, mode: int) -> None:
    fid = await old.walk(link)
    await expect_error(old.client, u.Topen(fid, mode), errno.ELOOP)
    await expect_error(old.client, p.Tread(fid, 0, 4096), errno.EBADF)
    await old.client.clunk(fid)
    assert os.path.islink(old.rig.export / link)


@pytest.mark.parametrize("change", [
    {"mode": 0o777}, {"length": 0}, {"mtime": 12345, "atime": 12345}, {"uid": "4321"},
    {"gid": "4321"}, {"n_uid": 4321, "n_gid": 4321}], ids=lambda c: "-".join(c))
async def test_cve_2016_9602_wstat_on_final_symlink_acts_on_link(old: OldRig,
                                                                 change: dict[str, Any]) -> None:
    """A wstat on a symlink fid fails or changes the link; the canary stays (teardown)."""
    if "n_uid" in change and not old.dotu:
        pytest.skip("numeric ids are a 9P2000.u field")
    fid = await old.walk("link_out_file")
    try:
        await rpc(old.client, old.twstat(fid, **change))
    except OSError as exc:
        assert exc.errno != errno.EIO
    assert os.readlink(old.rig.export / "link_out_file") == str(old.rig.outside / "secret.txt")


async def test_cve_2016_9602_wstat_rename_of_symlink_moves_link_only(old: OldRig) -> None:
    fid = await old.walk("link_out_abs")
    await rpc(old.client, old.twstat(fid, name="moved"))
    assert os.readlink(old.rig.export / "moved") == str(old.rig.outside)


async def test_cve_2016_9602_wstat_rename_onto_symlink_replaces_link(old: OldRig) -> None:
    fid = await old.walk("file.txt")
    await rpc(old.client, old.twstat(fid, name="link_out_file"))
    made = old.rig.export / "link_out_file"
    assert made.read_bytes() == INSIDE and not os.path.islink(made)


@pytest.mark.parametrize("what", CREATE_KINDS)
@pytest.mark.parametrize("link", FILE_LINKS + DANGLING)
async def test_cve_2016_9602_tcreate_over_symlink(old: OldRig, link: str, what: str) -> None:
    """Creating any kind of file on a symlink's name is EEXIST: the dangling links
    point at PROBE outside, which must not appear (teardown)."""
    perm, extension = CREATE_KINDS[what]
    fid = await old.walk()
    await expect_error(old.client, old.tcreate(fid, link, perm, u.ORDWR if not perm >> 24 else
                                               u.OREAD, extension), errno.EEXIST)
    assert os.path.islink(old.rig.export / link)


async def test_cve_2016_9602_guest_made_symlink_is_not_followed(old: OldRig) -> None:
    if not old.dotu:
        pytest.skip("symlinks are a 9P2000.u extension")
    fid = await old.walk()
    await rpc(old.client, old.tcreate(fid, "evil", u.DMSYMLINK | 0o777, u.OREAD,
                                      str(old.rig.outside)))
    assert os.readlink(old.rig.export / "evil") == str(old.rig.outside)
    newfid = old.client.new_fid()
    reply = await rpc(old.client, p.Twalk(old.root, newfid, ["evil", "secret.txt"]))
    assert len(reply.wqids) == 1
    evil = await old.walk("evil")
    await expect_error(old.client, u.Topen(evil, u.OREAD), errno.ELOOP)
    await expect_error(old.client, old.tcreate(evil, PROBE, 0o644, u.ORDWR), errno.ENOTDIR)


async def test_cve_2016_9602_hard_link_to_symlink_links_the_link(old: OldRig) -> None:
    if not old.dotu:
        pytest.skip("hard links are a 9P2000.u extension")
    target = await old.walk("link_out_file")
    fid = await old.walk()
    await rpc(old.client, old.tcreate(fid, "hardlink_of_link", u.DMLINK, u.OREAD, str(target)))
    made = old.rig.export / "hardlink_of_link"
    assert os.path.islink(made)
    assert os.lstat(made).st_ino == os.lstat(old.rig.export / "link_out_file").st_ino


@pytest.mark.parametrize("link", OUT_LINKS)
async def test_cve_2016_9602_symlink_as_directory_fid(old: OldRig, link: str) -> None:
    """A fid on a symlink is no directory to create in or to list."""
    for what, (perm, extension) in CREATE_KINDS.items():
        dfid = await old.walk(link)
        await expect_error(old.client, old.tcreate(dfid, PROBE, perm, u.ORDWR if not perm >> 24
                                                   else u.OREAD, extension),
                           errno.ENOTDIR, errno.ELOOP)
    await expect_error(old.client, u.Topen(await old.walk(link), u.OREAD), errno.ELOOP)


async def test_cve_2016_9602_tremove_of_symlink_removes_link_only(old: OldRig) -> None:
    await rpc(old.client, p.Tremove(await old.walk("link_out_file")))
    assert not os.path.lexists(old.rig.export / "link_out_file")


@pytest.mark.parametrize("op", ["walk", "read-dir", "stat", "wstat-mode", "wstat-rename",
                                "tcreate"])
async def test_cve_2016_9602_directory_swapped_for_symlink_under_live_fid(old: OldRig,
                                                                          op: str) -> None:
    """export/dir becomes a symlink to the canary tree (whose files have the same
    names) under a live fid: nothing the fid does reaches the canary."""
    dfid = await old.walk("dir")
    inner = await old.walk("dir", "inner.txt")
    swap_dir_for_symlink(old.rig)
    try:
        if op == "walk":
            reply = await rpc(old.client, p.Twalk(dfid, old.client.new_fid(), ["secret.txt"]))
            old.assert_no_canary_qids(reply.wqids)
        elif op == "read-dir":
            await rpc(old.client, u.Topen(dfid, u.OREAD))
            old.assert_no_canary_qids([e.qid for e in await old.client.read_dir(dfid)])
        elif op == "stat":
            old.assert_no_canary_qids([(await old.client.stat(inner)).qid])
        elif op == "wstat-mode":
            await rpc(old.client, old.twstat(inner, mode=0o777))
        elif op == "wstat-rename":
            await rpc(old.client, old.twstat(inner, name="renamed"))
        else:
            await rpc(old.client, old.tcreate(dfid, PROBE, 0o644, u.ORDWR))
    except OSError as exc:
        assert exc.errno != errno.EIO


# --- special files -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [u.OREAD, u.OWRITE, u.ORDWR | u.OTRUNC])
async def test_cve_2023_2861_topen_fifo_is_refused_without_opening(old: OldRig, mode: int) -> None:
    """A FIFO in the export: Topen answers at once (ENXIO) and never blocks on it."""
    os.mkfifo(old.rig.export / "fifo")
    fid = await old.walk("fifo")
    await expect_error(old.client, u.Topen(fid, mode), errno.ENXIO)


async def test_cve_2023_2861_guest_made_device_cannot_be_opened(old: OldRig) -> None:
    if not old.dotu:
        pytest.skip("device nodes are a 9P2000.u extension")
    fid = await old.walk()
    try:
        await rpc(old.client, old.tcreate(fid, "null", u.DMDEVICE | 0o666, u.OREAD, "c 1 3"))
    except PermissionError:
        pytest.skip("needs CAP_MKNOD")
    assert stat.S_ISCHR(os.lstat(old.rig.export / "null").st_mode)
    await expect_error(old.client, u.Topen(await old.walk("null"), u.ORDWR), errno.ENXIO)
