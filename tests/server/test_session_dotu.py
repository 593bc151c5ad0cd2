"""9P2000.u and plain 9P2000 sessions through the project's client: version
choice, Rerror, Topen/Tcreate (every extension), Tstat/Twstat, directory
reads of stat entries, ORCLOSE, read-only exports, and .L requests refused."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ninep.backends.local import LocalBackend
from ninep.client import Client
from ninep.protocol import dotu as u
from ninep.protocol import ninep as p
from ninep.server.session import SessionConfig

DIALECTS = [u.VERSION_9P2000U, u.VERSION_9P2000]


@pytest.fixture(params=DIALECTS)
async def old(serve, request: pytest.FixtureRequest) -> Client:
    """A client of a default server that agreed to 9P2000.u or plain 9P2000."""
    return await (await serve()).connect(version=request.param)


@pytest.fixture
async def dotu(serve) -> Client:
    return await (await serve()).connect(version=u.VERSION_9P2000U)


async def errno_of(client: Client, msg: object) -> int:
    with pytest.raises(OSError) as info:
        await client.rpc(msg)
    return info.value.errno


async def listing(client: Client, dfid: int, count: int = 8192) -> dict[str, u.Dir | u.DirU]:
    fid = await client.walk(dfid, [])
    await client.topen(fid)
    try:
        entries = await client.read_dir(fid, count)
    finally:
        await client.clunk(fid)
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), f"an entry listed twice: {names}"
    return {e.name: e for e in entries}


# --- version, errors -----------------------------------------------------------------------

@pytest.mark.parametrize("version", DIALECTS)
async def test_version_selects_the_dialect(serve, version: str) -> None:
    client = await (await serve()).connect(version=version)
    assert client.messages.version == version
    await client.attach()
    # The same connection can go back to .L: Tversion starts a fresh session.
    assert (await client.version(8192, p.VERSION_9P2000L)).version == p.VERSION_9P2000L
    assert (await client.getattr(await client.attach())).mode & stat.S_IFDIR


async def test_rerror_carries_text_and_errno(dotu: Client) -> None:
    root = await dotu.attach()
    _, fut = dotu.start(p.Twalk(root, 9, ["missing"]))
    assert await fut == u.Rerror(os.strerror(errno.ENOENT), errno.ENOENT)


async def test_plain_rerror_carries_only_the_text(serve) -> None:
    client = await (await serve()).connect(version=u.VERSION_9P2000)
    root = await client.attach()
    _, fut = client.start(p.Twalk(root, 9, ["missing"]))
    assert await fut == u.RerrorPlain(os.strerror(errno.ENOENT))


@pytest.mark.parametrize("msg", [
    p.Tgetattr(1, p.GETATTR_ALL), p.Tlopen(1, 0), p.Treaddir(1, 0, 100), p.Tstatfs(1),
    p.Txattrwalk(1, 2, ""), p.Tmkdir(1, "d", 0o755, 0), p.Tsetattr(1, 0, 0, 0, 0, 0, 0, 0, 0, 0)],
    ids=lambda m: type(m).__name__)
async def test_dotl_requests_on_an_old_session_get_a_protocol_error(old: Client, msg) -> None:
    await old.attach()
    assert await errno_of(old, msg) == errno.EOPNOTSUPP
    assert (await old.stat(1)).qid.type & p.QTDIR  # and the session goes on


async def test_old_requests_on_a_dotl_session_are_refused(served: Client) -> None:
    root = await served.attach()
    for msg in (u.Topen(root, 0), u.Tstat(root), u.Twstat(root, u.DONT_TOUCH)):
        assert await errno_of(served, msg) == errno.EOPNOTSUPP


# --- stat ----------------------------------------------------------------------------------

async def test_stat_of_root_and_file(old: Client, export: Path) -> None:
    (export / "f").write_bytes(b"12345")
    os.chown(export / "f", 1000, 100)
    os.chmod(export / "f", 0o4751)
    os.utime(export / "f", (1_000_000, 2_000_000))
    root = await old.attach()
    d = await old.stat(root)
    assert d.name == "/" and d.mode & u.DMDIR and d.qid.type & p.QTDIR
    d = await old.stat(await old.walk(root, ["f"]))
    host = os.stat(export / "f")
    assert (d.name, d.length, d.atime, d.mtime) == ("f", 5, 1_000_000, 2_000_000)
    assert d.qid.path == (await old.stat(await old.walk(root, ["f"]))).qid.path
    assert (d.uid, d.gid) == ("1000", "100")
    if isinstance(d, u.DirU):
        assert d.mode == 0o751 | u.DMSETUID
        assert (d.n_uid, d.n_gid) == (host.st_uid, host.st_gid)
        assert d.extension == "HARDLINKCOUNT 1"  # Linux's only source of nlink in .u
    else:
        assert d.mode == 0o751  # plain 9P2000 has no setuid bit


async def test_stat_extension_names_symlink_target_and_device(dotu: Client, export: Path) -> None:
    os.symlink("some/where", export / "ln")
    os.mknod(export / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mkfifo(export / "fifo")
    root = await dotu.attach()
    ln = await dotu.stat(await dotu.walk(root, ["ln"]))
    assert ln.mode & u.DMSYMLINK and ln.extension == "some/where"
    null = await dotu.stat(await dotu.walk(root, ["null"]))
    assert null.mode == u.DMDEVICE | 0o600 and null.extension == "c 1 3"
    fifo = await dotu.stat(await dotu.walk(root, ["fifo"]))
    assert fifo.mode & u.DMNAMEDPIPE and fifo.extension == ""


# --- open / read / write -------------------------------------------------------------------

async def test_open_read_write_trunc_append(old: Client, export: Path) -> None:
    (export / "f").write_bytes(b"hello world")
    root = await old.attach()
    fid = await old.walk(root, ["f"])
    reply = await old.topen(fid, u.OREAD)
    assert reply.iounit == (old.msize - p.IOHDRSZ) // 4096 * 4096  # whole pages, as for Tlopen
    assert await old.read(fid, 6, 100) == b"world"
    assert await errno_of(old, p.Twrite(fid, 0, b"x")) == errno.EBADF
    await old.clunk(fid)
    fid = await old.walk(root, ["f"])
    await old.topen(fid, u.ORDWR | u.OTRUNC)
    assert (export / "f").read_bytes() == b""
    assert await old.write(fid, 0, b"abc") == 3
    await old.clunk(fid)
    if old.messages is u.DOTU:
        fid = await old.walk(root, ["f"])
        await old.topen(fid, u.OWRITE | u.OAPPEND)
        await old.write(fid, 0, b"def")
        assert (export / "f").read_bytes() == b"abcdef"


async def test_open_directory_for_writing_is_refused(old: Client) -> None:
    root = await old.attach()
    for mode in (u.OWRITE, u.ORDWR, u.OREAD | u.OTRUNC):
        assert await errno_of(old, u.Topen(await old.walk(root, []), mode)) == errno.EISDIR


async def test_orclose_removes_on_clunk(old: Client, export: Path) -> None:
    (export / "tmp").write_bytes(b"x")
    root = await old.attach()
    fid = await old.walk(root, ["tmp"])
    await old.topen(fid, u.ORDWR | u.ORCLOSE)
    assert (export / "tmp").exists()
    await old.clunk(fid)
    assert not (export / "tmp").exists()


# --- create ----------------------------------------------------------------------------------

async def test_create_file_opens_it_with_its_permissions(old: Client, export: Path) -> None:
    root = await old.attach()
    fid, reply = await old.tcreate(root, "new", 0o640, u.ORDWR)
    assert reply.qid.type == p.QTFILE and reply.iounit
    assert await old.write(fid, 0, b"data") == 4
    assert await old.read(fid, 0, 10) == b"data"
    assert stat.S_IMODE(os.stat(export / "new").st_mode) == 0o640
    assert (await old.stat(fid)).name == "new"
    with pytest.raises(FileExistsError):
        await old.tcreate(root, "new", 0o640, u.ORDWR)
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(OSError):
            await old.tcreate(root, bad, 0o640, u.ORDWR)


async def test_create_directory_opens_it_for_reading(old: Client, export: Path) -> None:
    root = await old.attach()
    fid, reply = await old.tcreate(root, "d", u.DMDIR | 0o750, u.OREAD)
    assert reply.qid.type & p.QTDIR
    assert stat.S_IMODE(os.stat(export / "d").st_mode) == 0o750
    (export / "d" / "inside").touch()
    names = {d.name for d in await old.read_dir(fid)}
    assert "inside" in names
    assert (await old.stat(fid)).name == "d"


async def test_create_symlink_hardlink_and_special_files(dotu: Client, export: Path) -> None:
    (export / "target").write_bytes(b"t")
    root = await dotu.attach()
    fid, reply = await dotu.tcreate(root, "sl", u.DMSYMLINK | 0o777, u.OREAD, "target")
    assert reply.qid.type == p.QTSYMLINK and os.readlink(export / "sl") == "target"
    assert (await dotu.stat(fid)).extension == "target"
    target = await dotu.walk(root, ["target"])
    await dotu.tcreate(root, "hl", u.DMLINK, u.OREAD, f"{target}\n")  # as Linux writes it
    assert os.stat(export / "hl").st_ino == os.stat(export / "target").st_ino
    assert (await dotu.stat(target)).extension == "HARDLINKCOUNT 2"
    (export / "d").mkdir()
    (export / "d" / "sub").mkdir()
    assert (await dotu.stat(await dotu.walk(root, ["d"]))).extension == "HARDLINKCOUNT 3"
    await dotu.tcreate(root, "chr", u.DMDEVICE | 0o600, u.OREAD, "c 1 3")
    st = os.stat(export / "chr")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    await dotu.tcreate(root, "blk", u.DMDEVICE | 0o600, u.OREAD, "b 7 0")
    assert stat.S_ISBLK(os.stat(export / "blk").st_mode)
    await dotu.tcreate(root, "fifo", u.DMNAMEDPIPE | 0o600, u.OREAD)
    assert stat.S_ISFIFO(os.stat(export / "fifo").st_mode)
    await dotu.tcreate(root, "sock", u.DMSOCKET | 0o600, u.OREAD)
    assert stat.S_ISSOCK(os.stat(export / "sock").st_mode)


@pytest.mark.parametrize("perm,extension,err", [
    (u.DMDEVICE | 0o600, "x 1 3", errno.EINVAL),
    (u.DMDEVICE | 0o600, "c 1", errno.EINVAL),
    (u.DMLINK, "notafid", errno.EINVAL),
    (u.DMLINK, "4242", errno.EBADF),
    (u.DMSYMLINK | 0o777, "", errno.EINVAL),
])
async def test_create_with_a_bad_extension(dotu: Client, export: Path, perm: int,
                                           extension: str, err: int) -> None:
    root = await dotu.attach()
    fid = await dotu.walk(root, [])
    assert await errno_of(dotu, u.Tcreate(fid, "x", perm, u.OREAD, extension)) == err
    assert not os.path.lexists(export / "x")


async def test_hard_link_to_a_directory_is_refused(dotu: Client, export: Path) -> None:
    (export / "d").mkdir()
    root = await dotu.attach()
    d = await dotu.walk(root, ["d"])
    fid = await dotu.walk(root, [])
    assert await errno_of(dotu, u.Tcreate(fid, "x", u.DMLINK, u.OREAD, str(d))) == errno.EPERM


async def test_plain_9p2000_create_has_no_extensions(serve, export: Path) -> None:
    client = await (await serve()).connect(version=u.VERSION_9P2000)
    root = await client.attach()
    await client.tcreate(root, "f", u.DMSYMLINK | 0o600, u.ORDWR)
    assert stat.S_ISREG(os.lstat(export / "f").st_mode)


# --- wstat -----------------------------------------------------------------------------------

async def test_wstat_renames_within_the_directory(old: Client, export: Path) -> None:
    (export / "d").mkdir()
    (export / "d" / "a").write_bytes(b"a")
    root = await old.attach()
    fid = await old.walk(root, ["d", "a"])
    await old.wstat(fid, name="b")
    assert sorted(os.listdir(export / "d")) == ["b"]
    assert (await old.stat(fid)).name == "b"
    await old.topen(fid)
    assert await old.read(fid, 0, 10) == b"a"  # the fid follows its file


async def test_wstat_rename_refuses_bad_names_and_the_root(old: Client, export: Path) -> None:
    (export / "a").write_bytes(b"a")
    root = await old.attach()
    fid = await old.walk(root, ["a"])
    for bad in ("..", ".", "x/y"):
        with pytest.raises(OSError):
            await old.wstat(fid, name=bad)
    assert await errno_of(old, u.Twstat(root, u.DONT_TOUCH._replace(name="r"))
                          if old.messages is u.DOTU else
                          u.TwstatPlain(root, u.DONT_TOUCH_PLAIN._replace(name="r"))) == errno.EBUSY
    assert os.listdir(export) == ["a"]


async def test_wstat_rename_of_a_file_moved_meanwhile_is_stale(serve, export: Path) -> None:
    """Another session moved the file: the fid's path no longer leads to it,
    so a rename "within its directory" cannot know which one that is."""
    (export / "d").mkdir()
    (export / "d" / "a").write_bytes(b"a")
    server = await serve()
    old, other = await server.connect(version=u.VERSION_9P2000U), await server.connect()
    fid = await old.walk(await old.attach(), ["d", "a"])
    oroot = await other.attach()
    await other.rpc(p.Trenameat(oroot, "d", oroot, "e"))
    with pytest.raises(OSError) as info:
        await old.wstat(fid, name="b")
    assert info.value.errno == errno.ESTALE
    assert os.listdir(export / "e") == ["a"]


async def test_wstat_sets_mode_times_length_and_owner(old: Client, export: Path) -> None:
    (export / "f").write_bytes(b"0123456789")
    root = await old.attach()
    fid = await old.walk(root, ["f"])
    await old.wstat(fid, mode=0o604)
    await old.wstat(fid, length=4)
    await old.wstat(fid, mtime=1_500_000_000, atime=1_400_000_000)
    st = os.stat(export / "f")
    assert stat.S_IMODE(st.st_mode) == 0o604
    assert (st.st_mtime, st.st_atime, st.st_size) == (1_500_000_000, 1_400_000_000, 4)
    if old.messages is u.DOTU:
        await old.wstat(fid, n_gid=100)
    else:
        await old.wstat(fid, gid="100")
        with pytest.raises(PermissionError):
            await old.wstat(fid, gid="staff")
    assert os.stat(export / "f").st_gid == 100


async def test_wstat_that_touches_nothing_changes_nothing(old: Client, export: Path) -> None:
    (export / "f").write_bytes(b"data")
    os.utime(export / "f", (1_000_000, 2_000_000))
    before = os.stat(export / "f")
    root = await old.attach()
    fid = await old.walk(root, ["f"])
    await old.wstat(fid)
    await old.topen(fid, u.OREAD)
    await old.wstat(fid)  # on an open fid: a sync
    after = os.stat(export / "f")
    assert (after.st_mode, after.st_size, after.st_mtime_ns, after.st_uid, after.st_gid) == \
        (before.st_mode, before.st_size, before.st_mtime_ns, before.st_uid, before.st_gid)
    assert os.listdir(export) == ["f"]


async def test_wstat_cannot_change_the_file_type(old: Client, export: Path) -> None:
    (export / "f").write_bytes(b"")
    root = await old.attach()
    fid = await old.walk(root, ["f"])
    with pytest.raises(OSError) as info:
        await old.wstat(fid, mode=u.DMDIR | 0o755)
    assert info.value.errno == errno.EINVAL
    assert stat.S_ISREG(os.stat(export / "f").st_mode)


# --- directory reads -------------------------------------------------------------------------

async def test_directory_read_returns_one_stat_per_entry(old: Client, export: Path) -> None:
    (export / "f").write_bytes(b"abc")
    (export / "d").mkdir()
    os.symlink("f", export / "l")
    root = await old.attach()
    entries = await listing(old, root)
    expected = {"f", "d", "l"} | ({".", ".."} if old.messages is u.DOTU else set())
    assert set(entries) == expected
    for name in ("f", "d"):
        assert entries[name] == await old.stat(await old.walk(root, [name]))
    assert entries["f"].length == 3 and entries["d"].mode & u.DMDIR


async def test_large_directory_in_small_reads(old: Client, export: Path) -> None:
    names = {f"entry-{i:04d}-{'x' * (i % 40)}" for i in range(300)}
    for name in names:
        (export / name).touch()
    root = await old.attach()
    entries = await listing(old, root, count=700)  # a few stats per read
    assert set(entries) - {".", ".."} == names


async def test_directory_read_offsets_restart_or_go_on_only(old: Client, export: Path) -> None:
    for i in range(20):
        (export / f"f{i:02d}").touch()
    root = await old.attach()
    fid = await old.walk(root, [])
    await old.topen(fid)
    first = await old.read(fid, 0, 300)
    assert first and len(u.decode_dirs(first, old.messages is u.DOTU)) >= 1
    second = await old.read(fid, len(first), 300)
    assert second and second != first
    assert await errno_of(old, p.Tread(fid, 5, 300)) == errno.EINVAL
    assert await old.read(fid, 0, 300) == first  # offset 0 starts again
    assert await errno_of(old, p.Tread(fid, 0, 20)) == errno.EINVAL  # not one whole stat


# --- read-only exports -----------------------------------------------------------------------

async def test_readonly_export_refuses_every_change(serve, export: Path) -> None:
    (export / "f").write_bytes(b"data")
    client = await (await serve(config=SessionConfig(readonly=True))).connect(
        version=u.VERSION_9P2000U)
    root = await client.attach()
    fid = await client.walk(root, [])
    assert await errno_of(client, u.Tcreate(fid, "n", 0o644, u.ORDWR, "")) == errno.EROFS
    f = await client.walk(root, ["f"])
    assert await errno_of(client, u.Twstat(f, u.DONT_TOUCH._replace(name="g"))) == errno.EROFS
    for mode in (u.OWRITE, u.OREAD | u.OTRUNC, u.OREAD | u.ORCLOSE):
        assert await errno_of(client, u.Topen(f, mode)) == errno.EROFS
    await client.topen(f, u.OREAD)
    assert await client.read(f, 0, 10) == b"data"
    assert os.listdir(export) == ["f"]


class _RefusingBackend(LocalBackend):
    """Refuses to walk to one name, as ``--multidevs forbid`` refuses another device."""

    async def walk(self, node, names):  # type: ignore[no-untyped-def]
        if "refused" in names:
            raise OSError(errno.EXDEV, "another device")
        return await super().walk(node, names)


async def test_directory_read_leaves_out_what_cannot_be_stated(serve, export: Path) -> None:
    for name in ("a", "refused", "b"):
        (export / name).touch()
    client = await (await serve(backend=_RefusingBackend(str(export), threads=4))).connect(
        version=u.VERSION_9P2000U)
    assert set(await listing(client, await client.attach())) == {".", "..", "a", "b"}
