"""Data integrity under a random write/read/truncate workload in the real guest.

tools/fsx.c runs at least 10,000 random operations (pwrite at random
offsets and sizes, holes past EOF, ftruncate up and down, pread compared
with an in-memory model byte for byte, fsync, close + reopen; with the
page-cache mount modes also loads and stores through shared mmaps) on a
file in the 9p mount, then saves its model to the guest's tmpfs.  After ``sync`` and
``drop_caches`` the guest md5sums the 9p file and the model, and the host
checks the exported file against the same md5, so the data is proven on
the server's disk, not only in a cache.

The seed is random per run and printed; set ``NINEP_FSX_SEED`` (and
``NINEP_FSX_OPS``) to replay a failure.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.guest import GuestImage, run_guest
from tests.e2e.servers import NinepServer, Serve, require, vhost

pytestmark = pytest.mark.e2e

TOOL_SRC = Path(__file__).parent / "tools" / "fsx.c"
MIN_OPS = 10_000
MAX_FILE_LEN = 256 * 1024
MAX_OP_LEN = 64 * 1024

_SCRIPT = r"""
check "fsx on the 9p mount" fsx $FSX_FLAGS -N "$FSX_OPS" -S "$FSX_SEED" -l "$FSX_MAXLEN" -o "$FSX_MAXOP" \
    -m /tmp/fsx.model /mnt/fsx.data
sync
echo 3 > /proc/sys/vm/drop_caches
model=$(md5sum < /tmp/fsx.model)
data=$(md5sum < /mnt/fsx.data)
echo "FSX-MD5 model=${model%% *} data=${data%% *} size=$(stat -c %s /mnt/fsx.data)"
if [ "$model" != "$data" ]; then
    cmp -l /tmp/fsx.model /mnt/fsx.data | head -n 20 || true
    fail "the 9p file differs from the model after drop_caches"
fi
echo FSX-OK
"""

_DONE = re.compile(r"^FSX-DONE (.*)$", re.M)
_MD5 = re.compile(r"^FSX-MD5 model=(\w+) data=(\w+) size=(\d+)$", re.M)

# ninep server arguments, extra 9p mount options, fsx flags.  cache=none
# (the default) sends every read and write to the server; the page-cache
# modes also get fsx -M (I/O through shared mmaps, written back by msync).
PASSTHROUGH = ("--security-model", "passthrough")
VARIANTS = [
    pytest.param(Serve(PASSTHROUGH), "", "", id="passthrough"),
    pytest.param(Serve(("--security-model", "mapped-xattr")), "", "", id="mapped-xattr"),
    # The guest page cache holds the data; drop_caches forces the re-read.
    pytest.param(Serve(PASSTHROUGH), "cache=loose", "-M", id="passthrough-cache-loose"),
    # Direct reads and writes, but mmaps go through the page cache.
    pytest.param(Serve(PASSTHROUGH), "cache=mmap", "-M", id="passthrough-cache-mmap"),
    # The same three cache modes through vhost-user (the guest's virtqueue in shared memory).
    pytest.param(vhost(*PASSTHROUGH), "", "", id="passthrough-vhost"),
    pytest.param(vhost(*PASSTHROUGH), "cache=loose", "-M", id="passthrough-cache-loose-vhost"),
    pytest.param(vhost(*PASSTHROUGH), "cache=mmap", "-M", id="passthrough-cache-mmap-vhost"),
]


@pytest.fixture(scope="module")
def fsx_image(e2e_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """The guest image with tools/fsx.c built (static) into /usr/bin/fsx."""
    require(shutil.which("gcc") is not None, "gcc (with static libc) is needed to build the guest's fsx tool")
    tool = tmp_path_factory.mktemp("fsx") / "fsx"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(tool), str(TOOL_SRC)], check=True)
    return GuestImage.ensure(extra_binaries=(str(tool),))


def _summary(output: str) -> dict[str, str]:
    """The ``key=value`` fields of fsx's FSX-DONE line (empty if it never finished)."""
    m = _DONE.search(output)
    return dict(field.split("=", 1) for field in m.group(1).split()) if m else {}


@pytest.mark.parametrize("ninep_server, mount_opts, fsx_flags", VARIANTS, indirect=["ninep_server"])
def test_random_io_matches_model_after_drop_caches(fsx_image: GuestImage, ninep_server: NinepServer,
                                                   export_dir: Path, mount_opts: str, fsx_flags: str,
                                                   request: pytest.FixtureRequest) -> None:
    ops = int(os.environ.get("NINEP_FSX_OPS", MIN_OPS))
    seed = int(os.environ.get("NINEP_FSX_SEED", random.getrandbits(63)))
    env = {"FSX_OPS": str(ops), "FSX_SEED": str(seed), "FSX_MAXLEN": str(MAX_FILE_LEN),
           "FSX_MAXOP": str(MAX_OP_LEN), "FSX_FLAGS": fsx_flags}
    res = run_guest(_SCRIPT, share=ninep_server.share(mount_opts=mount_opts),
                    image=fsx_image, env=env, timeout=900)
    replay = f"replay with NINEP_FSX_SEED={seed} NINEP_FSX_OPS={ops}"
    assert res.exit_status == 0 and "FSX-OK" in res.workload_output, \
        f"{replay}\n{res.describe()}\n--- ninep ---\n{ninep_server.output()}"

    done = _summary(res.workload_output)
    md5 = _MD5.search(res.workload_output)
    assert done and md5, f"{replay}\n{res.describe()}"
    print(f"\nfsx {request.node.callspec.params['ninep_server'].id} {mount_opts or 'cache=none'} "
          f"{fsx_flags}: {res.duration:.0f}s with boot\n" + " ".join(f"{k}={v}" for k, v in done.items()))
    assert int(done["ops"]) == ops and done["mismatches"] == "0" and int(done["seed"]) == seed
    model_md5, data_md5, size = md5.group(1), md5.group(2), int(md5.group(3))
    assert data_md5 == model_md5 and size == int(done["size"]), replay
    exported = (export_dir / "fsx.data").read_bytes()
    assert len(exported) == size, replay
    assert hashlib.md5(exported).hexdigest() == model_md5, f"{replay}: the host file differs from the model"
