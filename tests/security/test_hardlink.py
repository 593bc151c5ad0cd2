"""A hard link to a host file outside the export, made by the host admin.

Policy (documented here, as QEMU behaves): a hard link *is* the file, so the
guest sees and may change the very inode the host linked in; that is the
admin's doing and no server can tell it apart from any other file.  What the
guest must not gain is anything *else*: no path through the link to its
other directory, no way to add names outside, no way to touch the canary.
(Path-traversal class, CVE-2016-7116: the link is the closest a guest gets to
a path outside.)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ninep.protocol import ninep as p

from .conftest import EscapeRig
from .harness import PROBE, expect_error, rpc

SHARED = b"host shared via a hard link\n"


@pytest.fixture
def shared(rig: EscapeRig) -> Path:
    """outside-shared/linked.txt, hard-linked into the export as hardlink.txt."""
    shared_dir = rig.base / "outside-shared"
    shared_dir.mkdir()
    target = shared_dir / "linked.txt"
    target.write_bytes(SHARED)
    os.link(target, rig.export / "hardlink.txt")
    rig.canary.arm()
    return target


async def test_cve_2016_7116_hardlink_is_served_as_the_same_inode(rig: EscapeRig,
                                                                  shared: Path) -> None:
    """Documented: the guest reads and writes the linked inode itself (nlink 2)."""
    fid = await rig.walk("hardlink.txt")
    attr = await rig.client.getattr(fid)
    assert attr.qid.path == os.stat(shared).st_ino and attr.nlink == 2
    await rig.client.open(fid, p.DOTL_RDWR)
    assert await rig.client.read(fid, 0, 100) == SHARED
    await rig.client.write(fid, 0, b"HOST")
    assert shared.read_bytes().startswith(b"HOST")


async def test_cve_2016_7116_hardlink_gives_no_path_to_its_other_dir(rig: EscapeRig,
                                                                     shared: Path) -> None:
    """'..' from the link is the export root, and nothing can be walked below a file."""
    root_qid = (await rig.client.getattr(rig.root)).qid
    reply = await rpc(rig.client, p.Twalk(rig.root, rig.client.new_fid(),
                                          ["hardlink.txt", "..", "linked.txt"]))
    # '..' of a file is refused (ENOTDIR) or is the export root; never the host dir.
    assert [q.path for q in reply.wqids[1:]] in ([], [root_qid.path])
    rig.assert_no_canary_qids(reply.wqids)
    assert os.stat(shared.parent).st_ino not in [q.path for q in reply.wqids]
    await expect_error(rig.client, p.Twalk(await rig.walk("hardlink.txt"), rig.client.new_fid(),
                                           ["linked.txt"]), errno.ENOTDIR)


async def test_cve_2016_7116_hardlink_cannot_add_names_outside(rig: EscapeRig,
                                                               shared: Path) -> None:
    """Tlink/Trename of the linked file only ever name things inside the export."""
    fid = await rig.walk("hardlink.txt")
    await rpc(rig.client, p.Tlink(rig.root, fid, "second.txt"))
    await rpc(rig.client, p.Trename(fid, rig.root, "renamed.txt"))
    await expect_error(rig.client, p.Tlink(rig.root, fid, f"../outside-shared/{PROBE}"))
    assert sorted(os.listdir(shared.parent)) == ["linked.txt"]
    assert os.stat(shared).st_nlink == 3
    assert (rig.export / "renamed.txt").samefile(shared)


async def test_cve_2016_7116_hardlink_remove_unlinks_only_export_name(rig: EscapeRig,
                                                                      shared: Path) -> None:
    """Tremove on the link removes the export's name; the host file stays."""
    await rpc(rig.client, p.Tremove(await rig.walk("hardlink.txt")))
    assert not (rig.export / "hardlink.txt").exists()
    assert shared.read_bytes() == SHARED and os.stat(shared).st_nlink == 1
