"""Symlinks that point out of the export (CVE-2016-9602 class).

QEMU's CVE-2016-9602: host paths rebuilt from guest names were resolved with
symlinks followed, so a symlink in the export let the guest act on any host
file.  A symlink must never be followed as an intermediate component, nor as
the final one by ops that act on the link itself, and a directory swapped for
a symlink under a live fid must not redirect that fid.  The rig's teardown
checks the canary tree and every reply byte.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ninep.protocol import ninep as p

from .conftest import INSIDE, EscapeRig
from .harness import CANARY_XATTR, PROBE, expect_error, rpc

OUT_LINKS = ("link_out_dir", "link_out_abs", "up")
FILE_LINKS = ("link_out_file", "link_out_rel_file")
DANGLING = ("dangling", "dangling_rel")


# --- intermediate components -------------------------------------------------------------

@pytest.mark.parametrize("link", OUT_LINKS)
async def test_cve_2016_9602_walk_through_symlink_stops_at_it(rig: EscapeRig, link: str) -> None:
    """CVE-2016-9602: a symlink is never walked through as a directory."""
    inner = ["outside", "secret.txt"] if link == "up" else ["secret.txt"]
    reply = await rig.try_walk(link, *inner)
    if isinstance(reply, p.Rwalk):
        assert len(reply.wqids) == 1, "walked through a symlink"
        assert reply.wqids[0].type == p.QTSYMLINK
        rig.assert_no_canary_qids(reply.wqids)
    else:
        assert reply.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT)


@pytest.mark.parametrize("link", OUT_LINKS + FILE_LINKS)
async def test_cve_2016_9602_walk_to_symlink_names_the_link(rig: EscapeRig, link: str) -> None:
    """CVE-2016-9602: walking onto a symlink gives the link's qid and lstat, not its target's."""
    fid = await rig.walk(link)
    attr = await rig.client.getattr(fid)
    assert stat.S_ISLNK(attr.mode) and attr.qid.type == p.QTSYMLINK
    rig.assert_no_canary_qids([attr.qid])
    assert attr.qid.path == os.lstat(rig.export / link).st_ino


async def test_cve_2016_9602_guest_made_symlink_is_not_followed(rig: EscapeRig) -> None:
    """CVE-2016-9602: a guest may create a symlink to anywhere, but never go through it."""
    await rpc(rig.client, p.Tsymlink(rig.root, "evil", str(rig.outside), 0))
    assert os.readlink(rig.export / "evil") == str(rig.outside)
    reply = await rig.try_walk("evil", "secret.txt")
    assert not (isinstance(reply, p.Rwalk) and len(reply.wqids) == 2)
    fid = await rig.walk("evil")
    await expect_error(rig.client, p.Tlopen(fid, p.DOTL_RDONLY | p.DOTL_DIRECTORY), errno.ELOOP)
    await expect_error(rig.client, p.Tmkdir(fid, PROBE, 0o755, 0), errno.ENOTDIR)


# --- final components: ops that must act on the link itself ---------------------------------

@pytest.mark.parametrize("flags", [p.DOTL_RDONLY, p.DOTL_RDWR | p.DOTL_TRUNC, p.DOTL_WRONLY |
                                   p.DOTL_APPEND, p.DOTL_RDONLY | p.DOTL_DIRECTORY],
                         ids=["rdonly", "rdwr-trunc", "wronly-append", "directory"])
@pytest.mark.parametrize("link", FILE_LINKS + ("link_out_dir",))
async def test_cve_2016_9602_lopen_symlink_refused(rig: EscapeRig, link: str, flags: int) -> None:
    """CVE-2016-9602: Tlopen on a symlink is ELOOP; no byte of its target is read or cut."""
    fid = await rig.walk(link)
    await expect_error(rig.client, p.Tlopen(fid, flags), errno.ELOOP)
    await expect_error(rig.client, p.Tread(fid, 0, 4096), errno.EBADF)


def _setattr(valid: int, mode: int = 0, uid: int = 0, gid: int = 0, size: int = 0,
             atime: int = 0, mtime: int = 0) -> Callable[[EscapeRig, int], Awaitable[Any]]:
    """An attack that sends Tsetattr(valid, ...) on the fid it is given."""
    return lambda rig, fid: rpc(rig.client, p.Tsetattr(fid, valid, mode, uid, gid, size,
                                                       atime, 0, mtime, 0))


_chmod = _setattr(p.SETATTR_MODE, mode=0o777)
_chown = _setattr(p.SETATTR_UID | p.SETATTR_GID, uid=4321, gid=4321)
_truncate = _setattr(p.SETATTR_SIZE)
_utime_set = _setattr(p.SETATTR_ATIME | p.SETATTR_MTIME | p.SETATTR_ATIME_SET |
                      p.SETATTR_MTIME_SET, atime=12345, mtime=12345)
_utime_now = _setattr(p.SETATTR_ATIME | p.SETATTR_MTIME)
_ctime = _setattr(p.SETATTR_CTIME)


async def _xattr_get(rig: EscapeRig, fid: int) -> None:
    await rpc(rig.client, p.Txattrwalk(fid, rig.client.new_fid(), CANARY_XATTR))


async def _xattr_list(rig: EscapeRig, fid: int) -> None:
    xfid = rig.client.new_fid()
    reply = await rpc(rig.client, p.Txattrwalk(fid, xfid, ""))
    assert CANARY_XATTR.encode() not in await rig.client.read(xfid, 0, reply.size)


async def _xattr_set(rig: EscapeRig, fid: int) -> None:
    await rpc(rig.client, p.Txattrcreate(fid, CANARY_XATTR, 3, 0))
    await rpc(rig.client, p.Twrite(fid, 0, b"pwn"))
    await rpc(rig.client, p.Tclunk(fid))


async def _xattr_remove(rig: EscapeRig, fid: int) -> None:
    await rpc(rig.client, p.Txattrcreate(fid, CANARY_XATTR, 0, 0))
    await rpc(rig.client, p.Tclunk(fid))


async def _readlink(rig: EscapeRig, fid: int) -> None:
    target = (await rpc(rig.client, p.Treadlink(fid))).target
    assert target == os.readlink(rig.export / "link_out_file")


SYMLINK_OPS: dict[str, Callable[[EscapeRig, int], Awaitable[None]]] = {
    "Tsetattr-chmod": _chmod, "Tsetattr-chown": _chown, "Tsetattr-truncate": _truncate,
    "Tsetattr-utime": _utime_set, "Tsetattr-utime-now": _utime_now, "Tsetattr-ctime": _ctime,
    "Txattrwalk-get": _xattr_get, "Txattrwalk-list": _xattr_list,
    "Txattrcreate-set": _xattr_set, "Txattrcreate-remove": _xattr_remove, "Treadlink": _readlink,
}


@pytest.mark.parametrize("op", SYMLINK_OPS)
async def test_cve_2016_9602_op_on_final_symlink_acts_on_link(rig: EscapeRig, op: str) -> None:
    """CVE-2016-9602: setattr/xattr ops on a symlink fid either fail or change the link
    itself; the canary it points to keeps its mode, owner, size, times and xattrs."""
    fid = await rig.walk("link_out_file")
    try:
        await SYMLINK_OPS[op](rig, fid)
    except OSError as exc:
        assert exc.errno not in (errno.EIO, None), exc
    assert os.path.islink(rig.export / "link_out_file")


# --- creating over a symlink name -----------------------------------------------------------

@pytest.mark.parametrize("flags", [p.DOTL_RDWR, p.DOTL_WRONLY | p.DOTL_TRUNC,
                                   p.DOTL_RDWR | p.DOTL_EXCL],
                         ids=["rdwr", "wronly-trunc", "rdwr-excl"])
@pytest.mark.parametrize("link", FILE_LINKS + DANGLING)
async def test_cve_2016_9602_lcreate_over_symlink(rig: EscapeRig, link: str, flags: int) -> None:
    """CVE-2016-9602: O_CREAT on a symlink name neither opens its target nor creates a
    dangling link's target outside (the probe the dangling links name)."""
    fid = await rig.walk()
    await expect_error(rig.client, p.Tlcreate(fid, link, flags | p.DOTL_CREATE, 0o644, 0),
                       errno.EEXIST, errno.ELOOP)
    assert os.path.islink(rig.export / link)


@pytest.mark.parametrize("link", FILE_LINKS + DANGLING)
async def test_cve_2016_9602_mknod_over_symlink(rig: EscapeRig, link: str) -> None:
    """CVE-2016-9602: Tmknod on a symlink name is EEXIST, nothing made at its target."""
    await expect_error(rig.client, p.Tmknod(rig.root, link, stat.S_IFIFO | 0o644, 0, 0, 0),
                       errno.EEXIST)
    await expect_error(rig.client, p.Tmknod(rig.root, link, stat.S_IFREG | 0o644, 0, 0, 0),
                       errno.EEXIST)


@pytest.mark.parametrize("link", DANGLING)
async def test_cve_2016_9602_mkdir_symlink_over_dangling_symlink(rig: EscapeRig, link: str) -> None:
    """CVE-2016-9602: Tmkdir/Tsymlink on a dangling link's name do not create its target."""
    await expect_error(rig.client, p.Tmkdir(rig.root, link, 0o755, 0), errno.EEXIST)
    await expect_error(rig.client, p.Tsymlink(rig.root, link, "x", 0), errno.EEXIST)


async def test_cve_2016_9602_link_to_symlink_links_the_link(rig: EscapeRig) -> None:
    """CVE-2016-9602: Tlink whose source is a symlink hard-links the symlink itself,
    never its target (the canary's link count stays 1)."""
    fid = await rig.walk("link_out_file")
    await rpc(rig.client, p.Tlink(rig.root, fid, "hardlink_of_link"))
    made = rig.export / "hardlink_of_link"
    assert os.path.islink(made)
    assert os.lstat(made).st_ino == os.lstat(rig.export / "link_out_file").st_ino


@pytest.mark.parametrize("link", OUT_LINKS)
async def test_cve_2016_9602_symlink_as_directory_fid(rig: EscapeRig, link: str) -> None:
    """CVE-2016-9602: a fid on a symlink is no directory for create/link/rename/unlink."""
    dfid = await rig.walk(link)
    file_fid = await rig.walk("file.txt")
    ops = [
        p.Tmkdir(dfid, PROBE, 0o755, 0),
        p.Tsymlink(dfid, PROBE, "x", 0),
        p.Tmknod(dfid, PROBE, stat.S_IFIFO | 0o600, 0, 0, 0),
        p.Tlink(dfid, file_fid, PROBE),
        p.Trename(file_fid, dfid, PROBE),
        p.Trenameat(rig.root, "file.txt", dfid, PROBE),
        p.Trenameat(dfid, "secret.txt", rig.root, "stolen"),
        p.Tunlinkat(dfid, "secret.txt", 0),
        p.Tlcreate(dfid, PROBE, p.DOTL_RDWR | p.DOTL_CREATE, 0o644, 0),
    ]
    for msg in ops:
        await expect_error(rig.client, msg, errno.ENOTDIR, errno.ELOOP)
    assert (rig.export / "file.txt").read_bytes() == INSIDE


@pytest.mark.parametrize("link", ("link_out_file", "link_out_dir", "dangling"))
async def test_cve_2016_9602_rename_onto_symlink_replaces_link(rig: EscapeRig, link: str) -> None:
    """CVE-2016-9602: renaming onto a symlink replaces the link, not its target."""
    await rpc(rig.client, p.Trenameat(rig.root, "file.txt", rig.root, link))
    assert (rig.export / link).read_bytes() == INSIDE and not os.path.islink(rig.export / link)


async def test_cve_2016_9602_rename_symlink_moves_link_only(rig: EscapeRig) -> None:
    """CVE-2016-9602: Trename of a symlink fid moves the link, not the canary."""
    fid = await rig.walk("link_out_abs")
    await rpc(rig.client, p.Trename(fid, rig.root, "moved"))
    assert os.readlink(rig.export / "moved") == str(rig.outside)


@pytest.mark.parametrize("how", ["Tunlinkat", "Tremove"])
async def test_cve_2016_9602_unlink_symlink_removes_link_only(rig: EscapeRig, how: str) -> None:
    """CVE-2016-9602: removing a symlink removes the link; its target stays."""
    if how == "Tunlinkat":
        await rpc(rig.client, p.Tunlinkat(rig.root, "link_out_file", 0))
    else:
        await rpc(rig.client, p.Tremove(await rig.walk("link_out_file")))
    assert not os.path.lexists(rig.export / "link_out_file")
    await expect_error(rig.client, p.Tunlinkat(rig.root, "link_out_dir", p.AT_REMOVEDIR),
                       errno.ENOTDIR)


# --- a directory swapped for a symlink under a live fid (the heart of CVE-2016-9602) ---------

def swap_dir_for_symlink(rig: EscapeRig) -> None:
    """Host side: export/dir becomes a symlink to the canary tree, which holds files
    of the same names (inner.txt, secret.txt), so a re-resolved path would hit them."""
    os.rename(rig.export / "dir", rig.export / "dir.moved")
    os.symlink(str(rig.outside), rig.export / "dir")


async def _stale_walk(rig: EscapeRig, fid: int) -> None:
    reply = await rpc(rig.client, p.Twalk(fid, rig.client.new_fid(), ["secret.txt"]))
    rig.assert_no_canary_qids(reply.wqids)


async def _stale_open_dir(rig: EscapeRig, fid: int) -> None:
    await rpc(rig.client, p.Tlopen(fid, p.DOTL_RDONLY))
    entries = await rig.client.readdir_all(fid)
    rig.assert_no_canary_qids([e[0] for e in entries])


async def _stale_getattr(rig: EscapeRig, fid: int) -> None:
    rig.assert_no_canary_qids([(await rig.client.getattr(fid)).qid])


STALE_DIR_OPS: dict[str, Callable[[EscapeRig, int], Awaitable[None]]] = {
    "Twalk": _stale_walk,
    "Tlopen-readdir": _stale_open_dir,
    "Tgetattr": _stale_getattr,
    "Tlcreate": lambda rig, fid: rpc(rig.client, p.Tlcreate(fid, PROBE, p.DOTL_RDWR, 0o644, 0)),
    "Tmkdir": lambda rig, fid: rpc(rig.client, p.Tmkdir(fid, PROBE, 0o755, 0)),
    "Tsymlink": lambda rig, fid: rpc(rig.client, p.Tsymlink(fid, PROBE, "x", 0)),
    "Tmknod": lambda rig, fid: rpc(rig.client, p.Tmknod(fid, PROBE, stat.S_IFIFO | 0o600, 0, 0, 0)),
    "Tunlinkat": lambda rig, fid: rpc(rig.client, p.Tunlinkat(fid, "secret.txt", 0)),
    "Trenameat-from": lambda rig, fid: rpc(rig.client, p.Trenameat(fid, "secret.txt", rig.root,
                                                                   "stolen")),
    "Trenameat-into": lambda rig, fid: rpc(rig.client, p.Trenameat(rig.root, "file.txt", fid,
                                                                   PROBE)),
    "Tsetattr-chmod": _chmod,
    "Tsetattr-utime": _utime_set,
    "Txattrwalk": _xattr_get,
    "Txattrcreate": _xattr_set,
    "Tstatfs": lambda rig, fid: rpc(rig.client, p.Tstatfs(fid)),
}


@pytest.mark.parametrize("op", STALE_DIR_OPS)
async def test_cve_2016_9602_dir_swapped_for_symlink_under_fid(rig: EscapeRig, op: str) -> None:
    """CVE-2016-9602: a fid walked to export/dir keeps acting inside the export (or fails)
    after the host swaps dir for a symlink to the canary tree."""
    fid = await rig.walk("dir")
    swap_dir_for_symlink(rig)
    try:
        await STALE_DIR_OPS[op](rig, fid)
    except OSError as exc:
        assert exc.errno not in (errno.EIO, None), exc
    assert not (rig.export / "stolen").exists()


async def _stale_file_open(rig: EscapeRig, fid: int) -> None:
    await rpc(rig.client, p.Tlopen(fid, p.DOTL_RDWR))
    assert await rig.client.read(fid, 0, 4096) == INSIDE


STALE_FILE_OPS: dict[str, Callable[[EscapeRig, int], Awaitable[Any]]] = {
    "Tlopen-read": _stale_file_open,
    "Tlopen-trunc": lambda rig, fid: rpc(rig.client, p.Tlopen(fid, p.DOTL_WRONLY | p.DOTL_TRUNC)),
    "Tgetattr": _stale_getattr,
    "Tsetattr-truncate": _truncate,
    "Tsetattr-chmod": _chmod,
    "Tsetattr-chown": _chown,
    "Tsetattr-utime": _utime_set,
    "Txattrwalk": _xattr_get,
    "Txattrwalk-list": _xattr_list,
    "Txattrcreate": _xattr_set,
    "Treadlink": lambda rig, fid: rpc(rig.client, p.Treadlink(fid)),
    "Tremove": lambda rig, fid: rpc(rig.client, p.Tremove(fid)),
    "Tlink": lambda rig, fid: rpc(rig.client, p.Tlink(rig.root, fid, "stolen")),
    "Trename": lambda rig, fid: rpc(rig.client, p.Trename(fid, rig.root, "stolen")),
    "Twalk-dotdot": lambda rig, fid: _stale_walk_up(rig, fid),
}


async def _stale_walk_up(rig: EscapeRig, fid: int) -> None:
    reply = await rpc(rig.client, p.Twalk(fid, rig.client.new_fid(), ["..", "..", "outside"]))
    rig.assert_no_canary_qids(reply.wqids)


@pytest.mark.parametrize("op", STALE_FILE_OPS)
async def test_cve_2016_9602_parent_swapped_for_symlink_under_file_fid(rig: EscapeRig,
                                                                       op: str) -> None:
    """CVE-2016-9602: a fid on export/dir/inner.txt never reaches outside/inner.txt after
    the host swaps dir for a symlink to the canary tree."""
    fid = await rig.walk("dir", "inner.txt")
    swap_dir_for_symlink(rig)
    try:
        await STALE_FILE_OPS[op](rig, fid)
    except OSError as exc:
        assert exc.errno not in (errno.EIO, None), exc
    assert not (rig.export / "stolen").exists()


async def test_cve_2016_9602_open_fid_survives_swap_and_stays_inside(rig: EscapeRig) -> None:
    """CVE-2016-9602: an already open fid keeps its inode after a swap; it neither fails
    over to the canary nor loses the file it opened."""
    fid = await rig.walk("dir", "inner.txt")
    await rpc(rig.client, p.Tlopen(fid, p.DOTL_RDWR))
    swap_dir_for_symlink(rig)
    assert await rig.client.read(fid, 0, 4096) == INSIDE
    await rig.client.write(fid, 0, b"INSIDE")
    await _truncate(rig, fid)
    assert (rig.export / "dir.moved" / "inner.txt").read_bytes() == b""
