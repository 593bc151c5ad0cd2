"""The mapped security models (QEMU's mapped-xattr and mapped-file).

Host-side checks read the xattrs and ``.virtfs_metadata`` files directly and
compare them byte for byte with what QEMU writes (hw/9pfs/9p-local.c), and
metadata written by hand in QEMU's format must read back through ninep.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Awaitable
from pathlib import Path

import pytest

from ninep.backends.base import Credentials, SetAttr
from ninep.backends.local import LocalBackend, make_model
from ninep.backends.local.mapped import MappedFileModel, MappedXattrModel
from ninep.protocol.ninep import QTSYMLINK

from .conftest import CRED, MAPPED, BackendSpec, Fs, local_backend

FILE, XATTR = "mapped-file", "mapped-xattr"
OTHER = Credentials(777, 888)
RDEV = os.makedev(4, 5)


@pytest.fixture(params=[XATTR, FILE])
def backend_spec(request: pytest.FixtureRequest) -> BackendSpec:
    """This module's back ends: the local one with each mapped model."""
    return BackendSpec(local_backend(request.param), MAPPED)


only_xattr = pytest.mark.parametrize("backend_spec", [XATTR], indirect=True)
only_file = pytest.mark.parametrize("backend_spec", [FILE], indirect=True)


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def host_virtfs_xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False) if n.startswith("user.virtfs.")}


def names(raw: bytes) -> set[str]:
    return {n.decode() for n in raw.split(b"\0") if n}


async def errno_of(call: Awaitable[object]) -> int:
    """The errno *call* fails with (it must fail)."""
    try:
        await call
    except OSError as exc:
        return exc.errno
    raise AssertionError("no error raised")


# --- creating: host files belong to the server, the guest's view is stored aside --------------

async def test_create_is_server_owned_with_fmode(fs: Fs) -> None:
    node = await fs.create("f", mode=0o4750)
    host = os.lstat(fs.host("f"))
    assert (host.st_uid, host.st_gid, host.st_mode) == (0, 0, stat.S_IFREG | 0o600)
    for target in (node, "f"):  # open (fstat) and by name (lstat)
        _, st = await fs.getattr(target)
        assert (st.uid, st.gid, st.mode) == (CRED.uid, CRED.gid, stat.S_IFREG | 0o4750)


async def test_mkdir_is_server_owned_with_dmode(fs: Fs) -> None:
    await fs.backend.mkdir(fs.root, "d", 0o1775, CRED)
    host = os.lstat(fs.host("d"))
    assert (host.st_uid, host.st_mode) == (0, stat.S_IFDIR | 0o700)
    _, st = await fs.getattr("d")
    assert (st.uid, st.gid, st.mode) == (CRED.uid, CRED.gid, stat.S_IFDIR | 0o1775)


@pytest.mark.parametrize("model", [XATTR, FILE])
async def test_fmode_dmode_honoured_whatever_the_umask(export: Path, model: str) -> None:
    backend = LocalBackend(str(export), model=make_model(model, fmode=0o4640, dmode=0o2750))
    old_umask = os.umask(0o077)
    try:
        root, _ = await backend.attach("root", 0, "")
        await backend.mkdir(root, "d", 0o755, CRED)
        await backend.mknod(root, "p", stat.S_IFIFO | 0o644, 0, CRED)
        await backend.create(root, "f", os.O_RDWR, 0o644, CRED)  # root becomes the file
        await backend.clunk(root)
    finally:
        os.umask(old_umask)
        await backend.close()
    assert stat.S_IMODE(os.lstat(export / "f").st_mode) == 0o640  # masked to 0777, as QEMU
    assert stat.S_IMODE(os.lstat(export / "p").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(export / "d").st_mode) == 0o750


@pytest.mark.parametrize("ftype", [stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK, 0])
async def test_special_files_are_regular_host_files(fs: Fs, ftype: int) -> None:
    rdev = RDEV if ftype in (stat.S_IFCHR, stat.S_IFBLK) else 0
    await fs.backend.mknod(fs.root, "n", ftype | 0o640, rdev, CRED)
    host = os.lstat(fs.host("n"))
    assert host.st_mode == stat.S_IFREG | 0o600 and host.st_size == 0
    _, st = await fs.getattr("n")
    assert st.mode == (ftype or stat.S_IFREG) | 0o640  # type 0 means a regular file
    assert (st.rdev, st.uid, st.gid) == (rdev, CRED.uid, CRED.gid)


@pytest.mark.parametrize("mode, err", [(stat.S_IFDIR | 0o755, errno.EPERM),
                                       (stat.S_IFLNK | 0o777, errno.EINVAL),
                                       (0o170000 | 0o644, errno.EINVAL)])
async def test_mknod_refuses_what_the_kernel_refuses(fs: Fs, mode: int, err: int) -> None:
    assert await errno_of(fs.backend.mknod(fs.root, "n", mode, 0, CRED)) == err
    assert not fs.host("n").exists()


async def test_symlink_is_a_regular_file_holding_the_target(fs: Fs) -> None:
    target = "../some where/ü"
    qid = await fs.backend.symlink(fs.root, "l", target, CRED)
    assert qid.type == QTSYMLINK
    host = os.lstat(fs.host("l"))
    assert host.st_mode == stat.S_IFREG | 0o600
    assert fs.host("l").read_bytes() == target.encode()
    _, st = await fs.getattr("l")
    assert (st.mode, st.uid, st.size) == (stat.S_IFLNK | 0o777, CRED.uid, len(target.encode()))
    assert await fs.backend.readlink(await fs.walk("l")) == target


async def test_readlink_of_a_non_symlink_is_einval(fs: Fs) -> None:
    await fs.backend.mknod(fs.root, "p", stat.S_IFIFO | 0o644, 0, CRED)
    fs.host("plain").write_bytes(b"not a link")
    for name in ("p", "plain"):
        assert await errno_of(fs.backend.readlink(await fs.walk(name))) == errno.EINVAL


async def test_host_symlink_without_metadata_still_reads(fs: Fs) -> None:
    os.symlink("elsewhere", fs.host("hl"))
    _, st = await fs.getattr("hl")
    assert stat.S_ISLNK(st.mode)
    assert await fs.backend.readlink(await fs.walk("hl")) == "elsewhere"


async def test_files_without_metadata_show_host_values(fs: Fs) -> None:
    fs.host("plain").write_bytes(b"x")
    os.chown(fs.host("plain"), 12, 34)
    os.chmod(fs.host("plain"), 0o654)
    _, st = await fs.getattr("plain")
    assert (st.uid, st.gid, st.mode) == (12, 34, stat.S_IFREG | 0o654)


async def test_create_of_existing_file_without_excl_keeps_its_owner(fs: Fs) -> None:
    await fs.clunk(await fs.create("f", mode=0o640))
    node = await fs.create("f", flags=os.O_RDWR, mode=0o600, cred=OTHER)
    _, st = await fs.getattr(node)
    assert (st.uid, st.mode) == (CRED.uid, stat.S_IFREG | 0o640)
    parent = await fs.walk("")
    with pytest.raises(FileExistsError):
        await fs.backend.create(parent, "f", os.O_RDWR | os.O_EXCL, 0o600, OTHER)


async def test_create_over_a_host_special_file_does_not_open_it(fs: Fs) -> None:
    os.mkfifo(fs.host("fifo"))
    parent = await fs.walk("")
    assert await errno_of(fs.backend.create(parent, "fifo", os.O_RDWR, 0o600, OTHER)) == errno.ENXIO


# --- changing: only the stored metadata changes -----------------------------------------------

async def test_chmod_keeps_type_and_host_mode(fs: Fs) -> None:
    await fs.backend.mknod(fs.root, "p", stat.S_IFIFO | 0o644, 0, CRED)
    node = await fs.walk("p")
    await fs.backend.setattr(node, SetAttr(mode=0o2711))
    _, st = await fs.getattr("p")
    assert st.mode == stat.S_IFIFO | 0o2711 and st.uid == CRED.uid
    assert os.lstat(fs.host("p")).st_mode == stat.S_IFREG | 0o600


async def test_chown_changes_only_the_given_ids(fs: Fs) -> None:
    node = await fs.create("f", mode=0o640)
    await fs.backend.setattr(node, SetAttr(uid=OTHER.uid))
    _, st = await fs.getattr("f")
    assert (st.uid, st.gid, st.mode) == (OTHER.uid, CRED.gid, stat.S_IFREG | 0o640)
    await fs.backend.setattr(await fs.walk("f"), SetAttr(gid=OTHER.gid))
    _, st = await fs.getattr("f")
    assert (st.uid, st.gid) == OTHER
    host = os.lstat(fs.host("f"))
    assert (host.st_uid, host.st_gid) == (0, 0)


async def test_chmod_and_chown_of_the_root(fs: Fs) -> None:
    await fs.backend.setattr(fs.root, SetAttr(uid=OTHER.uid, gid=OTHER.gid, mode=0o751))
    _, st = await fs.getattr(fs.root)
    assert (st.uid, st.gid, st.mode) == (OTHER.uid, OTHER.gid, stat.S_IFDIR | 0o751)
    host = os.lstat(fs.host())
    assert (host.st_uid, stat.S_IMODE(host.st_mode)) == (0, 0o755)


async def test_open_file_reads_its_metadata(fs: Fs) -> None:
    await fs.clunk(await fs.create("f", mode=0o640))
    node = await fs.open("f", os.O_RDONLY)
    await fs.backend.setattr(node, SetAttr(mode=0o604))
    _, st = await fs.getattr(node)
    assert (st.uid, st.mode) == (CRED.uid, stat.S_IFREG | 0o604)


async def test_readdir_reports_unknown_types(fs: Fs) -> None:
    await fs.backend.symlink(fs.root, "l", "t", CRED)
    await fs.backend.mkdir(fs.root, "d", 0o755, CRED)
    node = await fs.open("", os.O_RDONLY)
    types = {e.name: e.type for e in await fs.entries(node)}
    assert types[b"l"] == types[b"d"] == 0  # DT_UNKNOWN: the host type would lie


# --- mapped-xattr -------------------------------------------------------------------------------

@only_xattr
async def test_xattr_encoding_is_qemus(fs: Fs) -> None:
    await fs.clunk(await fs.create("f", mode=0o640))
    assert host_virtfs_xattrs(fs.host("f")) == {
        "user.virtfs.uid": u32(CRED.uid), "user.virtfs.gid": u32(CRED.gid),
        "user.virtfs.mode": u32(stat.S_IFREG | 0o640)}
    await fs.backend.mknod(fs.root, "c", stat.S_IFCHR | 0o600, RDEV, CRED)
    assert host_virtfs_xattrs(fs.host("c")) == {
        "user.virtfs.uid": u32(CRED.uid), "user.virtfs.gid": u32(CRED.gid),
        "user.virtfs.mode": u32(stat.S_IFCHR | 0o600),
        "user.virtfs.rdev": struct.pack("<Q", RDEV)}
    await fs.backend.setattr(await fs.walk("c"), SetAttr(uid=0xFFFFFFFE))
    assert os.getxattr(fs.host("c"), "user.virtfs.uid") == b"\xfe\xff\xff\xff"


@only_xattr
async def test_reads_xattrs_written_by_qemu(fs: Fs) -> None:
    path = fs.host("q")
    path.write_bytes(b"")
    os.setxattr(path, "user.virtfs.mode", u32(stat.S_IFBLK | 0o660))
    os.setxattr(path, "user.virtfs.rdev", struct.pack("<Q", RDEV))
    os.setxattr(path, "user.virtfs.gid", b"\x01\x02")  # wrong size: ignored, host value stays
    _, st = await fs.getattr("q")
    assert (st.mode, st.rdev, st.uid, st.gid) == (stat.S_IFBLK | 0o660, RDEV, 0, 0)


@only_xattr
async def test_virtfs_xattrs_are_hidden_and_protected(fs: Fs) -> None:
    node = await fs.create("f")
    be = fs.backend
    for name in ("user.virtfs.uid", "user.virtfs.anything"):
        assert await errno_of(be.xattr_get(node, name)) == errno.ENODATA
        assert await errno_of(be.xattr_set(node, name, u32(0), 0)) == errno.EACCES
        assert await errno_of(be.xattr_remove(node, name)) == errno.EACCES
    await be.xattr_set(node, "user.mine", b"v", 0)
    os.setxattr(fs.host("f"), "trusted.host", b"h")  # host-only namespaces stay hidden too
    assert names(await be.xattr_list(node)) == {"user.mine"}
    assert host_virtfs_xattrs(fs.host("f"))["user.virtfs.uid"] == u32(CRED.uid)


@only_xattr
@pytest.mark.parametrize("acl, on_dir", [("system.posix_acl_access", False),
                                         ("system.posix_acl_default", True)])
async def test_acls_are_stored_under_user_virtfs(fs: Fs, acl: str, on_dir: bool) -> None:
    if on_dir:
        await fs.backend.mkdir(fs.root, "t", 0o755, CRED)
    else:
        await fs.clunk(await fs.create("t"))
    node = await fs.walk("t")
    value = b"\x02\x00\x00\x00\x01\x00\x06\x00\xff\xff\xff\xff"
    await fs.backend.xattr_set(node, acl, value, 0)
    assert os.getxattr(fs.host("t"), "user.virtfs." + acl) == value
    assert acl not in os.listxattr(fs.host("t"))  # the host's own ACL is untouched
    assert await fs.backend.xattr_get(node, acl) == value
    assert acl in names(await fs.backend.xattr_list(node))
    await fs.backend.xattr_remove(node, acl)
    await fs.backend.xattr_remove(node, acl)  # an absent ACL removes fine, as QEMU
    assert "user.virtfs." + acl not in os.listxattr(fs.host("t"))
    assert await errno_of(fs.backend.xattr_get(node, acl)) == errno.ENODATA


@only_xattr
@pytest.mark.parametrize("name", ["trusted.x", "security.x", "system.other"])
async def test_other_namespaces_are_not_supported(fs: Fs, name: str) -> None:
    node = await fs.create("f")
    assert await errno_of(fs.backend.xattr_get(node, name)) == errno.EOPNOTSUPP
    assert await errno_of(fs.backend.xattr_set(node, name, b"v", 0)) == errno.EOPNOTSUPP
    assert await errno_of(fs.backend.xattr_remove(node, name)) == errno.EOPNOTSUPP


@only_xattr
async def test_unlinked_open_file_keeps_its_metadata(fs: Fs) -> None:
    node = await fs.create("f", mode=0o640)
    await fs.backend.unlinkat(await fs.walk(""), "f", False)
    await fs.backend.setattr(node, SetAttr(mode=0o444, uid=OTHER.uid))
    _, st = await fs.getattr(node)
    assert (st.uid, st.gid, st.mode) == (OTHER.uid, CRED.gid, stat.S_IFREG | 0o444)


# --- mapped-file --------------------------------------------------------------------------------

def meta(fs: Fs, path: str) -> Path:
    parent, _, name = path.rpartition("/")
    return fs.host(parent) / ".virtfs_metadata" / name if name else fs.host(".virtfs_metadata_root")


@only_file
async def test_metadata_file_format_is_qemus(fs: Fs) -> None:
    await fs.clunk(await fs.create("f", mode=0o640))
    assert meta(fs, "f").read_bytes() == b"virtfs.uid=4321\nvirtfs.gid=5432\nvirtfs.mode=33184\n"
    assert stat.S_IMODE(os.lstat(meta(fs, "f")).st_mode) == 0o600
    assert os.lstat(fs.host(".virtfs_metadata")).st_mode == stat.S_IFDIR | 0o700
    await fs.backend.mknod(fs.root, "c", stat.S_IFCHR | 0o600, RDEV, CRED)
    assert meta(fs, "c").read_bytes() == (b"virtfs.uid=4321\nvirtfs.gid=5432\nvirtfs.mode=8576\n"
                                          b"virtfs.rdev=%d\n" % RDEV)
    # a change rewrites every field in QEMU's order; ids print as C ints
    await fs.backend.setattr(await fs.walk("c"), SetAttr(gid=0xFFFFFFFE))
    assert meta(fs, "c").read_bytes() == (b"virtfs.uid=4321\nvirtfs.gid=-2\nvirtfs.mode=8576\n"
                                          b"virtfs.rdev=%d\n" % RDEV)
    _, st = await fs.getattr("c")
    assert st.gid == 0xFFFFFFFE


@only_file
async def test_root_metadata_file(fs: Fs) -> None:
    await fs.backend.setattr(fs.root, SetAttr(mode=0o750))
    assert fs.host(".virtfs_metadata_root").read_bytes() == b"virtfs.mode=16872\n"
    assert not fs.host(".virtfs_metadata").exists()


@only_file
async def test_reads_metadata_files_written_by_qemu(fs: Fs) -> None:
    fs.host("q").write_bytes(b"")
    fs.host(".virtfs_metadata").mkdir(mode=0o700)
    meta(fs, "q").write_bytes(b"virtfs.mode=4516\nvirtfs.uid= 7\nother=1\nvirtfs.rdev=1029\n"
                              b"virtfs.gid=-1\n")
    _, st = await fs.getattr("q")
    assert (st.mode, st.uid, st.gid, st.rdev) == (stat.S_IFIFO | 0o644, 7, 0xFFFFFFFF, 1029)
    fs.host(".virtfs_metadata_root").write_bytes(b"virtfs.uid=99\n")
    _, st = await fs.getattr(fs.root)
    assert st.uid == 99 and st.mode == os.lstat(fs.host()).st_mode


async def test_symlink_written_by_qemu_reads_back(fs: Fs) -> None:
    fs.host("ql").write_bytes(b"../target")
    mode = stat.S_IFLNK | 0o777
    if isinstance(fs.backend.model, MappedFileModel):  # type: ignore[attr-defined]
        fs.host(".virtfs_metadata").mkdir(mode=0o700)
        meta(fs, "ql").write_bytes(b"virtfs.uid=5\nvirtfs.gid=6\nvirtfs.mode=%d\n" % mode)
    else:
        for key, value in (("uid", 5), ("gid", 6), ("mode", mode)):
            os.setxattr(fs.host("ql"), f"user.virtfs.{key}", u32(value))
    qid, st = await fs.getattr("ql")
    assert qid.type == QTSYMLINK and (st.mode, st.uid, st.gid) == (mode, 5, 6)
    assert await fs.backend.readlink(await fs.walk("ql")) == "../target"


@only_file
async def test_metadata_names_are_unreachable(fs: Fs) -> None:
    await fs.backend.mkdir(fs.root, "d", 0o755, CRED)
    await fs.clunk(await fs.create("d/f"))
    fs.host(".virtfs_metadata_root").write_bytes(b"virtfs.uid=1\n")
    be = fs.backend
    before = sorted(str(p.relative_to(fs.host())) for p in fs.host().rglob("*"))
    for parent in ("", "d"):
        for hidden in (".virtfs_metadata", ".virtfs_metadata_root"):
            dnode = await fs.walk(parent)
            assert await errno_of(be.walk(dnode, [hidden])) == errno.ENOENT
            assert await errno_of(be.walk(dnode, [hidden, "f"])) == errno.ENOENT
            for op in (be.create(await fs.walk(parent), hidden, os.O_RDWR, 0o644, CRED),
                       be.mkdir(dnode, hidden, 0o755, CRED),
                       be.mknod(dnode, hidden, stat.S_IFIFO | 0o644, 0, CRED),
                       be.symlink(dnode, hidden, "x", CRED),
                       be.link(dnode, await fs.walk("d/f"), hidden),
                       be.renameat(fs.root, "d", dnode, hidden),
                       be.renameat(dnode, hidden, fs.root, "stolen"),
                       be.rename(await fs.walk("d/f"), dnode, hidden),
                       be.unlinkat(dnode, hidden, True),
                       be.unlinkat(dnode, hidden, False)):
                assert await errno_of(op) in (errno.EACCES, errno.EINVAL)
    after = sorted(str(p.relative_to(fs.host())) for p in fs.host().rglob("*"))
    assert after == before


@only_file
@pytest.mark.parametrize("max_entries", [1, 2, 1000])
async def test_readdir_skips_metadata_names(fs: Fs, max_entries: int) -> None:
    for name in ("a", "b", "c"):
        await fs.clunk(await fs.create(name))
    fs.host(".virtfs_metadata_root").write_bytes(b"")
    node = await fs.open("", os.O_RDONLY)
    got = sorted(e.name for e in await fs.entries(node, max_entries))
    assert got == [b".", b"..", b"a", b"b", b"c"]


@only_file
async def test_rename_moves_metadata(fs: Fs) -> None:
    await fs.backend.mkdir(fs.root, "d2", 0o755, CRED)
    await fs.clunk(await fs.create("f", mode=0o640))
    content = meta(fs, "f").read_bytes()
    await fs.backend.rename(await fs.walk("f"), await fs.walk("d2"), "g")
    assert not meta(fs, "f").exists()
    assert meta(fs, "d2/g").read_bytes() == content
    _, st = await fs.getattr("d2/g")
    assert (st.uid, st.mode) == (CRED.uid, stat.S_IFREG | 0o640)
    # a directory's children keep theirs: they live inside it
    await fs.clunk(await fs.create("d2/inner", mode=0o604))
    await fs.backend.renameat(fs.root, "d2", fs.root, "d3")
    _, st = await fs.getattr("d3/inner")
    assert st.mode == stat.S_IFREG | 0o604 and not meta(fs, "d2").exists()


@only_file
async def test_rename_of_a_file_without_metadata_drops_the_targets(fs: Fs) -> None:
    await fs.clunk(await fs.create("victim", mode=0o640))
    fs.host("plain").write_bytes(b"")
    await fs.backend.renameat(fs.root, "plain", fs.root, "victim")
    assert not meta(fs, "victim").exists()
    _, st = await fs.getattr("victim")
    assert st.uid == 0  # the host's, not the replaced file's


@only_file
async def test_link_shares_metadata(fs: Fs) -> None:
    await fs.clunk(await fs.create("f", mode=0o640))
    meta(fs, "h").write_bytes(b"virtfs.uid=1\n")  # a stale orphan must not block or survive
    await fs.backend.link(fs.root, await fs.walk("f"), "h")
    assert os.lstat(meta(fs, "h")).st_ino == os.lstat(meta(fs, "f")).st_ino
    await fs.backend.setattr(await fs.walk("h"), SetAttr(uid=OTHER.uid))
    _, st = await fs.getattr("f")
    assert st.uid == OTHER.uid


@only_file
async def test_unlink_and_remove_drop_metadata(fs: Fs) -> None:
    await fs.clunk(await fs.create("f"))
    await fs.clunk(await fs.create("g"))
    await fs.backend.unlinkat(fs.root, "f", False)
    assert not meta(fs, "f").exists()
    node = await fs.walk("g")
    await fs.backend.remove(node)
    assert not meta(fs, "g").exists() and meta(fs, "").parent.exists()


@only_file
async def test_rmdir_clears_the_directorys_own_metadata(fs: Fs) -> None:
    await fs.backend.mkdir(fs.root, "d", 0o755, CRED)
    await fs.clunk(await fs.create("d/f"))
    assert await errno_of(fs.backend.unlinkat(fs.root, "d", True)) == errno.ENOTEMPTY
    assert meta(fs, "d").exists() and meta(fs, "d/f").exists()  # nothing lost on failure
    fs.host("d/f").unlink()  # removed behind the server's back: its metadata is an orphan
    await fs.backend.unlinkat(fs.root, "d", True)
    assert not fs.host("d").exists() and not meta(fs, "d").exists()


@only_file
async def test_unlinked_open_file_falls_back_to_host_attributes(fs: Fs) -> None:
    node = await fs.create("f", mode=0o640)
    await fs.backend.unlinkat(await fs.walk(""), "f", False)
    _, st = await fs.getattr(node)  # QEMU's partial fstat: the metadata went with the name
    assert (st.uid, st.mode) == (0, stat.S_IFREG | 0o600)
    assert await errno_of(fs.backend.setattr(node, SetAttr(mode=0o644))) == errno.ENOENT
    await fs.clunk(await fs.create("f", mode=0o604))  # a new file under the old name
    _, st = await fs.getattr(node)
    assert st.mode == stat.S_IFREG | 0o600  # not the newcomer's metadata


@only_file
async def test_failed_metadata_write_undoes_the_create(fs: Fs) -> None:
    fs.host(".virtfs_metadata").write_bytes(b"junk, not a directory")
    parent = await fs.walk("")
    assert await errno_of(fs.backend.create(parent, "f", os.O_RDWR, 0o644, CRED)) == errno.ENOTDIR
    assert await errno_of(fs.backend.mkdir(fs.root, "d", 0o755, CRED)) == errno.ENOTDIR
    assert not fs.host("f").exists() and not fs.host("d").exists()


@only_file
async def test_xattrs_pass_through(fs: Fs) -> None:
    node = await fs.create("f")
    be = fs.backend
    await be.xattr_set(node, "user.mine", b"v", 0)
    assert os.getxattr(fs.host("f"), "user.mine") == b"v"
    assert await errno_of(be.xattr_set(node, "user.virtfs.uid", u32(0), 0)) == errno.EACCES
    assert await errno_of(be.xattr_set(node, "trusted.x", b"v", 0)) == errno.EOPNOTSUPP
    acl = struct.pack("<I", 2) + b"".join(  # u::rw-, u:1000:r--, g::r--, m::r--, o::r--
        struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in (
            (1, 6, 0xFFFFFFFF), (2, 4, 1000), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
            (0x20, 4, 0xFFFFFFFF)))
    await be.xattr_set(node, "system.posix_acl_access", acl, 0)
    assert "system.posix_acl_access" in names(await be.xattr_list(node))
    assert await be.xattr_get(node, "system.posix_acl_access") == acl


# --- options ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["passthrough", "none"])
@pytest.mark.parametrize("option", ["fmode", "dmode"])
def test_modes_need_a_mapped_model(model: str, option: str) -> None:
    with pytest.raises(ValueError, match=f"--{option}"):
        make_model(model, **{option: 0o600})


def test_make_model_defaults_and_aliases() -> None:
    for name, cls in (("mapped", MappedXattrModel), (XATTR, MappedXattrModel),
                      (FILE, MappedFileModel)):
        model = make_model(name)
        assert type(model) is cls and (model.fmode, model.dmode) == (0o600, 0o700)
        assert model.name in (XATTR, FILE)
    assert make_model(FILE).hidden_names == {".virtfs_metadata", ".virtfs_metadata_root"}
    assert not make_model(XATTR).hidden_names


@only_file
async def test_directory_nlink_does_not_count_the_metadata_directory(fs: Fs) -> None:
    await fs.backend.mkdir(fs.root, "d", 0o755, CRED)
    d = await fs.walk("d")
    for sub in ("a", "b"):
        await fs.backend.mkdir(d, sub, 0o755, CRED)
    assert fs.host("d/.virtfs_metadata").is_dir()
    assert os.lstat(fs.host("d")).st_nlink == 5  # ., a/.., b/.., .virtfs_metadata/..
    _, st = await fs.getattr("d")
    assert st.nlink == 4  # what the guest's `stat -c %h` must show
    opened = await fs.open("d", os.O_RDONLY | os.O_DIRECTORY)
    _, st = await fs.backend.getattr(opened)
    assert st.nlink == 4
