"""A real Linux guest against a server started the operator's way: a QEMU
``-fsdev`` string and ``--stats``.  What the guest did shows up in the
counters, and the fsdev options (mapped-xattr, fmode) reached the back end."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ninep.statsview import fetch
from ninep.transport.metrics import parse_stats_address
from tests.e2e.guest import FdSocketShare, GuestImage, run_guest
from tests.e2e.servers import NinepServer

pytestmark = pytest.mark.e2e

_WORKLOAD = r"""
dd if=/dev/zero of=f bs=4096 count=16 2>/dev/null
cat f > /dev/null
ls missing 2>/dev/null || echo absent
stat -c '%n %s %a' f
"""


def _samples(address: str) -> dict[str, float]:
    out = {}
    for line in fetch(parse_stats_address(address)).splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_a_guest_on_an_fsdev_string_is_counted(e2e_image: GuestImage, export_dir: Path,
                                               sock_dir: Path, tmp_path: Path) -> None:
    address = f"unix:{sock_dir / 'stats.sock'}"
    server = NinepServer(
        export_dir, sock_dir / "ninep.sock", tmp_path / "ninep.log",
        "--fsdev", f"local,id=fs0,path={export_dir},security_model=mapped-xattr,fmode=0640",
        "--stats", address)
    try:
        res = run_guest(_WORKLOAD, share=FdSocketShare(server.sock), image=e2e_image, timeout=600)
        assert res.exit_status == 0, res.describe() + server.output()
        assert "absent" in res.workload_output and "f 65536" in res.workload_output, res.describe()

        # fsdev's security model and fmode reached the back end: a mapped file on the host.
        host = os.lstat(export_dir / "f")
        assert stat.S_IMODE(host.st_mode) == 0o640
        assert os.getxattr(export_dir / "f", "user.virtfs.mode")

        for _ in range(200):  # the guest is gone; its session closes shortly after
            counters = _samples(address)
            if counters["ninep_sessions"] == 0:
                break
            time.sleep(0.05)
        assert counters["ninep_sessions"] == 0
        assert counters["ninep_written_bytes_total"] >= 65536
        assert counters["ninep_read_bytes_total"] >= 65536
        assert counters['ninep_errors_total{op="walk",errno="ENOENT"}'] >= 1
        assert counters['ninep_requests_total{op="version"}'] >= 1
        assert counters['ninep_requests_total{op="attach"}'] >= 1
        table = subprocess.run([sys.executable, "-m", "ninep", "stats", address],
                               capture_output=True, text=True, timeout=60, check=True).stdout
        assert any(line.startswith("write ") for line in table.splitlines()), table
        assert "walk ENOENT" in table
    finally:
        assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()
