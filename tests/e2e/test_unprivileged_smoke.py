"""The real Linux 9p client against ninep started by a normal user, every default on.

ninep runs as uid 65534 with --security-model mapped-xattr: the namespace
sandbox goes through a user namespace, capabilities are the user's (none),
the seccomp filter is loaded. The guest mounts over trans=fd, and over
vhost-user (QEMU 10.2, as root, attaching to the user's socket), and the
whole POSIX smoke must pass, xattrs and locks included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ninep.testing.process import serving_pid
from tests.e2e.guest import (SMOKE_GROUPS, FdSocketShare, GuestImage, Share, VhostUserShare,
                             run_smoke, wait_for_listener)
from tests.e2e.servers import require_vhost_qemu, stop
from tests.sandbox.conftest import NORMAL_UID, as_normal_user

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become a normal user")]


@pytest.fixture
def user_dirs() -> Iterator[tuple[Path, Path]]:
    """(export, socket directory), both the normal user's and reachable by it."""
    top = Path(tempfile.mkdtemp(prefix="ninep-user-", dir="/tmp"))
    top.chmod(0o755)
    export, socks = top / "export", top / "s"
    for d in (export, socks):
        d.mkdir()
        os.chown(d, NORMAL_UID, NORMAL_UID)
    yield export, socks
    shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("transport", ["fd", "vhost"])
def test_smoke_passes_when_a_normal_user_serves(e2e_image: GuestImage,
                                                 user_dirs: tuple[Path, Path],
                                                 tmp_path: Path, transport: str) -> None:
    export, socks = user_dirs
    sock = str(socks / "ninep.sock")
    log = tmp_path / "ninep.log"
    share: Share
    if transport == "vhost":
        require_vhost_qemu()
        listen = ["--socket-path", sock, "--tag", "ninep0"]
        share = VhostUserShare(sock, tag="ninep0")
    else:
        listen = ["--listen", f"unix:{sock}"]
        share = FdSocketShare(sock)
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ninep", "--export", str(export), *listen,
             "--security-model", "mapped-xattr"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            preexec_fn=as_normal_user)
    try:
        # vhost-user: QEMU's connection must be the first one, so no probe.
        wait_for_listener(sock, proc=proc, probe=False)
        res = run_smoke(share, nfiles=500, image=e2e_image, timeout=1500)
        status = Path(f"/proc/{serving_pid(proc.pid)}/status").read_text()
    finally:
        stop(proc)
    output = log.read_text(errors="replace")
    assert res.smoke_results == {g: "PASS" for g in SMOKE_GROUPS}, res.describe() + output
    assert proc.returncode == 0 and "Traceback" not in output, output
    assert f"Uid:\t{NORMAL_UID}" in status and "Seccomp:\t2" in status
    assert all(st.st_uid == NORMAL_UID for st in map(os.lstat, export.rglob("*")))
