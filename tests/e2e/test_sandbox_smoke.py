"""The real-guest smoke against ninep under the sandbox modes that are not the
default, over trans=fd and over vhost-user (the default's smoke is
test_ninep_smoke.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.guest import SMOKE_GROUPS, GuestImage, run_smoke
from tests.e2e.servers import NinepServer, Serve, vhost

pytestmark = pytest.mark.e2e

SANDBOX_SERVERS = [
    Serve(("--security-model", "mapped-xattr", "--sandbox", "chroot")),
    vhost("--security-model", "passthrough", "--sandbox", "chroot"),
    Serve(("--security-model", "passthrough", "--pid-namespace")),
    vhost("--security-model", "mapped-xattr", "--pid-namespace"),
]


def _eventually(check: Callable[[], bool], timeout: float = 60) -> bool:
    """The socket appears before the sandbox is entered: wait for it to be."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def _root_once_confined(pid: int) -> str:
    """The server's root directory, once it has left the host's."""
    _eventually(lambda: os.readlink(f"/proc/{pid}/root") != "/")
    return os.readlink(f"/proc/{pid}/root")


@pytest.mark.parametrize("ninep_server", SANDBOX_SERVERS, ids=[s.id for s in SANDBOX_SERVERS],
                         indirect=True)
def test_smoke_passes_under_the_sandbox(e2e_image: GuestImage, ninep_server: NinepServer,
                                        export_dir: Path) -> None:
    if "chroot" in ninep_server.proc.args:
        assert _root_once_confined(ninep_server.pid) == os.path.realpath(export_dir)
    else:  # the server is pid 1 of its own namespace, below the supervisor started
        assert _eventually(lambda: ninep_server.pid != ninep_server.proc.pid)
    res = run_smoke(ninep_server.share(), nfiles=500, image=e2e_image, timeout=1500)
    assert res.smoke_results == {g: "PASS" for g in SMOKE_GROUPS}, (
        res.describe() + "\n--- server log ---\n" + ninep_server.output())
    assert res.exit_status == 0, res.describe()
