"""The 9p servers the guest benchmark compares, each as a context manager.

Every target yields a :class:`Running`: the share the guest mounts and the
host pid whose CPU time is the server's (None where the server lives inside
QEMU). ninep and diod both reach the guest through ``trans=fd`` over
virtio-serial, so they pay the same transport; QEMU's own virtio-9p is the
in-QEMU anchor.
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
from tests.e2e.guest import QEMU, FdSocketShare, FdTcpShare, GuestError, Share, VirtioLocalShare, _qemu_opt, wait_for_listener

REPO = Path(__file__).resolve().parents[1]
#: ninep back ends and security models benchmarked against each other.
SECURITY_MODELS = ("passthrough", "mapped-xattr", "mapped-file", "none")


@dataclasses.dataclass(frozen=True)
class Running:
    """A started server: what the guest mounts and whose CPU time to count."""

    share: Share
    pid: int | None
    #: QEMU arguments the server needs besides the share's (vhost-user memory)
    qemu_args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Target:
    """One server configuration: ``kind`` is ninep, diod, qemu or vhost."""

    name: str
    kind: str
    backend: str = "local"
    model: str | None = "passthrough"
    #: run the server from another copy of the package (``--ab``: before/after in one run)
    pythonpath: str | None = None

    @property
    def is_variant(self) -> bool:
        """One of ninep's other back ends / security models (not the main comparison)."""
        return self.kind == "ninep" and self.name != "ninep"

    @contextlib.contextmanager
    def start(self, export: Path, sockdir: Path, log: Path, memory_mb: int = 768) -> Iterator[Running]:
        if self.kind == "qemu":
            yield Running(VirtioLocalShare(str(export), self.model or "passthrough"), None)
        elif self.kind == "diod":
            with _diod(export, log) as running:
                yield running
        elif self.kind in ("ninep", "vhost"):
            with _ninep(self, export, sockdir, log, memory_mb) as running:
                yield running
        else:  # pragma: no cover - targets are built by all_targets()
            raise ValueError(f"unknown server kind {self.kind}")


def ninep_command(target: Target, export: Path, listen: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "ninep", "--export", str(export), "--backend", target.backend,
           "--log-level", "warning", *listen]
    if target.backend == "local" and target.model:
        cmd += ["--security-model", target.model]
    return cmd


@contextlib.contextmanager
def _ninep(target: Target, export: Path, sockdir: Path, log: Path, memory_mb: int) -> Iterator[Running]:
    sock = str(sockdir / f"{target.kind}.sock")
    if target.kind == "vhost":
        listen = ["--socket-path", sock, "--tag", "ninep0"]
    else:
        listen = ["--listen", f"unix:{sock}"]
    # --backend proxy without --proxy-socket spawns ninep's own helper (the default set-up).
    env = dict(os.environ)
    if target.pythonpath:
        env["PYTHONPATH"] = target.pythonpath
    with open(log, "ab") as logf:
        proc = subprocess.Popen(ninep_command(target, export, listen), stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=subprocess.STDOUT, cwd=sockdir, env=env)
    try:
        # vhost-user: QEMU's own connection must be the first one.
        wait_for_listener(sock, timeout=30, proc=proc, probe=target.kind != "vhost")
        if target.kind == "vhost":
            # vhost-user needs the guest RAM in a shared memfd the back end can map.
            yield Running(VhostUserShare(sock), proc.pid, (
                "-object", f"memory-backend-memfd,id=vumem,size={memory_mb}M,share=on",
                "-numa", "node,memdev=vumem"))
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


@dataclasses.dataclass(frozen=True)
class VhostUserShare(Share):
    """virtio-9p served by ninep over vhost-user (needs QEMU >= 10.2).

    Adapter local to the benchmark: tests/e2e/guest.py has no vhost-user
    share yet. The guest RAM must be a shared memfd (see ``Running.qemu_args``).
    Untested on this machine (QEMU 7.2 has no vhost-user-test-device).
    """

    socket_path: str
    kind = "virtio"

    def qemu_args(self, index: int, tag: str) -> list[str]:
        config_size = 2 + len(tag.encode())
        return [
            "-chardev", f"socket,id=vu{index},path={_qemu_opt(self.socket_path)}",
            "-device", f"vhost-user-test-device-pci,chardev=vu{index},virtio-id=9,num_vqs=1,"
                       f"config_size={config_size}",
        ]  # fmt: skip


def vhost_user_available() -> tuple[bool, str]:
    """Whether the QEMU on PATH can attach a vhost-user 9p back end, and why not."""
    if shutil.which(QEMU) is None:
        return False, f"{QEMU} not found"
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    devices = subprocess.run([QEMU, "-device", "help"], capture_output=True, text=True).stdout
    if "vhost-user-test-device" not in devices:
        return False, f"{version.strip()} has no vhost-user-test-device (needs QEMU >= 10.2)"
    return True, version.strip()


def proxy_backend_available() -> bool:
    return (REPO / "ninep" / "backends" / "proxy.py").exists()


def all_targets(with_variants: bool = True) -> tuple[list[Target], list[str]]:
    """The targets to run here, and notes on the ones that cannot be."""
    notes = []
    targets = [Target("ninep", "ninep"), Target("diod", "diod"), Target("qemu", "qemu")]
    if shutil.which(e2e_servers.DIOD) is None:
        targets = [t for t in targets if t.kind != "diod"]
        notes.append("diod: not installed (Debian package diod); no diod anchor")
    ok, why = vhost_user_available()
    if ok:
        targets.append(Target("ninep-vhost", "vhost"))
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
