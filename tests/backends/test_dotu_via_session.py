"""9P2000.u end to end on every back end and security model (client -> Session
-> back end): Tcreate's kinds, Tstat, Twstat and stat-entry directory reads
must give the guest what it asked for whatever the back end stores, and
refuse what .L refuses."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ninep.protocol import dotu as u
from ninep.protocol import ninep as p

from .conftest import CRED, Caps, Connect

V = u.VERSION_9P2000U


async def test_tcreate_as_attached_user(connect: Connect, caps: Caps, export: Path) -> None:
    client = await connect(version=V)
    root = await client.attach(uname="someone", n_uname=CRED.uid)
    fid, reply = await client.tcreate(root, "new", u.DMSETUID | 0o640, u.ORDWR)
    assert (await client.stat(fid)).mode == u.DMSETUID | 0o640
    assert await client.write(fid, 0, b"data") == 4
    d = await client.stat(fid)
    # A write by a user other than root clears S_ISUID, as Linux does.
    assert d.mode == 0o640 and d.qid.path == reply.qid.path and d.length == 4
    # No gid on the wire in .u: the new file takes its directory's group.
    expected = (CRED.uid, (await client.stat(root)).n_gid) if caps.creates_as_caller \
        else (os.geteuid(), os.getegid())
    assert (d.n_uid, d.n_gid) == expected


async def test_every_tcreate_kind_reads_back_in_a_listing(connect: Connect, caps: Caps,
                                                          export: Path) -> None:
    client = await connect(version=V)
    root = await client.attach()
    (export / "target").write_bytes(b"t")
    target = await client.walk(root, ["target"])
    await client.tcreate(root, "d", u.DMDIR | 0o750, u.OREAD)
    await client.tcreate(root, "sl", u.DMSYMLINK | 0o777, u.OREAD, "target")
    await client.tcreate(root, "hl", u.DMLINK, u.OREAD, f"{target}\n")
    await client.tcreate(root, "fifo", u.DMNAMEDPIPE | 0o640, u.OREAD)
    if caps.mknod_devices:
        await client.tcreate(root, "null", u.DMDEVICE | 0o666, u.OREAD, "c 1 3")
    dfid = await client.walk(root, [])
    await client.topen(dfid)
    listing = {d.name: d for d in await client.read_dir(dfid, 512)}
    assert listing["d"].mode == u.DMDIR | 0o750 and listing["d"].qid.type & p.QTDIR
    assert listing["sl"].mode & u.DMSYMLINK and listing["sl"].extension == "target"
    assert listing["hl"].qid.path == listing["target"].qid.path
    assert listing["hl"].extension == listing["target"].extension == "HARDLINKCOUNT 2"
    assert listing["fifo"].mode == u.DMNAMEDPIPE | 0o640
    if caps.mknod_devices:
        assert listing["null"].mode == u.DMDEVICE | 0o666 and listing["null"].extension == "c 1 3"
    assert {".", ".."} <= set(listing)
    if caps.host_file_types:
        assert os.readlink(export / "sl") == "target" and stat.S_ISFIFO(
            os.lstat(export / "fifo").st_mode)
    else:  # mapped: real regular files, the guest's view kept aside
        assert stat.S_ISREG(os.lstat(export / "sl").st_mode)


async def test_wstat_changes_what_it_names(connect: Connect, caps: Caps, export: Path) -> None:
    (export / "f").write_bytes(b"0123456789")
    client = await connect(version=V)
    root = await client.attach()
    fid = await client.walk(root, ["f"])
    await client.wstat(fid, n_uid=CRED.uid, n_gid=CRED.gid)
    await client.wstat(fid, mode=0o604, length=3, mtime=1_000_000_000, name="g")
    d = await client.stat(fid)
    assert (d.name, d.mode, d.length, d.mtime) == ("g", 0o604, 3, 1_000_000_000)
    assert (d.n_uid, d.n_gid) == tuple(CRED)
    assert not (export / "f").exists() and (export / "g").exists()
    host = os.stat(export / "g")
    assert host.st_size == 3
    if caps.host_modes:
        assert stat.S_IMODE(host.st_mode) == 0o604
    if caps.host_owners:
        assert (host.st_uid, host.st_gid) == tuple(CRED)


async def test_symlinks_and_fifos_are_refused_as_in_dotl(connect: Connect, export: Path) -> None:
    (export / "ln").symlink_to("/etc")
    os.mkfifo(export / "fifo")
    client = await connect(version=V)
    root = await client.attach()
    reply = await client.rpc(p.Twalk(root, client.new_fid(), ["ln", "passwd"]))
    assert [q.type for q in reply.wqids] == [p.QTSYMLINK]
    for name, err in (("ln", errno.ELOOP), ("fifo", errno.ENXIO)):
        with pytest.raises(OSError) as info:
            await client.topen(await client.walk(root, [name]), u.OREAD)
        assert info.value.errno == err
