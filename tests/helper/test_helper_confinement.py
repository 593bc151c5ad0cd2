"""Nothing outside the export is reachable, whatever path arrives."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from proxy_helper_support import Helper, snapshot
from ninep.protocol import proxy as P
from ninep.testing.process import open_fds


def escaping_paths(outside) -> list[bytes]:
    host = os.fsencode(outside / "secret")
    return [
        b"../outside/secret",
        b"/../outside/secret",
        b"dir/../../outside/secret",
        b"/../../../../../../../.." + host,
        host,                                   # the canary's host path, taken as export-absolute
        b"escape/secret",                       # symlink ../outside
        b"abs/secret",                          # symlink to the host path of the canary
        b"escape/dir/inner",
        b"abs/dir/inner",
        b"escape",
        b"abs",
    ]


def requests_for(path: bytes) -> list:
    """Every request type aimed at *path* (and at it as a second path)."""
    return [
        P.Open(path, os.O_RDWR | os.O_TRUNC),
        P.Open(path, os.O_RDONLY | os.O_DIRECTORY),
        P.Create(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666, 0, 0),
        P.Create(path + b"-new", os.O_CREAT | os.O_WRONLY, 0o666, 0, 0),
        P.Mknod(0, 0, path + b"-node", stat.S_IFIFO | 0o666, 0),
        P.Mkdir(0, 0, path + b"-dir", 0o777),
        P.Symlink(0, 0, b"/", path + b"-sym"),
        P.Link(path, b"/stolen"),
        P.Link(b"/file", path + b"-hard"),
        P.Lstat(path),
        P.Readlink(path, 4096),
        P.Statfs(path),
        P.Chmod(path, 0o777),
        P.Chown(path, 1234, 1234),
        P.Truncate(path, 0),
        P.Utime(path, 1, 0, 1, 0),
        P.Rename(path, b"/stolen2"),
        P.Rename(b"/file", path + b"-moved"),
        P.Lgetxattr(100, path, b"user.canary"),
        P.Llistxattr(1000, path),
        P.Lsetxattr(path, b"user.evil", b"1", 1, 0),
        P.Lremovexattr(path, b"user.canary"),
        P.Getversion(path),
        P.Remove(path),
    ]


def test_escaping_paths_leave_outside_untouched(helper, tree):
    export, outside = tree
    before = snapshot(outside)
    secret_ino = os.stat(outside / "secret").st_ino
    c = helper.connect()
    try:
        for path in escaping_paths(outside):
            for req in requests_for(path):
                reply, fd = c.call(req)
                if fd is not None:
                    try:
                        assert os.fstat(fd).st_ino != secret_ino, (req, "opened the canary")
                    finally:
                        os.close(fd)
                if isinstance(reply, P.ProxyStat):
                    assert reply.st_ino != secret_ino, req
                if isinstance(reply, P.XattrReply):
                    assert b"canary" not in reply.value, req
                assert snapshot(outside) == before, f"{req} changed the canary tree"
    finally:
        c.close()
    assert snapshot(outside) == before


def test_dotdot_is_clamped_at_the_root(client, tree):
    root = os.stat(tree[0]).st_ino
    assert client.ok(P.Lstat(b"..")).st_ino == root
    assert client.ok(P.Lstat(b"/../../..")).st_ino == root
    assert client.ok(P.Lstat(b"dir/../../../dir/..")).st_ino == root
    reply, fd = client.call(P.Open(b"/../..", os.O_RDONLY | os.O_DIRECTORY))
    try:
        assert sorted(os.listdir(fd)) == sorted(os.listdir(tree[0]))
    finally:
        os.close(fd)


def test_absolute_symlink_resolves_inside(client, tree):
    export, _ = tree
    os.symlink("/dir/sub", export / "abs_inside")
    reply, fd = client.call(P.Open(b"abs_inside", os.O_RDONLY))
    try:
        assert os.read(fd, 10) == b"sub\n"
    finally:
        os.close(fd)


def test_device_nodes_are_never_opened(client, tree):
    export, _ = tree
    client.ok(P.Mknod(0, 0, b"/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    assert stat.S_ISCHR(os.lstat(export / "null").st_mode)
    assert client.err(P.Open(b"/null", os.O_RDWR)) == errno.EACCES
    assert client.err(P.Create(b"/null", os.O_CREAT | os.O_RDWR, 0o666, 0, 0)) == errno.EACCES
    os.symlink("null", export / "to_null")
    assert client.err(P.Open(b"/to_null", os.O_RDONLY)) == errno.EACCES
    assert client.err(P.Getversion(b"/null")) == errno.EACCES
    assert client.err(P.Truncate(b"/null", 0)) == errno.EINVAL
    # metadata operations on the node itself still work
    client.ok(P.Chmod(b"/null", 0o600))
    assert client.ok(P.Lstat(b"/null")).st_rdev == os.makedev(1, 3)


def test_symlink_loops(client, tree):
    os.symlink("loop", tree[0] / "loop")
    assert client.err(P.Open(b"/loop", os.O_RDONLY)) == errno.ELOOP
    assert client.err(P.Chmod(b"/loop", 0o600)) == errno.ELOOP


def test_inherited_fds_are_closed(tree):
    """A directory fd inherited from the parent is a way out of a chroot: closed."""
    export, outside = tree
    leak = os.open(outside, os.O_RDONLY | os.O_DIRECTORY)
    h = Helper(export, "fd", pass_fds=(leak,))
    try:
        c = h.connect()
        c.ok(P.Lstat(b"/"))
        targets = open_fds(h.pid)
        assert str(outside) not in targets
        dirs = [t for t in targets if t.startswith("/") and os.path.isdir(t)]
        assert sorted(dirs) == sorted([str(export), "/proc"]), targets
        c.close()
        assert h.proc.wait(10) == 0
    finally:
        os.close(leak)
        h.stop()


@pytest.fixture
def proc_in_export(tree):
    """A procfs mounted inside the export: /proc/1/root is a magic link to the host root."""
    export, _ = tree
    (export / "proc").mkdir()
    r = subprocess.run(["mount", "-t", "proc", "proc", str(export / "proc")],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount procfs here: {r.stderr.decode().strip()}")
    try:
        yield export / "proc"
    finally:
        subprocess.run(["umount", "-l", str(export / "proc")], check=False)


def _drop_bounding_set():
    from ninep import syscalls
    for cap in range(syscalls.cap_last_cap() + 1):
        syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)


@pytest.fixture
def weak_process():
    """A root process with no capabilities, whose /proc/<pid>/root the helper
    may traverse (ptrace access) if it follows magic links."""
    p = subprocess.Popen(["sleep", "120"], preexec_fn=_drop_bounding_set, cwd="/")
    yield p.pid
    p.kill()
    p.wait()


def test_magic_links_are_not_followed(proc_in_export, weak_process, tree):
    export, outside = tree
    before = snapshot(outside)
    h = Helper(export, "socket")
    try:
        c = h.connect()
        host = os.fsencode(outside / "secret")
        secret_ino = os.stat(outside / "secret").st_ino
        pid = weak_process
        for prefix, refused in ((b"/proc/%d/root" % pid, {errno.ELOOP}),
                                (b"/proc/%d/cwd/../../../.." % pid, {errno.ELOOP}),
                                # pid 1: EACCES already (no ptrace access), or ELOOP
                                (b"/proc/1/root", {errno.ELOOP, errno.EACCES})):
            path = prefix + host
            for req in requests_for(path):
                reply, fd = c.call(req)
                if fd is not None:
                    try:
                        assert os.fstat(fd).st_ino != secret_ino, req
                    finally:
                        os.close(fd)
                if isinstance(reply, P.ProxyStat):
                    assert reply.st_ino != secret_ino, req
            assert c.err(P.Lstat(path)) in refused
            assert c.err(P.Open(path, os.O_RDONLY)) in refused
            assert c.err(P.Chmod(path, 0o777)) in refused
        # the magic link itself, as a last component, is never followed either
        assert c.err(P.Open(b"/proc/%d/root" % pid, os.O_RDONLY | os.O_DIRECTORY)) == errno.ELOOP
        assert c.err(P.Chmod(b"/proc/%d/cwd" % pid, 0o777)) == errno.ELOOP
        assert c.err(P.Truncate(b"/proc/%d/cwd" % pid, 0)) == errno.ELOOP
        assert c.err(P.Statfs(b"/proc/%d/root" % pid)) == errno.ELOOP
        c.close()
    finally:
        h.stop()
    assert "Traceback" not in h.stderr()
    assert snapshot(outside) == before
