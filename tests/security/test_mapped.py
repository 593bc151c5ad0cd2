"""The mapped security models' own metadata must be out of the guest's reach
(CVE-2017-7493 class), and their exports confine as passthrough does.

QEMU's CVE-2017-7493: in mapped-file mode the guest could reach the
``.virtfs_metadata`` files and write its own uid/mode into them (a setuid
root file for the taking).  In mapped-xattr mode the same metadata lives in
``user.virtfs.*`` xattrs, which the guest must neither read, write, list nor
remove.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ninep.protocol import ninep as p

from .conftest import EscapeRig
from .harness import expect_error, rpc
from .harness import OpenWatch
from .test_special_files import NULL_DEV

META_DIR = ".virtfs_metadata"
META_ROOT = ".virtfs_metadata_root"
VIRTFS_XATTRS = ("user.virtfs.uid", "user.virtfs.gid", "user.virtfs.mode", "user.virtfs.rdev")


def metadata_snapshot(export: Path) -> dict[str, bytes]:
    """Every mapped-file metadata file and every user.virtfs.* xattr under the export."""
    snap: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(export):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if META_DIR in path.split(os.sep) or name == META_ROOT:
                if os.path.isfile(path):
                    snap[path] = Path(path).read_bytes()
            for attr in os.listxattr(path, follow_symlinks=False):
                if attr.startswith("user.virtfs."):
                    snap[f"{path}@{attr}"] = os.getxattr(path, attr, follow_symlinks=False)
    return snap


async def guest_file(rig: EscapeRig, name: str = "guestfile", in_dir: bool = False) -> int:
    """Have the guest create a file (so the model stores its metadata); returns its fid."""
    dfid = await rig.walk("dir") if in_dir else await rig.walk()
    await rpc(rig.client, p.Tlcreate(dfid, name, p.DOTL_RDWR, 0o640, 0))
    return dfid


# --- mapped-file: .virtfs_metadata ----------------------------------------------------------

@pytest.mark.parametrize("where", ["root", "subdir"])
@pytest.mark.parametrize("name", [META_DIR, META_ROOT])
async def test_cve_2017_7493_metadata_cannot_be_walked_or_listed(mapped_file_rig: EscapeRig,
                                                                 name: str, where: str) -> None:
    """CVE-2017-7493: the metadata dir/file is neither walkable nor listed."""
    rig = mapped_file_rig
    await guest_file(rig, in_dir=where == "subdir")
    assert os.path.isdir(rig.export / ("dir" if where == "subdir" else "") / META_DIR)
    start = ["dir"] if where == "subdir" else []
    for names in ([*start, name], [*start, name, "guestfile"]):
        reply = await rig.try_walk(*names)
        if isinstance(reply, OSError):
            assert not start and reply.errno == errno.ENOENT
        else:
            assert len(reply.wqids) == len(start), f"walked into {name}"
    fid = await rig.client.walk_open(rig.root, start)
    assert {e[3] for e in await rig.client.readdir_all(fid)}.isdisjoint({META_DIR, META_ROOT})


@pytest.mark.parametrize("name", [META_DIR, META_ROOT])
async def test_cve_2017_7493_metadata_names_cannot_be_made_or_moved(mapped_file_rig: EscapeRig,
                                                                    name: str) -> None:
    """CVE-2017-7493: no creating, linking, renaming or unlinking under the metadata names."""
    rig = mapped_file_rig
    dfid = await guest_file(rig)
    before = metadata_snapshot(rig.export)
    file_fid = await rig.walk("guestfile")
    for msg in (p.Tlcreate(await rig.walk(), name, p.DOTL_RDWR, 0o644, 0),
                p.Tmkdir(rig.root, name, 0o755, 0), p.Tsymlink(rig.root, name, "x", 0),
                p.Tmknod(rig.root, name, stat.S_IFREG | 0o644, 0, 0, 0),
                p.Tlink(rig.root, file_fid, name), p.Trename(file_fid, rig.root, name),
                p.Trenameat(rig.root, "guestfile", rig.root, name),
                p.Trenameat(rig.root, name, rig.root, "stolen"),
                p.Tunlinkat(rig.root, name, 0), p.Tunlinkat(rig.root, name, p.AT_REMOVEDIR)):
        await expect_error(rig.client, msg)
    assert metadata_snapshot(rig.export) == before
    assert dfid


async def test_cve_2017_7493_guest_cannot_forge_its_metadata(mapped_file_rig: EscapeRig) -> None:
    """CVE-2017-7493: the guest's only way to change stored ownership is Tsetattr; it cannot
    write a 'virtfs.uid=0 / setuid' metadata file by any name."""
    rig = mapped_file_rig
    await guest_file(rig)
    forged = b"virtfs.uid=0\nvirtfs.gid=0\nvirtfs.mode=0104755\n"
    fid = await rig.walk()
    await expect_error(rig.client, p.Tlcreate(fid, META_DIR, p.DOTL_RDWR, 0o644, 0))
    assert isinstance(await rig.try_walk(META_DIR, "guestfile"), FileNotFoundError)
    meta = (rig.export / META_DIR / "guestfile").read_bytes()
    assert meta != forged and b"virtfs.mode" in meta
    attr = await rig.client.getattr(await rig.walk("guestfile"))
    assert attr.mode & 0o7777 == 0o640


# --- mapped-xattr: user.virtfs.* --------------------------------------------------------------

@pytest.mark.parametrize("attr", VIRTFS_XATTRS + ("user.virtfs.system.posix_acl_access",))
async def test_cve_2017_7493_virtfs_xattrs_are_unreachable(mapped_xattr_rig: EscapeRig,
                                                           attr: str) -> None:
    """CVE-2017-7493 (mapped-xattr form): user.virtfs.* can't be read, set or removed."""
    rig = mapped_xattr_rig
    await guest_file(rig)
    before = metadata_snapshot(rig.export)
    assert any(k.endswith("@user.virtfs.mode") for k in before)
    fid = await rig.walk("guestfile")
    await expect_error(rig.client, p.Txattrwalk(fid, rig.client.new_fid(), attr))
    for size, value in ((4, b"\0\0\0\0"), (0, b"")):
        xfid = await rig.walk("guestfile")
        try:
            await rpc(rig.client, p.Txattrcreate(xfid, attr, size, 0))
            if value:
                await rpc(rig.client, p.Twrite(xfid, 0, value))
            await rpc(rig.client, p.Tclunk(xfid))
        except OSError as exc:
            assert exc.errno in (errno.EACCES, errno.EPERM, errno.EOPNOTSUPP, errno.ENODATA,
                                 errno.EINVAL), exc
        else:
            pytest.fail(f"set/removed {attr}")
    assert metadata_snapshot(rig.export) == before


async def test_cve_2017_7493_virtfs_xattrs_are_not_listed(mapped_xattr_rig: EscapeRig) -> None:
    """CVE-2017-7493 (mapped-xattr form): the xattr list shows the guest's own names only."""
    rig = mapped_xattr_rig
    await guest_file(rig)
    fid = await rig.walk("guestfile")
    xfid = rig.client.new_fid()
    reply = await rpc(rig.client, p.Txattrwalk(fid, xfid, ""))
    names = await rig.client.read(xfid, 0, max(reply.size, 1))
    assert b"virtfs" not in names


# --- both: confinement holds as in passthrough ---------------------------------------------------

async def test_cve_2016_9602_mapped_models_do_not_follow_host_symlinks(
        mapped_rig: EscapeRig) -> None:
    """CVE-2016-9602 under a mapped model: host symlinks to outside are not walked through
    or opened; their canary targets stay untouched (teardown)."""
    rig = mapped_rig
    for link in ("link_out_dir", "link_out_abs", "up"):
        reply = await rig.try_walk(link, "secret.txt")
        assert not (isinstance(reply, p.Rwalk) and len(reply.wqids) == 2)
    fid = await rig.walk("link_out_file")
    await expect_error(rig.client, p.Tlopen(fid, p.DOTL_RDWR | p.DOTL_TRUNC), errno.ELOOP,
                       errno.ENXIO)
    await expect_error(rig.client, p.Tlcreate(await rig.walk(), "dangling", p.DOTL_RDWR,
                                              0o644, 0), errno.EEXIST, errno.ELOOP)


async def test_cve_2023_2861_mapped_models_refuse_host_devices(mapped_rig: EscapeRig) -> None:
    """CVE-2023-2861 under a mapped model: a real host device node in the export is ENXIO."""
    rig = mapped_rig
    try:
        os.mknod(rig.export / "chardev", stat.S_IFCHR | 0o666, NULL_DEV)
    except PermissionError:
        pytest.skip("needs CAP_MKNOD")
    fid = await rig.walk("chardev")
    with OpenWatch(rig.export / "chardev") as watch:
        await expect_error(rig.client, p.Tlopen(fid, p.DOTL_RDWR), errno.ENXIO)
        assert not watch.opened(), "the server opened the device"
