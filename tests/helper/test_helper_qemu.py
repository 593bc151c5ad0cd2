"""Against the real peer: Debian's QEMU virtfs-proxy-helper.

Our encoder/decoder drive QEMU's helper (proving the wire format
byte-compatible), then the same requests run against our helper on an
identical export and the results must match (a differential test).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import pytest

from proxy_helper_support import QEMU_HELPER, Helper, make_tree
from ninep.protocol import proxy as P

pytestmark = pytest.mark.skipif(not os.access(QEMU_HELPER, os.X_OK),
                                reason=f"{QEMU_HELPER} not installed (qemu-system-common)")

O = os


def scenario() -> list:
    """The main request types, successes and failures, in one connection's order."""
    return [
        P.Lstat(b"/file"), P.Lstat(b"/missing"), P.Lstat(b"/link"), P.Lstat(b"/"),
        P.Lstat(b"//dir/../dir/./sub"),
        P.Open(b"/file", O.O_RDONLY), P.Open(b"/missing", O.O_RDONLY),
        P.Open(b"/dir", O.O_RDONLY | O.O_DIRECTORY), P.Open(b"/file", O.O_RDONLY | O.O_DIRECTORY),
        P.Open(b"/link", O.O_RDWR), P.Open(b"/link", O.O_RDONLY | O.O_NOFOLLOW),
        P.Create(b"/new", O.O_CREAT | O.O_EXCL | O.O_WRONLY, 0o640, 0, 0),
        P.Create(b"/new", O.O_CREAT | O.O_EXCL | O.O_WRONLY, 0o640, 0, 0),
        P.Create(b"/owned", O.O_CREAT | O.O_WRONLY, 0o600, 1234, 5678),
        P.Create(b"/nodir/x", O.O_CREAT | O.O_WRONLY, 0o600, 0, 0),
        P.Create(b"/file", O.O_CREAT | O.O_RDONLY, 0o600, 1234, 5678),  # exists: just opened
        P.Create(b"/dir", O.O_CREAT | O.O_RDWR, 0o600, 0, 0),           # EISDIR
        P.Mkdir(0, 0, b"/d2", 0o750), P.Mkdir(1234, 5678, b"/d3", 0o700),
        P.Mkdir(0, 0, b"/d2", 0o750),
        P.Mknod(0, 0, b"/fifo", stat.S_IFIFO | 0o644, 0),
        P.Mknod(1234, 5678, b"/fifo2", stat.S_IFIFO | 0o600, 0),
        P.Mknod(0, 0, b"/chr", stat.S_IFCHR | 0o600, os.makedev(1, 3)),
        P.Mknod(1234, 5678, b"/chr2", stat.S_IFCHR | 0o600, os.makedev(1, 3)),  # EPERM
        P.Symlink(0, 0, b"target", b"/sl"), P.Symlink(1234, 5678, b"/abs/target", b"/sl2"),
        P.Symlink(0, 0, b"x", b"/sl"),
        P.Readlink(b"/sl", 256), P.Readlink(b"/sl", 3), P.Readlink(b"/file", 256),
        P.Readlink(b"/missing", 256),
        P.Link(b"/file", b"/hard"), P.Link(b"/missing", b"/x"), P.Link(b"/file", b"/hard"),
        P.Statfs(b"/"), P.Statfs(b"/missing"),
        P.Chmod(b"/file", 0o600), P.Chmod(b"/link", 0o640), P.Chmod(b"/missing", 0o600),
        P.Chown(b"/file", 1234, 5678), P.Chown(b"/link", 42, 43), P.Chown(b"/missing", 1, 1),
        P.Truncate(b"/file", 3), P.Truncate(b"/dir", 0), P.Truncate(b"/missing", 0),
        P.Utime(b"/file", 1000, 0, 2000, 0), P.Utime(b"/dir", 0, P.UTIME_OMIT, 5000, 0),
        P.Utime(b"/sl", 7000, 0, 8000, 0),
        P.Lstat(b"/file"),
        P.Rename(b"/hard", b"/dir/hard2"), P.Rename(b"/missing", b"/y"),
        P.Remove(b"/dir/hard2"), P.Remove(b"/d2"), P.Remove(b"/missing"), P.Remove(b"/dir"),
        P.Lsetxattr(b"/file", b"user.k", b"value", 5, 0),
        P.Lgetxattr(0, b"/file", b"user.k"), P.Lgetxattr(64, b"/file", b"user.k"),
        P.Lgetxattr(2, b"/file", b"user.k"), P.Llistxattr(0, b"/file"),
        P.Llistxattr(256, b"/file"), P.Lgetxattr(64, b"/file", b"user.none"),
        P.Lsetxattr(b"/file", b"user.k", b"v", 1, os.XATTR_CREATE),
        P.Lsetxattr(b"/file", b"user.k", b"v2", 2, os.XATTR_REPLACE),
        P.Lgetxattr(64, b"/file", b"user.k"),
        P.Lremovexattr(b"/file", b"user.k"), P.Lremovexattr(b"/file", b"user.k"),
        P.Lsetxattr(b"/link", b"user.k", b"v", 1, 0),
        P.Lsetxattr(b"/file", b"trusted.k", b"v", 1, 0),
        P.Getversion(b"/file"), P.Getversion(b"/dir"), P.Getversion(b"/missing"),
        P.Lstat(b"/../../etc/passwd"), P.Open(b"../../../etc/passwd", O.O_RDONLY),
        P.Lstat(b"/escape/secret"), P.Open(b"/abs/secret", O.O_RDONLY),
    ]


def generation(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, 0x80087601, buf, True)
        return int.from_bytes(buf[:4], "little")
    except OSError as e:
        return -e.errno
    finally:
        os.close(fd)


def normalize(export: Path, req, reply, fd):
    """A host-independent view of one reply (inode numbers, times and devices differ)."""
    if isinstance(reply, P.FdReply):
        if fd is None:
            return ("fd-error", errno.errorcode.get(-reply.status, reply.status))
        try:
            st = os.fstat(fd)
            data = None
            if stat.S_ISREG(st.st_mode) and os.O_ACCMODE & req.flags != os.O_WRONLY:
                data = os.pread(fd, 64, 0)
            return ("fd", stat.S_IFMT(st.st_mode), data,
                    fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE)
        finally:
            os.close(fd)
    if isinstance(reply, P.Status):
        if reply.status < 0:
            return ("error", errno.errorcode.get(-reply.status, reply.status))
        return ("status", reply.status)
    if isinstance(reply, P.ProxyStat):
        return ("stat", reply.st_mode, reply.st_nlink, reply.st_uid, reply.st_gid, reply.st_rdev,
                reply.st_size)
    if isinstance(reply, P.ProxyStatFS):
        return ("statfs", reply.f_type, reply.f_bsize, reply.f_namelen, reply.f_frsize,
                reply.f_fsid0, reply.f_fsid1)
    if isinstance(reply, P.VersionReply):
        # QEMU's helper passes a u64 to an ioctl that fills 32 bits: compare those.
        return ("version", (reply.version & 0xFFFFFFFF) ==
                generation(export / req.path.decode().lstrip("/")))
    return (type(reply).__name__, getattr(reply, "target", getattr(reply, "value", None)))


def disk_state(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_nlink, st.st_rdev]
            if stat.S_ISREG(st.st_mode):
                entry += [st.st_size, p.read_bytes()]
            if stat.S_ISLNK(st.st_mode):
                entry += [os.readlink(p).replace(str(root.parent), "<base>")]
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                # pinned (untouched) or set by T_UTIME; otherwise just "recent"
                t = st.st_mtime_ns
                entry += [t if t == 10**18 or t < 10**15 else "recent"]
            entry += [sorted(os.listxattr(p, follow_symlinks=False))]
            out[str(p.relative_to(root))] = entry
    return out


def run_scenario(helper: Helper, export: Path) -> list:
    c = helper.connect()
    try:
        out = []
        for req in scenario():
            reply, fd = c.call(req)
            out.append((req, normalize(export, req, reply, fd)))
        return out
    finally:
        c.close()


def pin_times(export: Path) -> None:
    """Same mtimes in both exports, so untouched entries compare equal."""
    for dirpath, dirnames, filenames in os.walk(export):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, ns=(10**18, 10**18), follow_symlinks=False)


@pytest.fixture
def two_exports(tmp_path):
    a = make_tree(tmp_path / "qemu")
    b = make_tree(tmp_path / "ours")
    pin_times(a[0])
    pin_times(b[0])
    return a[0], b[0]


def test_qemu_helper_replies_decode(tmp_path):
    """Our encoder talks to QEMU's helper, and every reply decodes as expected."""
    export, _ = make_tree(tmp_path)
    h = Helper(export, "socket", argv0=[QEMU_HELPER])
    try:
        c = h.connect()
        st = c.ok(P.Lstat(b"/file"))
        assert st == P.ProxyStat.from_stat(os.lstat(export / "file"))
        assert c.err(P.Lstat(b"/missing")) == errno.ENOENT
        reply, fd = c.call(P.Open(b"/file", os.O_RDONLY))
        assert reply.has_fd and os.read(fd, 100) == b"hello, world\n"
        os.close(fd)
        assert c.call(P.Open(b"/missing", os.O_RDONLY)) == (P.FdReply(-errno.ENOENT), None)
        reply, fd = c.call(P.Create(b"/c", os.O_CREAT | os.O_WRONLY, 0o640, 1234, 5678))
        assert reply.has_fd
        os.close(fd)
        assert (os.stat(export / "c").st_uid, os.stat(export / "c").st_gid) == (1234, 5678)
        assert c.ok(P.Mkdir(0, 0, b"/m", 0o700)) == P.Status(0)
        assert c.ok(P.Mknod(0, 0, b"/f", stat.S_IFIFO | 0o600, 0)) == P.Status(0)
        assert c.ok(P.Symlink(0, 0, b"tgt", b"/s")) == P.Status(0)
        assert c.ok(P.Readlink(b"/s", 100)) == P.ReadlinkReply(b"tgt")
        assert c.ok(P.Link(b"/c", b"/c2")) == P.Status(0)
        sf = c.ok(P.Statfs(b"/"))
        assert isinstance(sf, P.ProxyStatFS) and sf.f_bsize == os.statvfs(export).f_bsize
        c.ok(P.Chmod(b"/c", 0o604))
        c.ok(P.Chown(b"/c", 1, 2))
        c.ok(P.Truncate(b"/c", 10))
        c.ok(P.Utime(b"/c", 1000, 1, 2000, 2))
        st = os.stat(export / "c")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o604, 1, 2, 10)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 1, 2000 * 10**9 + 2)
        c.ok(P.Rename(b"/c2", b"/c3"))
        c.ok(P.Remove(b"/c3"))
        c.ok(P.Lsetxattr(b"/c", b"user.a", b"xyz", 3, 0))
        assert c.ok(P.Lgetxattr(0, b"/c", b"user.a")) == P.Status(3)
        assert c.ok(P.Lgetxattr(16, b"/c", b"user.a")) == P.XattrReply(b"xyz")
        assert c.ok(P.Llistxattr(0, b"/c")) == P.Status(len(b"user.a\0"))
        assert c.ok(P.Llistxattr(64, b"/c")) == P.XattrReply(b"user.a\0")
        c.ok(P.Lremovexattr(b"/c", b"user.a"))
        v = c.ok(P.Getversion(b"/c"))
        assert isinstance(v, P.VersionReply)
        assert v.version & 0xFFFFFFFF == generation(export / "c") or generation(export / "c") < 0
        c.close()
    finally:
        h.stop()


def test_differential_against_qemu_helper(two_exports):
    qemu_export, our_export = two_exports
    q = Helper(qemu_export, "socket", argv0=[QEMU_HELPER])
    try:
        theirs = run_scenario(q, qemu_export)
    finally:
        q.stop()
    o = Helper(our_export, "socket")
    try:
        ours = run_scenario(o, our_export)
    finally:
        o.stop()
    assert "Traceback" not in o.stderr()
    mismatches = [(req, t, u) for (req, t), (_, u) in zip(theirs, ours) if t != u]
    assert not mismatches, "\n".join(f"{r}: qemu={t} ours={u}" for r, t, u in mismatches)
    assert disk_state(our_export) == disk_state(qemu_export)


def test_differential_fd_mode(two_exports):
    """The same through an inherited socket (-f), for both helpers."""
    qemu_export, our_export = two_exports
    results = []
    for argv0, export in (([QEMU_HELPER], qemu_export), (None, our_export)):
        h = Helper(export, "fd", argv0=argv0)
        try:
            c = h.connect()
            out = []
            for req in scenario()[:20]:
                reply, fd = c.call(req)
                out.append(normalize(export, req, reply, fd))
            c.close()
            assert h.proc.wait(10) == 0
            results.append(out)
        finally:
            h.stop()
    assert results[0] == results[1]


def test_deliberate_difference_device_nodes(two_exports):
    """QEMU's helper opens a device node created in the export; ours refuses (EACCES),
    as if the export were mounted nodev."""
    qemu_export, our_export = two_exports
    outcomes = []
    for argv0, export in (([QEMU_HELPER], qemu_export), (None, our_export)):
        os.mknod(export / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        h = Helper(export, "socket", argv0=argv0)
        try:
            c = h.connect()
            reply, fd = c.call(P.Open(b"/null", os.O_RDWR))
            if fd is not None:
                os.close(fd)
            outcomes.append(reply.status)
            c.close()
        finally:
            h.stop()
    # QEMU's reaches the device (an fd, or the driver's own error, e.g. ENXIO in a
    # sandbox); ours stops before the device is ever opened.
    assert outcomes[0] != -errno.EACCES
    assert outcomes[1] == -errno.EACCES
