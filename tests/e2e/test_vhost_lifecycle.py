"""ninep as a real QEMU's vhost-user back end: lifecycle and concurrency.

QEMU >= 10.2 (``scripts/build-qemu``) attaches ninep through
``vhost-user-test-device-pci`` and the guest mounts with trans=virtio. The
POSIX smoke, fsx and the lock tests also run over vhost-user (their own
files); these tests cover what only vhost-user has: one ninep process
serving guest after guest, a QEMU killed in the middle of a write, a ninep
restarted between guests, and several guest processes with requests in
flight on the one virtqueue at once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ninep.testing.process import open_fds
from tests.e2e.guest import GuestImage, GuestResult, run_guest
from tests.e2e.servers import NinepServer, require_vhost_qemu

pytestmark = pytest.mark.e2e


@pytest.fixture
def vhost_server(export_dir: Path, sock_dir: Path, tmp_path: Path) -> Iterator[NinepServer]:
    """ninep as a vhost-user back end; must exit 0 on SIGTERM with no traceback."""
    require_vhost_qemu()
    server = NinepServer(export_dir, sock_dir / "vhost.sock", tmp_path / "ninep.log", transport="vhost")
    yield server
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _settled_fds(pid: int, want: list[str], timeout: float = 20.0) -> list[str]:
    """The fd list once it equals *want* (the server releases a connection
    asynchronously after QEMU exits), or the last one seen."""
    deadline = time.monotonic() + timeout
    while True:
        now = open_fds(pid)
        if now == want or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def _ok(res: GuestResult, server: NinepServer, marker: str) -> None:
    assert res.exit_status == 0 and marker in res.workload_output, \
        res.describe() + "\n--- ninep ---\n" + server.output()


_ROUND = r"""
n=$1
mkdir -p round$n && cd round$n
dd if=/dev/urandom of=data bs=64k count=64 2>/dev/null
for i in $(seq 1 200); do echo $i > f$i; done
check "listing" test "$(ls | wc -l)" -eq 201
sync; echo 3 > /proc/sys/vm/drop_caches
md5sum data | cut -d' ' -f1 > data.md5
for i in $(seq 1 200); do rm f$i; done
cd /mnt
echo ROUND-OK
"""


def test_three_guests_in_a_row_leave_fds_and_rss_at_baseline(
        e2e_image: GuestImage, vhost_server: NinepServer, export_dir: Path) -> None:
    pid = vhost_server.pid
    baseline = open_fds(pid)
    rss: list[int] = []
    for n in range(3):
        res = run_guest(f"set -- {n}\n" + _ROUND, share=vhost_server.share(), image=e2e_image, timeout=600)
        _ok(res, vhost_server, "ROUND-OK")
        data = (export_dir / f"round{n}" / "data").read_bytes()
        assert hashlib.md5(data).hexdigest() == (export_dir / f"round{n}" / "data.md5").read_text().strip()
        assert _settled_fds(pid, baseline) == baseline, f"fds after guest {n}"
        rss.append(_rss_kib(pid))
        print(f"guest {n}: {res.duration:.1f}s, ninep RSS {rss[-1]} KiB, fds {len(baseline)}")
    # The first guest warms caches (imports, buffers); later ones must not grow.
    assert rss[2] - rss[0] < 4096, f"RSS grew over guests: {rss} KiB"
    assert vhost_server.proc.poll() is None


def _qemu_pids_using(sock: str) -> list[int]:
    """QEMU processes whose command line names *sock* (the one this test started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"qemu-system-x86_64") and any(sock.encode() in a for a in cmdline):
            pids.append(int(entry))
    return pids


def test_qemu_killed_mid_write_then_next_guest_is_served(
        e2e_image: GuestImage, vhost_server: NinepServer, export_dir: Path) -> None:
    pid = vhost_server.pid
    baseline = open_fds(pid)
    big = export_dir / "big"
    killed: list[int] = []

    def kill_when_writing() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if big.exists() and big.stat().st_size > 8 << 20:
                for qpid in _qemu_pids_using(vhost_server.sock):
                    os.kill(qpid, signal.SIGKILL)
                    killed.append(qpid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_writing, daemon=True)
    killer.start()
    res = run_guest("dd if=/dev/zero of=/mnt/big bs=1M count=1024 2>/dev/null; echo WROTE-ALL",
                    share=vhost_server.share(), image=e2e_image, timeout=600)
    killer.join(30)
    assert killed, res.describe()
    assert res.exit_status is None and "WROTE-ALL" not in res.output, res.describe()
    assert vhost_server.proc.poll() is None, vhost_server.output()
    assert _settled_fds(pid, baseline) == baseline

    after = run_guest("check 'partial file readable' dd if=/mnt/big of=/dev/null bs=1M 2>/dev/null\n"
                      "echo again > /mnt/again; check 'read back' test \"$(cat /mnt/again)\" = again\n"
                      "echo NEXT-OK", share=vhost_server.share(), image=e2e_image, timeout=600)
    _ok(after, vhost_server, "NEXT-OK")
    assert (export_dir / "again").read_text() == "again\n"


def test_ninep_restarted_between_guests(e2e_image: GuestImage, export_dir: Path, sock_dir: Path,
                                        tmp_path: Path) -> None:
    require_vhost_qemu()
    sock = sock_dir / "vhost.sock"
    first = NinepServer(export_dir, sock, tmp_path / "ninep1.log", transport="vhost")
    try:
        res = run_guest("echo before > kept; echo WROTE", share=first.share(), image=e2e_image, timeout=600)
        _ok(res, first, "WROTE")
    finally:
        assert first.stop() == 0, first.output()
    assert not sock.exists(), "ninep left its socket behind"
    second = NinepServer(export_dir, sock, tmp_path / "ninep2.log", transport="vhost")
    try:
        res = run_guest("check 'file from the first server' test \"$(cat kept)\" = before\n"
                        "echo after >> kept; echo READ", share=second.share(), image=e2e_image, timeout=600)
        _ok(res, second, "READ")
    finally:
        assert second.stop() == 0, second.output()
    assert (export_dir / "kept").read_text() == "before\nafter\n"
    for server in (first, second):
        assert "Traceback" not in server.output(), server.output()


#: Eight guest processes at once: four writers then four readers of the
#: writers' files while two more writers run, each checking its data.
_PARALLEL = r"""
for i in 1 2 3 4; do
    ( dd if=/dev/urandom of=/tmp/src$i bs=1M count=16 2>/dev/null
      dd if=/tmp/src$i of=/mnt/w$i bs=256k 2>/dev/null
      md5sum < /tmp/src$i > /tmp/w$i.want ) &
done
wait
sync; echo 3 > /proc/sys/vm/drop_caches
for i in 1 2 3 4; do
    ( md5sum < /mnt/w$i > /tmp/r$i.got ) &
done
for i in 5 6; do
    ( dd if=/dev/zero of=/mnt/w$i bs=512k count=32 2>/dev/null ) &
done
wait
for i in 1 2 3 4; do
    check "reader $i saw writer $i's data" cmp /tmp/w$i.want /tmp/r$i.got
    cut -d' ' -f1 /tmp/w$i.want > /mnt/w$i.md5
done
echo PARALLEL-OK
"""


def test_several_guest_processes_at_once(e2e_image: GuestImage, vhost_server: NinepServer,
                                         export_dir: Path) -> None:
    res = run_guest(_PARALLEL, share=vhost_server.share(), image=e2e_image, timeout=900, msize=512000)
    _ok(res, vhost_server, "PARALLEL-OK")
    for i in range(1, 5):
        data = (export_dir / f"w{i}").read_bytes()
        assert len(data) == 16 << 20
        assert hashlib.md5(data).hexdigest() == (export_dir / f"w{i}.md5").read_text().strip()
    for i in (5, 6):
        assert (export_dir / f"w{i}").stat().st_size == 16 << 20
