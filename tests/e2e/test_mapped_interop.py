"""QEMU's own mapped models and ninep's read each other's metadata.

One guest mounts the same host directory twice: through QEMU 7.2's built-in
virtio-9p (``-fsdev local,security_model=M``) on /mnt and through ninep
(``--security-model M``, trans=fd) on /mnt1.  Files made through one server
must stat identically through the other (owner, group, mode, type, rdev,
size, symlink target), so users can switch servers without losing the
guest-visible owners and modes.  Both mounts are cache=none, so each stat
goes to its server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.guest import FdSocketShare, GuestImage, VirtioLocalShare, run_guest
from tests.e2e.servers import NinepServer

pytestmark = pytest.mark.e2e

MAPPED = ("mapped-xattr", "mapped-file")

# Runs with $W the writer's mount and $R the reader's; prints one line a file from each.
_SCRIPT = r"""
make_tree() {
    cd "$1"
    mkdir -p tree/sub && chown 1001:2002 tree/sub && chmod 2751 tree/sub
    echo hello > tree/file && chown 3003:4004 tree/file && chmod 4640 tree/file
    mkfifo tree/fifo && chown 5005:6006 tree/fifo
    mknod tree/chr c 4 64 && chmod 620 tree/chr
    mknod tree/blk b 8 1
    ln -s ../some/target tree/link
    touch -d '2020-02-03 04:05:06' tree/file
    cd /
}
show() {
    cd "$1/tree"
    for f in sub file fifo chr blk link; do
        echo "$2 $f $(stat -c '%u %g %a %F %t:%T %s %Y' $f) $(readlink $f)"
    done
    cd /
}
make_tree "$W"
show "$W" WRITER
show "$R" READER
"""


def _run(image: GuestImage, export: Path, server: NinepServer, model: str, writer: str) -> dict:
    qemu = VirtioLocalShare(str(export), security_model=model)
    ninep = FdSocketShare(server.sock)
    # The writer is mounted on /mnt, the reader on /mnt1.
    shares = [qemu, ninep] if writer == "qemu" else [ninep, qemu]
    res = run_guest(_SCRIPT, share=shares, image=image, timeout=600,
                    env={"W": "/mnt", "R": "/mnt1"})
    assert res.exit_status == 0, res.describe() + "\n--- ninep ---\n" + server.output()
    seen: dict[str, dict[str, str]] = {"WRITER": {}, "READER": {}}
    for line in res.workload_output.splitlines():
        who, _, rest = line.partition(" ")
        if who in seen:
            name, _, attrs = rest.partition(" ")
            seen[who][name] = attrs
    assert len(seen["WRITER"]) == 6 and len(seen["READER"]) == 6, res.describe()
    return seen


@pytest.mark.parametrize("ninep_server", [("--security-model", m) for m in MAPPED],
                         ids=MAPPED, indirect=True)
@pytest.mark.parametrize("writer", ["qemu", "ninep"])
def test_mapped_metadata_reads_back_across_servers(e2e_image: GuestImage, export_dir: Path,
                                                    ninep_server: NinepServer, writer: str,
                                                    request: pytest.FixtureRequest) -> None:
    model = request.node.callspec.params["ninep_server"][1]
    seen = _run(e2e_image, export_dir, ninep_server, model, writer)
    assert seen["READER"] == seen["WRITER"]
    # And what was written is what the writer asked for, not just the same on both sides.
    assert seen["WRITER"]["file"].split()[:3] == ["3003", "4004", "4640"]
    assert seen["WRITER"]["sub"].split()[:3] == ["1001", "2002", "2751"]
    assert "character special file" in seen["WRITER"]["chr"] and "4:40" in seen["WRITER"]["chr"]
    assert "block special file" in seen["WRITER"]["blk"]
    assert seen["WRITER"]["link"].endswith("../some/target")
    assert seen["WRITER"]["file"].split()[-1] == "1580702706"
    # Nothing on the host is a device or a symlink: both servers mapped them.
    for name in ("fifo", "chr", "blk", "link"):
        assert (export_dir / "tree" / name).is_file()
