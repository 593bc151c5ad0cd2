"""Every request type against our helper, in --socket and --fd mode, checked on disk."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

import pytest

from ninep.protocol import proxy as P


def test_open_sends_fd(client, tree):
    reply, fd = client.call(P.Open(b"/file", os.O_RDONLY))
    assert reply == P.FdReply(P.V9FS_FD_VALID) and fd is not None
    try:
        assert os.read(fd, 100) == b"hello, world\n"
        assert os.fstat(fd).st_ino == os.stat(tree[0] / "file").st_ino
    finally:
        os.close(fd)


def test_open_follows_symlink_and_writes(client, tree):
    reply, fd = client.call(P.Open(b"link", os.O_WRONLY | os.O_TRUNC))
    assert reply.has_fd
    os.write(fd, b"new")
    os.close(fd)
    assert (tree[0] / "file").read_bytes() == b"new"


def test_open_errors_without_fd(client):
    assert client.err(P.Open(b"/missing", os.O_RDONLY)) == errno.ENOENT
    assert client.err(P.Open(b"/file", os.O_RDONLY | os.O_DIRECTORY)) == errno.ENOTDIR
    assert client.err(P.Open(b"/link", os.O_RDONLY | os.O_NOFOLLOW)) == errno.ELOOP
    assert client.err(P.Open(b"", os.O_RDONLY)) == errno.ENOENT


def test_open_directory(client):
    reply, fd = client.call(P.Open(b"/dir", os.O_RDONLY | os.O_DIRECTORY))
    try:
        assert reply.has_fd and stat.S_ISDIR(os.fstat(fd).st_mode)
        assert os.listdir(fd) == ["sub"]
    finally:
        os.close(fd)


def test_create_as_root(client, tree):
    reply, fd = client.call(P.Create(b"/dir/new", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640, 0, 0))
    assert reply.has_fd
    os.write(fd, b"data")
    os.close(fd)
    st = os.stat(tree[0] / "dir" / "new")
    assert stat.S_IMODE(st.st_mode) == 0o640  # umask 0 in the helper
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert (tree[0] / "dir" / "new").read_bytes() == b"data"
    assert client.err(P.Create(b"/dir/new", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640, 0, 0)) \
        == errno.EEXIST


def test_create_as_caller_owns_file(client, tree):
    reply, fd = client.call(P.Create(b"/owned", os.O_CREAT | os.O_WRONLY, 0o600, 1234, 5678))
    assert reply.has_fd
    os.close(fd)
    st = os.stat(tree[0] / "owned")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o600
    # the helper switched back: the next create is root's again
    client.ok(P.Create(b"/rootfile", os.O_CREAT | os.O_WRONLY, 0o600, 0, 0))
    st = os.stat(tree[0] / "rootfile")
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_create_existing_without_excl_opens_it(client, tree):
    reply, fd = client.call(P.Create(b"/file", os.O_CREAT | os.O_RDONLY, 0o600, 0, 0))
    try:
        assert os.read(fd, 5) == b"hello"
    finally:
        os.close(fd)


def test_create_through_dangling_symlink(client, tree):
    os.symlink("target", tree[0] / "dangling")
    reply, fd = client.call(P.Create(b"/dangling", os.O_CREAT | os.O_WRONLY, 0o644, 0, 0))
    assert reply.has_fd
    os.close(fd)
    assert (tree[0] / "target").is_file()


def test_mknod(client, tree):
    client.ok(P.Mknod(1234, 5678, b"/fifo", stat.S_IFIFO | 0o640, 0))
    st = os.lstat(tree[0] / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    client.ok(P.Mknod(0, 0, b"/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    st = os.lstat(tree[0] / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert client.err(P.Mknod(0, 0, b"/fifo", stat.S_IFIFO | 0o640, 0)) == errno.EEXIST


def test_mkdir(client, tree):
    client.ok(P.Mkdir(1234, 5678, b"/dir/d2", 0o751))
    st = os.stat(tree[0] / "dir" / "d2")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o751
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert client.err(P.Mkdir(0, 0, b"/dir/d2", 0o755)) == errno.EEXIST
    assert client.err(P.Mkdir(0, 0, b"/nodir/x", 0o755)) == errno.ENOENT


def test_symlink(client, tree):
    client.ok(P.Symlink(1234, 5678, b"../anything/at/all", b"/dir/sl"))
    p = tree[0] / "dir" / "sl"
    assert os.readlink(p) == "../anything/at/all"
    st = os.lstat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_link(client, tree):
    client.ok(P.Link(b"/file", b"/dir/hard"))
    assert os.stat(tree[0] / "dir" / "hard").st_ino == os.stat(tree[0] / "file").st_ino
    assert os.stat(tree[0] / "file").st_nlink == 2
    # link() does not follow a symlink given as the old path
    client.ok(P.Link(b"/link", b"/link2"))
    assert os.path.islink(tree[0] / "link2")


def test_lstat(client, tree):
    st = os.lstat(tree[0] / "file")
    assert client.ok(P.Lstat(b"/file")) == P.ProxyStat.from_stat(st)
    ls = client.ok(P.Lstat(b"/link"))
    assert stat.S_ISLNK(ls.st_mode)
    root = client.ok(P.Lstat(b"/"))
    assert root.st_ino == os.stat(tree[0]).st_ino
    assert client.ok(P.Lstat(b"//dir/../dir/./sub")).st_size == 4
    assert client.err(P.Lstat(b"/missing")) == errno.ENOENT
    assert client.err(P.Lstat(b"/file/x")) == errno.ENOTDIR


def test_readlink(client, tree):
    assert client.ok(P.Readlink(b"/link", 4096)) == P.ReadlinkReply(b"file")
    assert client.ok(P.Readlink(b"/link", 3)) == P.ReadlinkReply(b"fi")  # at most size-1
    assert client.err(P.Readlink(b"/file", 4096)) == errno.EINVAL
    assert client.err(P.Readlink(b"/missing", 4096)) == errno.ENOENT


def test_statfs(client, tree):
    sf = client.ok(P.Statfs(b"/dir"))
    vfs = os.statvfs(tree[0])
    assert sf.f_bsize == vfs.f_bsize and sf.f_frsize == vfs.f_frsize
    assert sf.f_blocks == vfs.f_blocks and sf.f_files == vfs.f_files
    assert sf.f_namelen == vfs.f_namemax
    assert (sf.f_fsid0 & 0xFFFFFFFF) | ((sf.f_fsid1 & 0xFFFFFFFF) << 32) == vfs.f_fsid


def test_chmod_follows_symlinks(client, tree):
    client.ok(P.Chmod(b"/file", 0o604))
    assert stat.S_IMODE(os.stat(tree[0] / "file").st_mode) == 0o604
    client.ok(P.Chmod(b"/link", 0o4755))
    assert stat.S_IMODE(os.stat(tree[0] / "file").st_mode) == 0o4755
    assert client.err(P.Chmod(b"/missing", 0o600)) == errno.ENOENT


def test_chown_does_not_follow(client, tree):
    client.ok(P.Chown(b"/file", 1234, 5678))
    st = os.stat(tree[0] / "file")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    client.ok(P.Chown(b"/link", 42, 43))
    assert os.lstat(tree[0] / "link").st_uid == 42
    assert os.stat(tree[0] / "file").st_uid == 1234
    client.ok(P.Chown(b"/file", 0xFFFFFFFF, 99))  # (uid_t)-1 leaves the uid alone
    st = os.stat(tree[0] / "file")
    assert (st.st_uid, st.st_gid) == (1234, 99)


def test_truncate(client, tree):
    client.ok(P.Truncate(b"/file", 5))
    assert (tree[0] / "file").read_bytes() == b"hello"
    client.ok(P.Truncate(b"/link", 8))
    assert (tree[0] / "file").read_bytes() == b"hello\0\0\0"
    assert client.err(P.Truncate(b"/dir", 0)) == errno.EISDIR
    assert client.err(P.Truncate(b"/file", 1 << 63)) == errno.EINVAL


def test_utime(client, tree):
    p = tree[0] / "file"
    client.ok(P.Utime(b"/file", 1000, 5, 2000, 7))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1000 * 10**9 + 5, 2000 * 10**9 + 7)
    client.ok(P.Utime(b"/file", 0, P.UTIME_OMIT, 0, P.UTIME_NOW))
    st = os.stat(p)
    assert st.st_atime_ns == 1000 * 10**9 + 5
    assert abs(st.st_mtime - time.time()) < 60
    # AT_SYMLINK_NOFOLLOW: the link's own times change, the file's stay
    before = os.stat(p).st_mtime_ns
    client.ok(P.Utime(b"/link", 3000, 0, 3000, 0))
    assert os.lstat(tree[0] / "link").st_mtime == 3000
    assert os.stat(p).st_mtime_ns == before
    assert client.err(P.Utime(b"/file", 0, 2 * 10**9, 0, 0)) == errno.EINVAL


def test_rename(client, tree):
    client.ok(P.Rename(b"/file", b"/dir/moved"))
    assert not (tree[0] / "file").exists()
    assert (tree[0] / "dir" / "moved").read_bytes() == b"hello, world\n"
    assert client.err(P.Rename(b"/missing", b"/x")) == errno.ENOENT


def test_remove(client, tree):
    client.ok(P.Remove(b"/link"))
    assert not os.path.lexists(tree[0] / "link")
    assert (tree[0] / "file").exists()
    client.ok(P.Remove(b"/dir/sub"))
    client.ok(P.Remove(b"/dir"))  # remove(3) falls back to rmdir
    assert not (tree[0] / "dir").exists()
    assert client.err(P.Remove(b"/missing")) == errno.ENOENT
    os.mkdir(tree[0] / "full")
    (tree[0] / "full" / "x").touch()
    assert client.err(P.Remove(b"/full")) == errno.ENOTEMPTY


def test_xattrs(client, tree):
    p = tree[0] / "file"
    client.ok(P.Lsetxattr(b"/file", b"user.k", b"value\0bin", 9, 0))
    assert os.getxattr(p, "user.k") == b"value\0bin"
    assert client.ok(P.Lgetxattr(0, b"/file", b"user.k")) == P.Status(9)
    assert client.ok(P.Lgetxattr(100, b"/file", b"user.k")) == P.XattrReply(b"value\0bin")
    assert client.err(P.Lgetxattr(3, b"/file", b"user.k")) == errno.ERANGE
    assert client.err(P.Lgetxattr(100, b"/file", b"user.none")) == errno.ENODATA
    names = client.ok(P.Llistxattr(1000, b"/file")).value
    assert b"user.k\0" in names
    assert client.ok(P.Llistxattr(0, b"/file")) == P.Status(len(names))
    assert client.err(P.Lsetxattr(b"/file", b"user.k", b"v", 1, os.XATTR_CREATE)) == errno.EEXIST
    client.ok(P.Lsetxattr(b"/file", b"user.k", b"v2", 2, os.XATTR_REPLACE))
    assert os.getxattr(p, "user.k") == b"v2"
    client.ok(P.Lremovexattr(b"/file", b"user.k"))
    assert "user.k" not in os.listxattr(p)
    assert client.err(P.Lremovexattr(b"/file", b"user.k")) == errno.ENODATA
    # l* variants: a symlink is not followed (user.* xattrs are refused on links)
    assert client.err(P.Lsetxattr(b"/link", b"user.k", b"v", 1, 0)) == errno.EPERM
    assert "user.k" not in os.listxattr(p)
    os.setxattr(p, "user.target", b"t")
    assert client.ok(P.Lgetxattr(10, b"/file", b"user.target")) == P.XattrReply(b"t")
    assert client.err(P.Lgetxattr(10, b"/link", b"user.target")) == errno.ENODATA
    assert b"user.target" not in client.ok(P.Llistxattr(1000, b"/link")).value
    # trusted.* needs CAP_SYS_ADMIN, which the helper does not keep
    assert client.err(P.Lsetxattr(b"/file", b"trusted.k", b"t", 1, 0)) == errno.EPERM


def test_getversion(client, tree):
    reply = client.ok(P.Getversion(b"/file"))
    assert isinstance(reply, P.VersionReply)
    fd = os.open(tree[0] / "file", os.O_RDONLY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, 0x80087601, buf, True)
    except OSError:
        pytest.skip("FS_IOC_GETVERSION unsupported here")
    finally:
        os.close(fd)
    assert reply.version == int.from_bytes(buf[:4], "little")
    assert client.err(P.Getversion(b"/missing")) == errno.ENOENT


def test_pipelined_requests(client, tree):
    reqs = [P.Lstat(b"/file"), P.Open(b"/file", os.O_RDONLY), P.Readlink(b"/link", 100),
            P.Open(b"/missing", 0), P.Mkdir(0, 0, b"/p", 0o700), P.Statfs(b"/")]
    client.sock.sendall(b"".join(P.encode_request(r) for r in reqs))
    for r in reqs:
        client.dec.expect(r)
    replies = [client.receive() for _ in reqs]
    assert isinstance(replies[0][0], P.ProxyStat)
    assert replies[1][0].has_fd and os.read(replies[1][1], 5) == b"hello"
    os.close(replies[1][1])
    assert replies[2][0] == P.ReadlinkReply(b"file")
    assert replies[3] == (P.FdReply(-errno.ENOENT), None)
    assert replies[4][0] == P.Status(0)
    assert isinstance(replies[5][0], P.ProxyStatFS)


def test_fd_mode_exits_at_eof(tree):
    from proxy_helper_support import Helper
    h = Helper(tree[0], "fd")
    try:
        c = h.connect()
        c.ok(P.Lstat(b"/"))
        c.close()
        assert h.proc.wait(10) == 0
        assert "Traceback" not in h.stderr()
    finally:
        h.stop()


def test_parallel_connections(socket_helper, tree):
    """Several connections at once, each served by its own thread."""
    import threading
    clients = [socket_helper.connect() for _ in range(4)]
    errors = []

    def work(i, c):
        try:
            for j in range(30):
                name = b"/par-%d-%d" % (i, j)
                uid = 1000 + i
                _, fd = c.call(P.Create(name, os.O_CREAT | os.O_WRONLY, 0o600, uid, uid))
                os.close(fd)
                st = c.ok(P.Lstat(name))
                assert (st.st_uid, st.st_gid) == (uid, uid)
                c.ok(P.Remove(name))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in clients:
        c.close()
    assert not errors, errors
