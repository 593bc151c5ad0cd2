"""QEMU's own proxy client (``-fsdev proxy``) against *our* helper, in a real guest.

The guest mounts a virtio-9p share whose file system driver is QEMU's
9p-proxy.c, talking to ninep-proxy-helper over a Unix socket (``socket=``)
or an inherited socketpair end (``sock_fd=``), and runs the real-kernel smoke
workload (tests/e2e/smoke.sh).  The same workload against Debian's own
virtfs-proxy-helper is in tests/e2e/test_harness.py, so any difference
between the two runs is ours.

The first test pins down the wire quirk that made it work: QEMU's client
counts a path's C terminator in its length.

Never skipped in CI: a missing QEMU, kernel or helper fails there.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from proxy_helper_support import OUR_HELPER, Client, Helper, helper_env  # noqa: E402
from ninep.protocol import proxy as P  # noqa: E402
from tests.e2e.conftest import e2e_image  # noqa: E402,F401 - the cached guest image
from tests.e2e.guest import (SMOKE_GROUPS, GuestImage, VirtioProxyShare, run_guest,  # noqa: E402
                             run_smoke)

@pytest.fixture
def export(tmp_path: Path) -> Path:
    path = tmp_path / "export"
    path.mkdir()
    return path


def test_paths_with_their_c_terminator_as_qemu_sends_them(client: Client, tree) -> None:
    """QEMU's 9p-proxy.c marshals a V9fsPath with its NUL ("/\\0", size 2):
    the helper takes it as the C string it is.  Other NULs stay refused."""
    root = client.ok(P.Lstat(b"/\0"))
    assert isinstance(root, P.ProxyStat) and root.st_ino == os.stat(tree[0]).st_ino
    client.ok(P.Mkdir(0, 0, b"/made\0", 0o755))
    client.ok(P.Rename(b"/made\0", b"/moved\0"))
    client.ok(P.Symlink(0, 0, b"file", b"/sl\0"))
    assert client.ok(P.Readlink(b"/sl\0", 64)).target == b"file"
    assert sorted(os.listdir(tree[0])) == ["abs", "dir", "escape", "file", "link", "moved", "sl"]
    assert client.err(P.Lstat(b"/fi\0le")) == errno.EINVAL
    assert client.err(P.Lstat(b"/file\0\0")) == errno.EINVAL


@pytest.fixture
def our_helper(export: Path) -> Iterator[Helper]:
    helper = Helper(export, "socket")
    yield helper
    helper.stop()
    assert "Traceback" not in helper.stderr(), helper.stderr()


@pytest.mark.e2e
def test_smoke_qemu_proxy_client_with_our_helper(e2e_image: GuestImage, our_helper: Helper,
                                                 export: Path) -> None:
    """Every smoke group passes, as with QEMU's own helper (test_harness.py)."""
    res = run_smoke(VirtioProxyShare(socket_path=str(our_helper.sock_path)), nfiles=500,
                    image=e2e_image, timeout=1200)
    want = {g: "PASS" for g in SMOKE_GROUPS}
    assert res.smoke_results == want, res.describe() + "\n--- helper ---\n" + our_helper.stderr()
    assert res.exit_status == 0, res.describe()
    assert list(export.iterdir()) == []


@pytest.mark.e2e
def test_qemu_proxy_client_with_our_helper_on_sock_fd(e2e_image: GuestImage, export: Path) -> None:
    """``-fsdev proxy,sock_fd=N``: QEMU inherits one end of a socketpair, our
    helper (``-f``) the other; the helper exits when QEMU does."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    helper = subprocess.Popen([*OUR_HELPER, "-n", "-p", str(export), "-f", str(theirs.fileno())],
                              pass_fds=[theirs.fileno()], env=helper_env(),
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    theirs.close()
    script = r"""
mkdir -p d/e && echo via-fd >d/e/f
check_eq "read back" "$(cat d/e/f)" via-fd
ln -s f d/e/l && check_eq "readlink" "$(readlink d/e/l)" f
setfattr -n user.k -v v d/e/f && check_eq "xattr" "$(getfattr --only-values -n user.k d/e/f)" v
"""
    try:
        res = run_guest(script, share=VirtioProxyShare(sock_fd=ours.fileno()),
                        pass_fds=[ours.fileno()], timeout=600, image=e2e_image)
    finally:
        ours.close()
    try:
        helper.wait(30)
    finally:
        if helper.poll() is None:
            helper.kill()
    stderr = helper.stderr.read().decode(errors="replace") if helper.stderr else ""
    assert res.exit_status == 0, res.describe() + "\n--- helper ---\n" + stderr
    assert (export / "d" / "e" / "f").read_text() == "via-fd\n"
    assert os.getxattr(export / "d" / "e" / "f", "user.k") == b"v"
    assert helper.returncode == 0 and "Traceback" not in stderr, stderr
