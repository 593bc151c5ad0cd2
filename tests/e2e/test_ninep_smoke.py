"""The real Linux 9p client against ninep: mount it and run the POSIX smoke.

Over trans=fd the guest reaches ninep's Unix socket through a virtio-serial
port (QEMU's ``-chardev socket`` is the client, so ninep listens first).
Over vhost-user QEMU >= 10.2 attaches ninep as a virtio-9p device and the
guest mounts with trans=virtio.  Every smoke group must pass under every
security model; a few guest-side checks then show each model storing owners
and special files the way it defines.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.e2e.guest import SMOKE_GROUPS, GuestImage, GuestResult, run_guest, run_smoke
from tests.e2e.servers import NinepServer, Serve, vhost

pytestmark = pytest.mark.e2e

MODELS = ("passthrough", "mapped-xattr", "mapped-file", "none")


def _assert_all_pass(res: GuestResult, server: NinepServer) -> None:
    want = {g: "PASS" for g in SMOKE_GROUPS}
    assert res.smoke_results == want, res.describe() + "\n--- server log ---\n" + server.output()
    assert res.exit_status == 0, res.describe()


#: Every model over trans=fd; passthrough and one mapped model over vhost-user.
SMOKE_SERVERS = [Serve(("--security-model", m)) for m in MODELS] + [
    vhost("--security-model", "passthrough"), vhost("--security-model", "mapped-xattr")]


@pytest.mark.parametrize("ninep_server", SMOKE_SERVERS, ids=[s.id for s in SMOKE_SERVERS], indirect=True)
def test_smoke_passes_under_every_model(e2e_image: GuestImage, ninep_server: NinepServer,
                                        request) -> None:
    name = request.node.callspec.id
    nfiles = 3000 if name.startswith("passthrough") else 500  # the big listing once per transport
    res = run_smoke(ninep_server.share(), nfiles=nfiles, image=e2e_image, timeout=1500)
    print(f"smoke under {name}: {res.duration:.1f}s (boot {res.boot_time:.1f}s)")
    _assert_all_pass(res, ninep_server)


_MODEL_PROBE = r"""
mkdir d && chown 4321:8765 d
echo x > f && chown 1234:5678 f && chmod 4750 f
mkfifo p && mknod c c 1 3 && ln -s target l
stat -c '%n %u %g %a %F' d f p c l
"""


@pytest.mark.parametrize("ninep_server", [("--security-model", m) for m in MODELS],
                         ids=MODELS, indirect=True)
def test_models_store_owners_and_special_files_as_defined(
        e2e_image: GuestImage, ninep_server: NinepServer, export_dir: Path, request) -> None:
    model = request.node.callspec.id
    res = run_guest(_MODEL_PROBE, share=ninep_server.share(), image=e2e_image,
                    timeout=600)
    assert res.exit_status == 0, res.describe()
    guest = {line.split()[0]: line.split()[1:] for line in res.workload_output.splitlines()
             if line[:2] in ("d ", "f ", "p ", "c ", "l ")}
    # The guest always sees what it set, whatever the model stores.
    assert guest["d"][:2] == ["4321", "8765"], res.describe()
    assert guest["f"][:3] == ["1234", "5678", "4750"], res.describe()
    assert " ".join(guest["p"][3:]) == "fifo", res.describe()
    assert " ".join(guest["c"][3:]) == "character special file", res.describe()
    assert " ".join(guest["l"][3:]) == "symbolic link", res.describe()

    host = {name: os.lstat(export_dir / name) for name in "dfpcl"}
    if model in ("passthrough", "none"):
        assert stat.S_ISFIFO(host["p"].st_mode) and stat.S_ISCHR(host["c"].st_mode)
        assert stat.S_ISLNK(host["l"].st_mode)
        assert (host["f"].st_uid, host["f"].st_gid) == (1234, 5678)
        assert stat.S_IMODE(host["f"].st_mode) == 0o4750
    else:
        # Mapped: real files owned by the server, with --fmode/--dmode defaults.
        for name in "fpcl":
            assert stat.S_ISREG(host[name].st_mode), name
            assert host[name].st_uid == os.getuid(), name
        assert stat.S_IMODE(host["p"].st_mode) == 0o600
        assert stat.S_IMODE(host["d"].st_mode) == 0o700
        assert (export_dir / "l").read_text() == "target"
        if model == "mapped-xattr":
            assert os.getxattr(export_dir / "f", "user.virtfs.uid") == (1234).to_bytes(4, "little")
        else:
            meta = (export_dir / ".virtfs_metadata" / "f").read_text()
            assert "virtfs.uid=1234" in meta and "virtfs.gid=5678" in meta, meta
