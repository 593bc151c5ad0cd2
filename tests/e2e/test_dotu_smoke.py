"""The real Linux 9p client mounting ninep with ``version=9p2000.u``, over
trans=fd (every security model) and over vhost-user (QEMU >= 10.2, trans=virtio).

The POSIX smoke runs on the mount, without its xattr group: Linux offers
xattrs only over 9P2000.L.  Its sparse group fails on one check only, by
protocol: a .u stat has no block count, so Linux derives st_blocks from the
length and a sparse file looks fully allocated.  The kernel shows the dialect it negotiated in
/proc/mounts (``version=9p2000.u``; a .L mount shows none), which proves the
server answered Tversion with 9P2000.u rather than the smoke running on .L.
"""

from __future__ import annotations

import pytest

from tests.e2e.guest import SMOKE_GROUPS, SMOKE_SCRIPT, GuestImage, run_guest
from tests.e2e.servers import NinepServer, Serve, vhost

pytestmark = pytest.mark.e2e

MODELS = ("passthrough", "mapped-xattr", "mapped-file", "none")
#: Every model over trans=fd; passthrough and one mapped model over vhost-user.
SERVERS = [Serve(("--security-model", m)) for m in MODELS] + [
    vhost("--security-model", "passthrough"), vhost("--security-model", "mapped-xattr")]
#: Linux has no xattr operations in 9P2000.u.
NOT_IN_DOTU = ("xattr",)
#: Groups whose failure is the protocol's -> the one check that fails in them.
PROTOCOL_LIMITS = {"sparse": "sparse: sparse file allocates"}


@pytest.mark.parametrize("ninep_server", SERVERS, ids=[s.id for s in SERVERS], indirect=True)
def test_smoke_passes_over_9p2000u(e2e_image: GuestImage, ninep_server: NinepServer,
                                   request) -> None:
    name = request.node.callspec.id
    nfiles = 1000 if name.startswith("passthrough") else 300  # the big listing once per transport
    # The mount options start with version=9p2000.L; a later version= wins.
    script = "grep ' /mnt 9p ' /proc/mounts\n" + SMOKE_SCRIPT.read_text()
    res = run_guest(script, share=ninep_server.share(), image=e2e_image,
                    extra_mount_opts="version=9p2000.u", timeout=1500,
                    env={"SMOKE_SKIP": " ".join(NOT_IN_DOTU), "SMOKE_NFILES": str(nfiles),
                         "SMOKE_XFAIL": " ".join(PROTOCOL_LIMITS)})
    print(f"9p2000.u smoke under {name}: {res.duration:.1f}s (boot {res.boot_time:.1f}s)")
    mounts = [line for line in res.workload_output.splitlines() if " /mnt 9p " in line]
    assert mounts and "version=9p2000.u" in mounts[0], res.describe()
    want = {g: "SKIP" if g in NOT_IN_DOTU else "XFAIL" if g in PROTOCOL_LIMITS else "PASS"
            for g in SMOKE_GROUPS}
    assert res.smoke_results == want, res.describe() + "\n--- server log ---\n" + \
        ninep_server.output()
    failed = [line.split("E2E-CHECK-FAILED: ", 1)[1] for line in res.workload_output.splitlines()
              if "E2E-CHECK-FAILED: " in line]
    assert len(failed) == len(PROTOCOL_LIMITS), res.describe()
    for check in PROTOCOL_LIMITS.values():
        assert any(f.startswith(check) for f in failed), res.describe()
    assert res.exit_status == 0, res.describe()
