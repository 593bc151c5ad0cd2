"""The 9p servers the guest benchmark compares, each as a context manager.

Every target yields a :class:`Running`: the share the guest mounts, the
host pid whose CPU time is the server's (None where the server lives inside
QEMU) and the QEMU binary to boot. Two comparisons run side by side:

* trans=fd: ninep and diod both reach the guest over virtio-serial, so they
  pay the same transport (Debian's QEMU; its built-in virtio-9p, ``qemu``,
  is shown for reference);
* vhost-user: ``ninep-vhost`` is attached by QEMU >= 10.2
  (``scripts/build-qemu``) and compared with the built-in virtio-9p of the
  *same* binary, ``qemu-10.2``, on the same q35 machine with the same shared
  guest RAM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.e2e import servers as e2e_servers
from tests.e2e.guest import (
    FdSocketShare,
    FdTcpShare,
    GuestError,
    Share,
    VhostUserShare,
    VirtioLocalShare,
    vhost_qemu,
    wait_for_listener,
)

REPO = Path(__file__).resolve().parents[1]
#: QEMU >= 10.2's built-in virtio-9p: the anchor of ninep over vhost-user.
NEW_QEMU = "qemu-10.2"
#: (ours, anchor) pairs the report gives ratios for.
COMPARISONS = (("ninep", "diod"), ("ninep", "qemu"), ("ninep-vhost", NEW_QEMU))
#: The measurement-only back end (bench/floor_backend.py) and its target.
FLOOR = "floor"
FLOOR_TARGET = "ninep-vhost[floor]"
#: ninep back ends and security models benchmarked against each other.
SECURITY_MODELS = ("passthrough", "mapped-xattr", "mapped-file", "none")


@dataclasses.dataclass(frozen=True)
class Running:
    """A started server: what the guest mounts and whose CPU time to count."""

    share: Share
    pid: int | None
    #: the QEMU binary to boot (None: Debian's on PATH)
    qemu: str | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    """One server configuration: ``kind`` is ninep, diod, qemu or vhost."""

    name: str
    kind: str
    backend: str = "local"
    model: str | None = "passthrough"
    #: run the server from another copy of the package (``--ab``: before/after in one run)
    pythonpath: str | None = None
    #: boot QEMU >= 10.2 (vhost_qemu()) instead of Debian's
    new_qemu: bool = False
    #: workloads this target cannot run (the floor back end keeps no data: no untar)
    skip_workloads: tuple[str, ...] = ()
    #: further ninep options (``--vhost-variant``: e.g. a polling window)
    extra_args: tuple[str, ...] = ()

    @property
    def is_variant(self) -> bool:
        """One of ninep's other back ends / security models (not the main comparison)."""
        return self.kind == "ninep" and self.name != "ninep" and self.pythonpath is None

    @contextlib.contextmanager
    def start(self, export: Path, sockdir: Path, log: Path, trace: Path | None = None) -> Iterator[Running]:
        """Start the server; *trace* (vhost-user targets) records bench.vq_trace stamps there."""
        qemu = vhost_qemu() if self.new_qemu or self.kind == "vhost" else None
        if self.kind == "qemu":
            yield Running(VirtioLocalShare(str(export), self.model or "passthrough"), None, qemu)
        elif self.kind == "diod":
            with _diod(export, log) as running:
                yield running
        elif self.kind in ("ninep", "vhost"):
            with _ninep(self, export, sockdir, log, qemu, trace if self.kind == "vhost" else None) as running:
                yield running
        else:  # pragma: no cover - targets are built by all_targets()
            raise ValueError(f"unknown server kind {self.kind}")


def ninep_command(target: Target, export: Path, listen: list[str], trace: Path | None = None) -> list[str]:
    options = ["--export", str(export), "--log-level", "warning", *listen, *target.extra_args]
    if target.backend != FLOOR:
        options += ["--backend", target.backend]
    if target.backend == "local" and target.model:
        options += ["--security-model", target.model]
    if trace is not None:  # the same server with its virtqueue stages stamped
        return [sys.executable, "-m", "bench.vq_trace", str(trace), "--", *options,
                *(["--floor"] if target.backend == FLOOR else [])]
    if target.backend == FLOOR:  # the in-memory back end: ninep's transport and session alone
        return [sys.executable, "-m", "bench.floor_server", *options]
    return [sys.executable, "-m", "ninep", *options]


@contextlib.contextmanager
def _ninep(target: Target, export: Path, sockdir: Path, log: Path, qemu: str | None,
           trace: Path | None) -> Iterator[Running]:
    sock = str(sockdir / f"{target.kind}.sock")
    if target.kind == "vhost":
        listen = ["--socket-path", sock, "--tag", "ninep0"]
    else:
        listen = ["--listen", f"unix:{sock}"]
    # --backend proxy without --proxy-socket spawns ninep's own helper (the default set-up).
    # This tree (or the --ab tree), never whatever ninep happens to be installed.
    env = dict(os.environ, PYTHONPATH=target.pythonpath or str(REPO))
    with open(log, "ab") as logf:
        proc = subprocess.Popen(ninep_command(target, export, listen, trace), stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, cwd=sockdir, env=env)
    try:
        # vhost-user: QEMU's own connection must be the first one.
        wait_for_listener(sock, timeout=30, proc=proc, probe=target.kind != "vhost")
        if target.kind == "vhost":
            yield Running(VhostUserShare(sock, tag="ninep0"), proc.pid, qemu)
        else:
            yield Running(FdSocketShare(sock), proc.pid)
    finally:
        e2e_servers.stop(proc)


@contextlib.contextmanager
def _diod(export: Path, log: Path) -> Iterator[Running]:
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken between probe and bind
        try:
            server = e2e_servers.start_diod(export, ("127.0.0.1", e2e_servers.free_tcp_port()), log)
            break
        except GuestError as exc:
            last = exc
    else:
        raise GuestError(f"diod did not start: {last}")
    try:
        host, port = server.address  # type: ignore[misc]
        # The harness's property was renamed aname -> mount_opts while it was being finished.
        opts = getattr(server, "mount_opts", None) or f"aname={export},uname=root"
        yield Running(FdTcpShare(host, port, mount_opts=opts), server.proc.pid)
    finally:
        e2e_servers.stop(server.proc)


def vhost_user_available() -> tuple[bool, str]:
    """Whether QEMU >= 10.2 is installed to attach a vhost-user 9p back end, and why not."""
    qemu = vhost_qemu()
    if qemu is None:
        return False, "no QEMU >= 10.2 with vhost-user-test-device-pci (run scripts/build-qemu)"
    version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return True, version.strip()


def proxy_backend_available() -> bool:
    backends = REPO / "ninep" / "backends"
    return (backends / "proxy.py").exists() or (backends / "proxy" / "__init__.py").exists()


def all_targets(with_variants: bool = True, with_floor: bool = False) -> tuple[list[Target], list[str]]:
    """The targets to run here, and notes on the ones that cannot be.

    *with_floor* adds ninep over vhost-user on the in-memory floor back end
    (the transport's floor: no host syscalls).
    """
    notes = []
    targets = [Target("ninep", "ninep"), Target("diod", "diod"), Target("qemu", "qemu")]
    if shutil.which(e2e_servers.DIOD) is None:
        targets = [t for t in targets if t.kind != "diod"]
        notes.append("diod: not installed (Debian package diod); no diod anchor")
    ok, why = vhost_user_available()
    if ok:
        targets += [Target("ninep-vhost", "vhost"), Target(NEW_QEMU, "qemu", new_qemu=True)]
        if with_floor:
            targets.append(Target(FLOOR_TARGET, "vhost", backend=FLOOR, model=None, skip_workloads=("untar",)))
    else:
        notes.append(f"ninep over vhost-user: not run, {why}")
    if with_variants:
        targets += [Target(f"ninep[local/{m}]", "ninep", "local", m) for m in SECURITY_MODELS[1:]]
        targets.append(Target("ninep[handle]", "ninep", "handle", None))
        if proxy_backend_available():
            targets.append(Target("ninep[proxy]", "ninep", "proxy", None))
        else:
            notes.append("ninep[proxy]: not run, ninep/backends/proxy.py does not exist yet")
    return targets, notes
