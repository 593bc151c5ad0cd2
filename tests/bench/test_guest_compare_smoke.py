"""The guest benchmark end to end on a tiny size: every server boots, every
workload reports, and the ratio table and chart are written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import guest_compare
from tests.e2e.guest import missing_host_tools
from tests.e2e.servers import require, require_vhost_qemu

pytestmark = pytest.mark.e2e


def test_guest_compare_tiny_run(tmp_path: Path, capsys) -> None:
    missing = missing_host_tools()
    require(not missing, f"missing host tools: {', '.join(missing)}")
    require(shutil.which("diod") is not None, "diod is not installed (Debian package diod)")
    require_vhost_qemu()
    servers = "ninep,diod,qemu,ninep-vhost,qemu-10.2,ninep[local/none]"
    rc = guest_compare.main(["--size-mib", "4", "--reps", "1", "--meta-files", "20", "--list-files", "50",
                             "--rand-ops", "10", "--untar-files", "20", "--servers", servers,
                             "--timeout", "300", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    table = (tmp_path / "guest_compare.md").read_text()
    assert "ninep vs diod" in table and "ninep vs qemu" in table and "ninep-vhost vs qemu-10.2" in table
    assert "> 1 means the first-named server is faster" in table
    for label in ("seq write 4 MiB", "seq read 4 MiB", "4 KiB read QD1", "create 20 files",
                  "list a 50-entry dir", "untar 20 mixed files", "metadata total",
                  "4 processes read 4 MiB", "4 processes create+stat+unlink 20 files"):
        assert label in table
    assert "ninep[local/none] vs local/passthrough" in table
    runs = json.loads((tmp_path / "guest_compare.json").read_text())["runs"]
    assert {r["target"] for r in runs} == set(servers.split(","))
    assert all(r["ok"] for r in runs)
    assert all(r["metrics"]["seq_read"] > 0 and r["metrics"]["untar"] > 0 for r in runs)
    assert (tmp_path / "guest_compare.png").stat().st_size > 10_000
