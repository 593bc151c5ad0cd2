"""Bugs the proxy-protocol fuzz (tests/fuzz/proxy_engine.py) found in the helper, one
test each, so they stay fixed without running the fuzz."""

from __future__ import annotations

import errno
import os
import stat

from ninep.protocol import proxy as P


def test_open_of_a_fifo_without_peer_does_not_block(client, tree):
    """T_OPEN/T_CREATE of a FIFO with nobody at the other end blocked the connection's
    thread in open(2) forever.  Now the open is non-blocking, like QEMU's local back
    end: reading succeeds at once (the fd handed over is blocking again, unless
    O_NONBLOCK was asked for), writing fails with ENXIO."""
    os.mkfifo(tree[0] / "fifo")
    client.sock.settimeout(5)  # a regression shows up as a timeout, not a hung run
    reply, fd = client.call(P.Open(b"/fifo", os.O_RDONLY))
    try:
        assert reply.has_fd and os.get_blocking(fd)
    finally:
        os.close(fd)
    reply, fd = client.call(P.Open(b"/fifo", os.O_RDONLY | os.O_NONBLOCK))
    try:
        assert reply.has_fd and not os.get_blocking(fd)
    finally:
        os.close(fd)
    assert client.err(P.Open(b"/fifo", os.O_WRONLY)) == errno.ENXIO
    assert client.err(P.Create(b"/fifo", os.O_CREAT | os.O_WRONLY, 0o644, 0, 0)) == errno.ENXIO
    assert client.ok(P.Lstat(b"/fifo")).st_ino == os.lstat(tree[0] / "fifo").st_ino


def test_no_o_path_fd_on_a_device_node(client, tree):
    """T_OPEN with O_PATH handed out an fd on a device node (the other opens refuse
    devices); its receiver could reopen it read-write through /proc/self/fd.  Now
    EACCES, directly or through a symlink, while O_PATH on anything else still works."""
    export = tree[0]
    client.ok(P.Mknod(0, 0, b"/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    client.ok(P.Mknod(0, 0, b"/blk", stat.S_IFBLK | 0o666, os.makedev(7, 0)))
    os.symlink("null", export / "to_null")
    for path in (b"/null", b"/blk", b"/to_null"):
        for flags in (os.O_PATH, os.O_PATH | os.O_RDWR, os.O_PATH | os.O_NOFOLLOW):
            if path == b"/to_null" and flags & os.O_NOFOLLOW:
                continue  # that is an fd on the symlink itself
            assert client.err(P.Open(path, flags)) == errno.EACCES, (path, flags)
    reply, fd = client.call(P.Open(b"/to_null", os.O_PATH | os.O_NOFOLLOW))
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    reply, fd = client.call(P.Open(b"/file", os.O_PATH))
    try:
        assert os.fstat(fd).st_ino == os.stat(export / "file").st_ino
    finally:
        os.close(fd)
