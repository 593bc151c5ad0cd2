"""Paths of PATH_MAX bytes and more through our helper.

The protocol's strings hold 64 KiB and the guest's kernel accepts paths
deeper than PATH_MAX; the helper resolves such a path piece by piece, each
piece after the first confined beneath the directory the one before opened.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from ninep.helper.server import _PATH_MAX, _pieces
from ninep.protocol import proxy as P
from deep_tree import deep_lstat, make_deep
from proxy_helper_support import snapshot

SEGMENT = b"s" * 200
DEPTH = 32  # 32 * 201 bytes: 6.4 KB, two pieces


def _deep(export: Path) -> bytes:
    """Make /SEGMENT/... DEPTH levels deep on the host; its chroot path."""
    make_deep(export, SEGMENT, DEPTH)
    path = b"/" + b"/".join([SEGMENT] * DEPTH)
    assert len(path) > _PATH_MAX
    return path


def _host(export: Path, name: bytes) -> os.stat_result:
    return deep_lstat(export, SEGMENT, DEPTH, name)


@pytest.mark.parametrize("path", [
    b"/" + b"/".join([b"a" * 250] * 40),
    b"//x//" + b"/".join([b"b" * 100] * 60) + b"/",
    b"/".join([b"c" * 10] * 1000),
])
def test_pieces_name_the_same_path_and_fit_the_kernel(path: bytes) -> None:
    pieces = _pieces(path)
    assert len(pieces) > 1 and all(len(p) < _PATH_MAX for p in pieces)
    assert [c for c in b"/".join(pieces).split(b"/") if c] == [c for c in path.split(b"/") if c]
    assert pieces[-1].endswith(b"/") == path.endswith(b"/")


def test_every_request_works_past_path_max(client, tree) -> None:
    export = tree[0]
    deep = _deep(export)

    def at(name: bytes) -> bytes:
        return deep + b"/" + name
    reply, fd = client.call(P.Create(at(b"f"), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640,
                                     1234, 5678))
    assert reply.has_fd
    os.write(fd, b"deep data")
    os.close(fd)
    st = client.ok(P.Lstat(at(b"f")))
    assert (st.st_size, st.st_uid, st.st_gid) == (9, 1234, 5678)
    reply, fd = client.call(P.Open(at(b"f"), os.O_RDONLY))
    assert os.read(fd, 100) == b"deep data"
    os.close(fd)
    reply, fd = client.call(P.Open(deep, os.O_RDONLY | os.O_DIRECTORY))
    assert os.listdir(fd) == ["f"]
    os.close(fd)

    client.ok(P.Chmod(at(b"f"), 0o600))
    client.ok(P.Chown(at(b"f"), 4321, 0xFFFFFFFF))
    client.ok(P.Truncate(at(b"f"), 4))
    client.ok(P.Utime(at(b"f"), 1, 500, 2, 123456789))
    st = _host(export, b"f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o600, 4321, 5678, 4)
    assert st.st_mtime_ns == 2_123_456_789
    client.ok(P.Lsetxattr(at(b"f"), b"user.k", b"v", 1, 0))
    assert client.ok(P.Lgetxattr(2, at(b"f"), b"user.k")).value == b"v"
    assert b"user.k\0" in client.ok(P.Llistxattr(64, at(b"f"))).value
    client.ok(P.Lremovexattr(at(b"f"), b"user.k"))

    client.ok(P.Link(at(b"f"), at(b"hard")))
    client.ok(P.Rename(at(b"hard"), b"/top"))  # across the pieces, to the root
    assert os.stat(export / "top").st_ino == st.st_ino
    client.ok(P.Rename(b"/top", at(b"back")))
    assert _host(export, b"back").st_nlink == 2
    client.ok(P.Mkdir(0, 0, at(b"d"), 0o751))
    client.ok(P.Mknod(0, 0, at(b"fifo"), stat.S_IFIFO | 0o640, 0))
    client.ok(P.Symlink(0, 0, b"f", at(b"sym")))
    assert client.ok(P.Readlink(at(b"sym"), 64)).target == b"f"
    assert stat.S_ISDIR(_host(export, b"d").st_mode)
    assert stat.S_ISFIFO(_host(export, b"fifo").st_mode)
    assert client.ok(P.Statfs(at(b"d"))).f_bsize > 0
    client.ok(P.Getversion(at(b"f")))
    for name in (b"d", b"fifo", b"sym", b"back", b"f"):
        client.ok(P.Remove(at(name)))
    reply, fd = client.call(P.Open(deep, os.O_RDONLY | os.O_DIRECTORY))
    assert os.listdir(fd) == []
    os.close(fd)


def test_errors_past_path_max_are_the_kernels(client, tree) -> None:
    deep = _deep(tree[0])
    assert client.err(P.Lstat(deep + b"/missing")) == errno.ENOENT
    assert client.err(P.Open(deep + b"/missing/x", os.O_RDONLY)) == errno.ENOENT
    client.ok(P.Create(deep + b"/f", os.O_CREAT | os.O_WRONLY, 0o600, 0, 0))
    assert client.err(P.Open(deep + b"/f/", os.O_RDONLY)) == errno.ENOTDIR
    assert client.err(P.Lstat(deep + b"/" + b"n" * 300)) == errno.ENAMETOOLONG
    assert client.err(P.Lstat(b"/" + b"x" * 5000)) == errno.ENAMETOOLONG


def test_a_long_path_never_leaves_the_export(client, tree) -> None:
    """``..`` and symlinks in the pieces after the first may not climb out of
    the directory the piece starts in: EXDEV, and nothing outside changes."""
    export, outside = tree
    before = snapshot(outside)
    deep = _deep(export)
    climb = deep + b"/" + b"/".join([b".."] * (DEPTH + 3)) + b"/outside/secret"
    assert client.err(P.Lstat(climb)) == errno.EXDEV
    assert client.err(P.Open(climb, os.O_RDONLY)) == errno.EXDEV
    assert client.err(P.Chmod(climb, 0o777)) == errno.EXDEV
    # A symlink in the last piece that points at the host's outside tree.
    client.ok(P.Symlink(0, 0, str(outside).encode(), deep + b"/abs"))
    client.ok(P.Symlink(0, 0, b"../../../../../../../../../../../../../..", deep + b"/up"))
    for via in (b"abs", b"up"):
        assert client.err(P.Open(deep + b"/" + via + b"/secret", os.O_RDONLY)) == errno.EXDEV
        assert client.err(P.Truncate(deep + b"/" + via + b"/secret", 0)) == errno.EXDEV
        assert client.err(P.Mkdir(0, 0, deep + b"/" + via + b"/made", 0o755)) == errno.EXDEV
    assert snapshot(outside) == before
