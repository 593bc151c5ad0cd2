"""Real byte-range locks through the guest's 9p client.

ninep takes each Tlock as an open-file-description lock on the fid's fd, so
two guest processes (each open is its own fid) see each other's ``fcntl``
and ``flock`` locks, and a host process sees the guest's locks and the guest
sees the host's.  QEMU, diod and virtiofsd's defaults answer success without
locking anything.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.guest import GuestImage, run_guest
from tests.e2e.servers import NinepServer, Serve, require, vhost

pytestmark = pytest.mark.e2e

TOOL_SRC = Path(__file__).parent / "tools" / "fcntl-lock.c"
F_OFD_GETLK, F_OFD_SETLK = 36, 37
FLOCK = struct.Struct("hhqqi4x")

_SCRIPT = r"""
cd /mnt
echo data > posix; echo data > bsd; echo data > host
# fcntl against fcntl: A holds [0,10) while B tries an overlapping and a disjoint range.
fcntl-lock posix w 0 10 30 > a.out &
A=$!
while ! grep -q locked a.out 2>/dev/null; do sleep 0.2; done
check_fails "second process takes an overlapping fcntl lock" fcntl-lock posix w 5 10
check "second process takes a disjoint fcntl lock" fcntl-lock posix w 10 10
check "second process takes a read lock elsewhere" fcntl-lock posix r 20 5
# flock against flock.
/usr/bin/flock -n -x bsd -c 'echo held > b.out; sleep 30' &
B=$!
while ! grep -q held b.out 2>/dev/null; do sleep 0.2; done
check_fails "second process takes the same flock" /usr/bin/flock -n -x bsd true
echo ready > guest-holds-locks
# The host now checks our locks and takes its own on "host".
n=0; while [ ! -e host-holds-lock ]; do sleep 0.2; n=$((n+1)); [ $n -lt 300 ] || fail "host never locked"; done
check_fails "guest process takes a lock the host holds" fcntl-lock host w 0 1
echo done > guest-saw-host-lock
kill $A $B 2>/dev/null || true; wait 2>/dev/null || true
check "lock free again after its holder exits" fcntl-lock posix w 0 100
echo LOCKS-OK
"""


def _getlk(path: Path, start: int, length: int) -> int:
    fd = os.open(path, os.O_RDWR)
    try:
        res = fcntl.fcntl(fd, F_OFD_GETLK, FLOCK.pack(fcntl.F_WRLCK, 0, start, length, 0))
        return FLOCK.unpack(res)[0]
    finally:
        os.close(fd)


def _wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.1)


@pytest.mark.parametrize("ninep_server", [Serve(), vhost()], ids=["fd", "vhost"], indirect=True)
def test_guest_and_host_processes_see_each_others_locks(
        ninep_server: NinepServer, export_dir: Path, tmp_path: Path) -> None:
    require(shutil.which("gcc") is not None, "gcc is needed to build the guest's fcntl-lock tool")
    require(shutil.which("flock") is not None, "flock (util-linux) is needed in the guest")
    tool = tmp_path / "fcntl-lock"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(tool), str(TOOL_SRC)], check=True)
    image = GuestImage.ensure(extra_binaries=(str(tool), "flock"))

    seen: dict[str, int] = {}
    errors: list[BaseException] = []

    def host_side() -> None:
        try:
            _wait_for(export_dir / "guest-holds-locks")
            seen["posix"] = _getlk(export_dir / "posix", 0, 10)
            seen["posix-free-range"] = _getlk(export_dir / "posix", 40, 10)
            seen["bsd"] = _getlk(export_dir / "bsd", 0, 0)
            fd = os.open(export_dir / "host", os.O_RDWR)
            try:
                fcntl.fcntl(fd, F_OFD_SETLK, FLOCK.pack(fcntl.F_WRLCK, 0, 0, 0, 0))
                (export_dir / "host-holds-lock").write_text("yes")
                _wait_for(export_dir / "guest-saw-host-lock")
            finally:
                os.close(fd)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    watcher = threading.Thread(target=host_side, daemon=True)
    watcher.start()
    res = run_guest(_SCRIPT, share=ninep_server.share(), image=image, timeout=900)
    watcher.join(30)
    assert res.exit_status == 0 and "LOCKS-OK" in res.workload_output, \
        res.describe() + "\n--- ninep ---\n" + ninep_server.output()
    assert not errors, errors
    assert seen == {"posix": fcntl.F_WRLCK, "posix-free-range": fcntl.F_UNLCK,
                    "bsd": fcntl.F_WRLCK}
