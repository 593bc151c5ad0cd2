"""Path traversal through names (CVE-2016-7116 class).

QEMU's CVE-2016-7116 let a guest walk ``..`` out of the export.  Here every
message that carries a name gets ``..``, ``.``, absolute paths, names with
``/`` or NUL, and the empty name.  Each must fail with a clean errno, and the
rig's teardown proves nothing outside the export was read, written or created.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Awaitable, Callable

import pytest

from ninep.protocol import ninep as p

from .conftest import EscapeRig
from .harness import CANARY_XATTR, PROBE, expect_error, rpc

# name kind -> how to build it from (rig, target); target is a file outside the export.
BAD_NAMES: dict[str, Callable[[EscapeRig, str], str]] = {
    "dotdot": lambda rig, target: "..",
    "dot": lambda rig, target: ".",
    "empty": lambda rig, target: "",
    "absolute": lambda rig, target: str(rig.outside / target),
    "relative-escape": lambda rig, target: f"../outside/{target}",
    "deep-escape": lambda rig, target: "../" * 12 + str(rig.outside / target).lstrip("/"),
    "slash-inside": lambda rig, target: f"dir/{target}",
    "nul-truncated": lambda rig, target: f"{target}\0.txt",
    "nul-dotdot": lambda rig, target: "..\0",
}


async def _lcreate(rig: EscapeRig, name: str) -> None:
    fid = await rig.walk()
    await expect_error(rig.client, p.Tlcreate(fid, name, p.DOTL_RDWR | p.DOTL_CREATE, 0o644, 0))


async def _mkdir(rig: EscapeRig, name: str) -> None:
    await expect_error(rig.client, p.Tmkdir(rig.root, name, 0o755, 0))


async def _symlink(rig: EscapeRig, name: str) -> None:
    await expect_error(rig.client, p.Tsymlink(rig.root, name, "file.txt", 0))


async def _mknod(rig: EscapeRig, name: str) -> None:
    await expect_error(rig.client, p.Tmknod(rig.root, name, stat.S_IFIFO | 0o644, 0, 0, 0))


async def _link(rig: EscapeRig, name: str) -> None:
    fid = await rig.walk("file.txt")
    await expect_error(rig.client, p.Tlink(rig.root, fid, name))


async def _renameat_new(rig: EscapeRig, name: str) -> None:
    await expect_error(rig.client, p.Trenameat(rig.root, "file.txt", rig.root, name))
    assert (rig.export / "file.txt").exists()


async def _rename(rig: EscapeRig, name: str) -> None:
    fid = await rig.walk("file.txt")
    await expect_error(rig.client, p.Trename(fid, rig.root, name))
    assert (rig.export / "file.txt").exists()


# Ops that consume an existing name: the target is a canary file they must not reach.
async def _renameat_old(rig: EscapeRig, name: str) -> None:
    await expect_error(rig.client, p.Trenameat(rig.root, name, rig.root, "stolen"))
    assert not (rig.export / "stolen").exists()


async def _unlinkat(rig: EscapeRig, name: str) -> None:
    await expect_error(rig.client, p.Tunlinkat(rig.root, name, 0))


async def _rmdirat(rig: EscapeRig, name: str) -> None:
    await expect_error(rig.client, p.Tunlinkat(rig.root, name, p.AT_REMOVEDIR))


async def _walk(rig: EscapeRig, name: str) -> None:
    await expect_error(rig.client, p.Twalk(rig.root, rig.client.new_fid(), [name]))


async def _walk_later_element(rig: EscapeRig, name: str) -> None:
    """A bad name after good ones: the walk stops before it (or fails), never past it."""
    newfid = rig.client.new_fid()
    try:
        reply = await rpc(rig.client, p.Twalk(rig.root, newfid, ["dir", name, "inner.txt"]))
    except OSError as exc:
        assert exc.errno != errno.EIO
        return
    assert len(reply.wqids) < 3, "walk went through an illegal name"
    rig.assert_no_canary_qids(reply.wqids)


async def _xattrwalk(rig: EscapeRig, name: str) -> None:
    """An xattr name is no path: a traversal-shaped one reads nothing outside.

    The empty name asks for the list of the file's own xattrs."""
    fid = await rig.walk("file.txt")
    xfid = rig.client.new_fid()
    try:
        reply = await rpc(rig.client, p.Txattrwalk(fid, xfid, name))
    except OSError as exc:
        assert exc.errno != errno.EIO
        return
    assert name == "", f"xattr {name!r} exists on an export file"
    names = await rig.client.read(xfid, 0, reply.size)
    assert CANARY_XATTR.encode() not in names


async def _xattrcreate(rig: EscapeRig, name: str) -> None:
    fid = await rig.walk("file.txt")
    value = b"escape?"
    try:
        await rpc(rig.client, p.Txattrcreate(fid, name, len(value), 0))
        await rpc(rig.client, p.Twrite(fid, 0, value))
        await rpc(rig.client, p.Tclunk(fid))
    except OSError as exc:
        assert exc.errno != errno.EIO


CREATING: dict[str, Callable[[EscapeRig, str], Awaitable[None]]] = {
    "Tlcreate": _lcreate, "Tmkdir": _mkdir, "Tsymlink": _symlink, "Tmknod": _mknod,
    "Tlink": _link, "Trenameat-newname": _renameat_new, "Trename": _rename,
    "Txattrcreate": _xattrcreate,
}
CONSUMING: dict[str, Callable[[EscapeRig, str], Awaitable[None]]] = {
    "Trenameat-oldname": _renameat_old, "Tunlinkat": _unlinkat, "Tunlinkat-rmdir": _rmdirat,
    "Twalk": _walk, "Twalk-later-element": _walk_later_element, "Txattrwalk": _xattrwalk,
}
# Twalk may legitimately take "." and ".." (they stay inside: see test_walk_dotdot_*).
_WALK_DOTS = {("Twalk", "dotdot"), ("Twalk", "dot"), ("Twalk-later-element", "dotdot"),
              ("Twalk-later-element", "dot")}


@pytest.mark.parametrize("kind", BAD_NAMES)
@pytest.mark.parametrize("op", CREATING)
async def test_cve_2016_7116_creating_op_rejects_bad_name(rig: EscapeRig, op: str,
                                                          kind: str) -> None:
    """CVE-2016-7116: a creating op never makes *name* outside (probe never appears)."""
    await CREATING[op](rig, BAD_NAMES[kind](rig, PROBE))


@pytest.mark.parametrize("op,kind", [(op, kind) for op in CONSUMING for kind in BAD_NAMES
                                     if (op, kind) not in _WALK_DOTS])
async def test_cve_2016_7116_consuming_op_rejects_bad_name(rig: EscapeRig, op: str,
                                                           kind: str) -> None:
    """CVE-2016-7116: an op on an existing name never reaches the canary's secret.txt."""
    await CONSUMING[op](rig, BAD_NAMES[kind](rig, "secret.txt"))


async def test_cve_2016_7116_walk_dotdot_at_root_stays_at_root(rig: EscapeRig) -> None:
    """CVE-2016-7116: '..' at the root is the root, however many times."""
    root_qid = (await rig.client.getattr(rig.root)).qid
    reply = await rpc(rig.client, p.Twalk(rig.root, rig.client.new_fid(),
                                          [".."] * p.MAX_WALK_ELEMENTS))
    assert [q.path for q in reply.wqids] == [root_qid.path] * p.MAX_WALK_ELEMENTS
    fid = await rig.walk(*[".."] * 8)
    for _ in range(4):  # walking on from the result never climbs either
        await rig.client.walk(fid, [".."] * 8, newfid=fid)
    assert (await rig.client.getattr(fid)).qid.path == root_qid.path
    reply = await rpc(rig.client, p.Twalk(fid, rig.client.new_fid(), ["..", "outside"]))
    assert [q.path for q in reply.wqids] == [root_qid.path], "walked from the root to its parent"


async def test_cve_2016_7116_walk_dotdot_from_subdir_then_out(rig: EscapeRig) -> None:
    """CVE-2016-7116: dir/../../outside/secret.txt stops at the export root."""
    reply = await rig.try_walk("dir", "..", "..", "outside", "secret.txt")
    assert isinstance(reply, p.Rwalk), reply
    assert len(reply.wqids) == 3
    root_qid = (await rig.client.getattr(rig.root)).qid
    assert reply.wqids[1].path == root_qid.path == reply.wqids[2].path
    rig.assert_no_canary_qids(reply.wqids)


async def test_cve_2016_7116_too_many_walk_elements(rig: EscapeRig) -> None:
    """CVE-2016-7116: more than 16 elements is refused, not walked."""
    await expect_error(rig.client, p.Twalk(rig.root, rig.client.new_fid(),
                                           [".."] * (p.MAX_WALK_ELEMENTS + 1)), errno.EINVAL)


async def test_cve_2016_7116_readdir_at_root_hides_parent(rig: EscapeRig) -> None:
    """CVE-2016-7116: the root's '..' entry is the root itself; no canary name is listed."""
    fid = await rig.walk()
    await rig.client.open(fid)
    entries = await rig.client.readdir_all(fid)
    names = {e[3] for e in entries}
    assert "outside" not in names
    root_qid = (await rig.client.getattr(rig.root)).qid
    dotdot = [e for e in entries if e[3] == ".."]
    assert dotdot and dotdot[0][0].path == root_qid.path
    rig.assert_no_canary_qids([e[0] for e in entries])


async def test_cve_2016_7116_attach_aname_is_not_a_path(rig: EscapeRig) -> None:
    """CVE-2016-7116: Tattach's aname cannot pick a directory outside the export."""
    fid = rig.client.new_fid()
    try:
        reply = await rpc(rig.client, p.Tattach(fid, p.NOFID, "root", str(rig.outside), 0))
    except OSError as exc:
        assert exc.errno != errno.EIO
        return
    rig.assert_no_canary_qids([reply.qid])
    await expect_error(rig.client, p.Twalk(fid, rig.client.new_fid(), ["secret.txt"]), errno.ENOENT)
