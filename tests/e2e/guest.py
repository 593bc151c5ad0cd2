"""Boot a real Linux guest under QEMU and run a shell workload on a 9p mount.

The guest is a Debian kernel (package linux-image-amd64, never the host's
running kernel) plus a tiny initramfs: busybox-static, the 9p and virtio
modules with their dependencies, Debian's setfattr/getfattr/date with
their shared libraries, and ``init.sh`` as ``/init``. It is built on first
use and cached under ``$NINEP_E2E_CACHE`` (default ``/var/tmp/ninep-e2e``),
keyed by kernel version and a hash of init.sh, this module and the
inputs' sizes and mtimes.

Each run appends a small per-run cpio (config, ``lib.sh``, the workload) to
the cached initramfs, boots QEMU (TCG, 1 vCPU, 512 MiB), mounts the shares,
runs the workload in ``/mnt`` and reads the serial console until
``@@NINEP-E2E-EXIT=<status>@@``. A host-side timeout kills QEMU.

Shares (the first is mounted on ``/mnt``, the next on ``/mnt1``, ...):

* :class:`FdSocketShare` / :class:`FdTcpShare` -- ``trans=fd`` to a 9p
  server listening on a host Unix socket / TCP port, via a virtio-serial
  port (QEMU connects as the client; the server must already listen).
* :class:`VirtioLocalShare` -- QEMU's built-in virtio-9p, ``-fsdev local``.
* :class:`VirtioProxyShare` -- virtio-9p with ``-fsdev proxy`` (QEMU is the
  client of a proxy helper on a Unix socket or an inherited fd).
* :class:`VhostUserShare` -- a vhost-user virtio-9p back end (ninep with
  ``--socket-path``) attached through QEMU >= 10.2's
  ``vhost-user-test-device-pci``. It needs the QEMU that
  ``scripts/build-qemu`` installs (:func:`vhost_qemu`); a run with such a
  share boots that QEMU on q35 with the guest RAM in a shared memfd.

Example::

    image = GuestImage.ensure()
    res = run_guest("echo hi > f; cat f", share=FdSocketShare("/tmp/s"),
                    timeout=300, image=image)
    res.check()          # raises GuestError with the console log unless 0

Timings observed on the 2-core dev machine (QEMU 7.2 TCG, Debian kernel
6.1.0-56-amd64). The machine was shared with other test runs (load
average ~4), so expect the lower figures on an idle machine:

* image build, cold cache: 0.4-0.6 s (initramfs 2.3 MiB gzip); a cached
  ``GuestImage.ensure()`` ~0.1 s (it re-hashes its inputs)
* boot to workload start: 5.3 s idle, 7-10 s loaded; boot + ``true`` +
  QEMU exit adds ~0.1 s
* smoke.sh (3000-entry directory), boot included:
  virtio-9p passthrough 25 s idle / 58 s loaded (bigdir alone 17 s);
  virtio-9p mapped-xattr 29 s; trans=fd to diod (TCP) 63 s / 116 s loaded
  (bigdir 52 s); -fsdev proxy + virtfs-proxy-helper 67 s loaded.
  With ``nfiles=500`` the virtio runs take 13-20 s.
* the whole tests/e2e suite (11 tests): ~4.5 min loaded.

Notes:

* trans=fd on 6.1: virtio_console's port fd has neither read_iter nor
  write_iter, so the kernel cannot use it for trans=fd (EINVAL). init.sh
  relays FIFO <-> port with two dd; a port can be open only once, so both
  dd share one O_RDWR descriptor. A server hang-up reaches the kernel as
  EOF (mount/requests fail with ECONNRESET) instead of a hang. Each 9p
  round trip costs several extra guest context switches: metadata-heavy
  work is ~3x slower than over virtio-9p. A virtconsole (hvc tty, raw
  mode) port as the fd was tried and hangs the mount.
* Debian's busybox-static ash runs its applets before searching PATH, so
  extra binaries that shadow an applet (date) must be called by absolute
  path (/usr/bin/date); lib.sh's ``now_ns`` does that.
* The per-run cpio is appended (gzip, 512-byte aligned) to the cached
  initrd; the kernel unpacks both over each other.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import gzip
import hashlib
import io
import lzma
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "E2E_DIR",
    "GuestError",
    "GuestImage",
    "GuestResult",
    "FdSocketShare",
    "FdTcpShare",
    "VirtioLocalShare",
    "VirtioProxyShare",
    "VhostUserShare",
    "Share",
    "vhost_qemu",
    "run_guest",
    "run_guest_async",
    "run_smoke",
    "SMOKE_SCRIPT",
    "SMOKE_GROUPS",
    "missing_host_tools",
    "wait_for_listener",
    "DEFAULT_MSIZE",
]

E2E_DIR = Path(__file__).resolve().parent
INIT_SCRIPT = E2E_DIR / "init.sh"
LIB_SCRIPT = E2E_DIR / "lib.sh"
#: The POSIX smoke workload (see the header of smoke.sh for its knobs).
SMOKE_SCRIPT = E2E_DIR / "smoke.sh"

DEFAULT_CACHE = "/var/tmp/ninep-e2e"
DEFAULT_MSIZE = 512000  # the largest msize trans=virtio accepts on 6.1
QEMU = "qemu-system-x86_64"
#: Where scripts/build-qemu installs QEMU >= 10.2 (override: $NINEP_QEMU_PREFIX).
VHOST_QEMU_PREFIX = "/var/cache/ninep/qemu-10.2"

#: Modules the guest loads (with their dependencies) at boot.
GUEST_MODULES = ("9p", "9pnet", "9pnet_fd", "9pnet_virtio", "virtio_console", "virtio_pci", "virtio_rng")
#: Non-busybox binaries in every image (found on the host's PATH).
GUEST_BINARIES = ("setfattr", "getfattr", "date")

#: Check groups of smoke.sh, in the order it runs them ("cleanup" is last).
SMOKE_GROUPS = (
    "basic", "append", "sparse", "symlink", "hardlink", "rename", "chmod", "chown", "utime",
    "truncate", "errors", "fifo", "mknod", "unlinked_open", "bigdir", "xattr", "cleanup",
)  # fmt: skip
_SMOKE_RESULT = re.compile(r"^SMOKE-RESULT (\S+) (PASS|FAIL|SKIP|XFAIL|XPASS)\b", re.M)

EXIT_MARKER = re.compile(rb"@@NINEP-E2E-EXIT=(\d+)@@")
START_MARKER = b"@@NINEP-E2E-START@@"
#: Exit status init reports when it could not set up the guest (mounts...).
SETUP_FAILED_STATUS = 125


class GuestError(RuntimeError):
    """A guest run or the image build failed."""


# --------------------------------------------------------------------------
# Shares


@dataclasses.dataclass(frozen=True)
class Share:
    """Base of the ways a guest reaches a 9p server (use a subclass)."""

    #: extra 9p mount options for this share (e.g. ``aname=/srv,cache=loose``)
    mount_opts: str = dataclasses.field(default="", kw_only=True)
    #: guest mount point; None means /mnt for the first share, /mntN after
    mountpoint: str | None = dataclasses.field(default=None, kw_only=True)
    #: False attaches the device but leaves mounting to the workload
    mount: bool = dataclasses.field(default=True, kw_only=True)

    kind = "?"
    #: the guest RAM must be a shared memfd a back end outside QEMU can map
    needs_shared_memory = False

    def mount_tag(self, index: int) -> str:
        """The tag (virtio-9p) or port name (trans=fd) of share number *index*."""
        return f"ninep.{index}" if self.kind == "fd" else f"ninep{index}"

    def qemu_args(self, index: int, tag: str) -> list[str]:  # pragma: no cover
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _FdShare(Share):
    """trans=fd through a virtio-serial port wired to a host chardev.

    In the guest the share's port is named ``ninep.<index>`` and relayed
    through FIFOs (see init.sh). With ``mount=False`` the relays still run
    and the workload mounts itself, opening the FIFOs in this order::

        exec 8</run/ninep-0.in 9>/run/ninep-0.out
        mount -t 9p -o trans=fd,rfdno=8,wfdno=9,version=9p2000.L x /mnt
        exec 8<&- 9>&-
    """

    kind = "fd"

    def chardev(self, cid: str) -> str:  # pragma: no cover
        raise NotImplementedError

    def qemu_args(self, index: int, tag: str) -> list[str]:
        cid = f"ninepchr{index}"
        return [
            "-chardev", self.chardev(cid),
            "-device", f"virtserialport,bus=ninepser.0,chardev={cid},name={tag}",
        ]


@dataclasses.dataclass(frozen=True)
class FdSocketShare(_FdShare):
    """trans=fd to a 9p server listening on the host Unix socket ``path``."""

    path: str

    def chardev(self, cid: str) -> str:
        return f"socket,id={cid},path={_qemu_opt(self.path)}"


@dataclasses.dataclass(frozen=True)
class FdTcpShare(_FdShare):
    """trans=fd to a 9p server listening on host TCP ``host:port``."""

    host: str
    port: int

    def chardev(self, cid: str) -> str:
        return f"socket,id={cid},host={self.host},port={self.port}"


@dataclasses.dataclass(frozen=True)
class VirtioLocalShare(Share):
    """QEMU's built-in virtio-9p exporting host ``dir`` (``-fsdev local``)."""

    dir: str
    security_model: str = "passthrough"
    #: extra ``-fsdev`` options, e.g. ``fmode=0644,dmode=0755``
    fsdev_opts: str = ""
    kind = "virtio"

    def qemu_args(self, index: int, tag: str) -> list[str]:
        fsdev = f"local,id=ninepfs{index},path={_qemu_opt(self.dir)},security_model={self.security_model}"
        if self.fsdev_opts:
            fsdev += "," + self.fsdev_opts
        return [
            "-fsdev", fsdev,
            "-device", f"virtio-9p-pci,fsdev=ninepfs{index},mount_tag={tag}",
        ]


@dataclasses.dataclass(frozen=True)
class VirtioProxyShare(Share):
    """virtio-9p backed by ``-fsdev proxy``: QEMU talks to a proxy helper.

    Give ``socket_path`` (the helper listens there) or ``sock_fd`` (a
    connected socket fd that the QEMU child inherits).
    """

    socket_path: str | None = None
    sock_fd: int | None = None
    kind = "virtio"

    def qemu_args(self, index: int, tag: str) -> list[str]:
        if (self.socket_path is None) == (self.sock_fd is None):
            raise ValueError("VirtioProxyShare needs exactly one of socket_path, sock_fd")
        where = (
            f"socket={_qemu_opt(self.socket_path)}" if self.socket_path is not None else f"sock_fd={self.sock_fd}"
        )
        return [
            "-fsdev", f"proxy,id=ninepfs{index},{where}",
            "-device", f"virtio-9p-pci,fsdev=ninepfs{index},mount_tag={tag}",
        ]


@dataclasses.dataclass(frozen=True)
class VhostUserShare(Share):
    """A vhost-user virtio-9p back end listening on the Unix socket ``socket_path``.

    ``tag`` must be the back end's own mount tag (ninep's ``--tag``): QEMU's
    generic device reads the config space from the back end and checks only
    its size, ``2 + len(tag)``. The back end must already listen.
    """

    socket_path: str
    tag: str = "ninep0"
    #: descriptors per virtqueue (Linux's 9p driver posts at most 128 requests)
    queue_size: int = 128
    kind = "virtio"
    needs_shared_memory = True

    def mount_tag(self, index: int) -> str:
        return self.tag

    def qemu_args(self, index: int, tag: str) -> list[str]:
        config_size = 2 + len(self.tag.encode())
        return [
            "-chardev", f"socket,id=vu9p{index},path={_qemu_opt(self.socket_path)}",
            "-device", f"vhost-user-test-device-pci,chardev=vu9p{index},virtio-id=9,num_vqs=1,"
                       f"vq_size={self.queue_size},config_size={config_size}",
        ]  # fmt: skip


def vhost_qemu() -> str | None:
    """The QEMU >= 10.2 that can attach a vhost-user 9p back end, or None.

    ``$NINEP_QEMU_VHOST`` names a binary; else ``scripts/build-qemu``'s
    install under ``$NINEP_QEMU_PREFIX`` (default ``/var/cache/ninep/qemu-10.2``).
    """
    explicit = os.environ.get("NINEP_QEMU_VHOST")
    prefix = os.environ.get("NINEP_QEMU_PREFIX") or VHOST_QEMU_PREFIX
    path = explicit or os.path.join(prefix, "bin", QEMU)
    return path if os.access(path, os.X_OK) else None


def _qemu_opt(value: str) -> str:
    """Escape a value for a QEMU ``-opt a=b,c=d`` list (commas double)."""
    return value.replace(",", ",,")


# --------------------------------------------------------------------------
# Image


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """A cached kernel + initramfs pair ready to boot."""

    kernel: Path
    initrd: Path
    kver: str

    @classmethod
    def ensure(
        cls,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        kver: str | None = None,
        extra_binaries: Sequence[str] = (),
    ) -> "GuestImage":
        """Return the cached image, building it first if needed.

        ``kver`` defaults to the kernel linux-image-amd64 depends on (else
        the newest /boot/vmlinuz-* with 9p modules). ``extra_binaries``
        (names on PATH or absolute paths) are copied to /usr/bin with their
        shared libraries, e.g. for a benchmark workload; they change the
        cache key. Call one that shadows a busybox applet by absolute path.
        """
        missing = missing_host_tools()
        if missing:
            raise GuestError(f"missing host tools for the e2e guest: {', '.join(missing)}")
        kver = kver or _pick_kernel()
        kernel = Path(f"/boot/vmlinuz-{kver}")
        binaries = [_which(b) for b in (*GUEST_BINARIES, *extra_binaries)]
        busybox = _which("busybox")
        modules = _resolve_modules(kver, GUEST_MODULES)

        h = hashlib.sha256()
        for part in (INIT_SCRIPT.read_bytes(), Path(__file__).read_bytes(), kver.encode(), busybox.encode()):
            h.update(part)
            h.update(b"\0")
        for p in (kernel, Path(busybox), *map(Path, binaries), *modules):
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        key = f"{kver}-{h.hexdigest()[:16]}"

        root = Path(cache_dir or os.environ.get("NINEP_E2E_CACHE") or DEFAULT_CACHE)
        out = root / key
        image = cls(kernel=out / "vmlinuz", initrd=out / "initrd.gz", kver=kver)
        if image.initrd.exists() and image.kernel.exists():
            return image
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if image.initrd.exists() and image.kernel.exists():
                return image
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
            try:
                shutil.copyfile(kernel, tmp / "vmlinuz")
                data = _build_initramfs(kver, busybox, binaries, modules)
                (tmp / "initrd.gz").write_bytes(data)
                os.rename(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return image


def _tool(name: str) -> str | None:
    """``name`` on PATH or in the sbin directories a non-login PATH may lack."""
    return shutil.which(name, path=os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin:/usr/bin:/bin")


def missing_host_tools() -> list[str]:
    """Host programs/files the harness needs that are not installed."""
    missing = [t for t in (QEMU, "busybox", "modinfo", "ldd", *GUEST_BINARIES) if _tool(t) is None]
    if not glob.glob("/boot/vmlinuz-*"):
        missing.append("/boot/vmlinuz-* (linux-image-amd64)")
    return missing


def _which(name: str) -> str:
    path = name if os.path.isabs(name) else _tool(name)
    if not path or not os.path.exists(path):
        raise GuestError(f"guest binary {name!r} not found on the host")
    return path


def _kver_key(kver: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", kver)]


def _has_9p(kver: str) -> bool:
    return bool(glob.glob(f"/lib/modules/{kver}/kernel/fs/9p/9p.ko*")) and os.path.exists(f"/boot/vmlinuz-{kver}")


def _pick_kernel() -> str:
    """The kernel of the linux-image-amd64 package, else the newest
    /boot/vmlinuz-* whose 9p modules are installed (never ``uname -r``)."""
    res = subprocess.run(
        ["dpkg-query", "-W", "-f=${Depends}", "linux-image-amd64"], capture_output=True, text=True
    ) if shutil.which("dpkg-query") else None
    if res is not None and res.returncode == 0:
        m = re.search(r"linux-image-(\S+?-amd64)\b", res.stdout)
        if m and _has_9p(m.group(1)):
            return m.group(1)
    candidates = [p.removeprefix("/boot/vmlinuz-") for p in glob.glob("/boot/vmlinuz-*")]
    candidates = [k for k in candidates if _has_9p(k)]
    if not candidates:
        raise GuestError("no /boot/vmlinuz-* with 9p modules; install linux-image-amd64")
    return max(candidates, key=_kver_key)


def _module_index(kver: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(f"/lib/modules/{kver}/kernel"):
        for f in files:
            m = re.match(r"(.+)\.ko(\.xz|\.zst|\.gz)?$", f)
            if m:
                index[m.group(1).replace("-", "_")] = Path(dirpath, f)
    return index


def _builtin_modules(kver: str) -> set[str]:
    try:
        text = Path(f"/lib/modules/{kver}/modules.builtin").read_text()
    except FileNotFoundError:
        return set()
    return {Path(line.strip()).name.split(".ko")[0].replace("-", "_") for line in text.splitlines() if line.strip()}


def _resolve_modules(kver: str, wanted: Sequence[str]) -> list[Path]:
    """Module files for ``wanted`` and their dependencies, in load order.

    Dependencies come from ``modinfo -F depends`` on each file, so no
    modules.dep (which the .deb does not ship) is needed.
    """
    index = _module_index(kver)
    builtin = _builtin_modules(kver)
    order: list[Path] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if state.get(name) == 2 or name in builtin:
            return
        if state.get(name) == 1:
            raise GuestError(f"module dependency cycle at {name}")
        if name not in index:
            raise GuestError(f"kernel module {name} not found for {kver}")
        state[name] = 1
        deps = subprocess.run(
            [_tool("modinfo") or "modinfo", "-F", "depends", str(index[name])],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for dep in filter(None, deps.split(",")):
            visit(dep)
        state[name] = 2
        order.append(index[name])

    for w in wanted:
        visit(w)
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


def _shared_libs(binary: str) -> list[str]:
    """Absolute paths of the libraries and loader ``binary`` needs (ldd)."""
    res = subprocess.run([_tool("ldd") or "ldd", binary], capture_output=True, text=True)
    if res.returncode != 0:  # static binaries: "not a dynamic executable"
        return []
    libs = []
    for line in res.stdout.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
        elif "not found" in line:
            raise GuestError(f"{binary}: {line.strip()}")
    return libs


class _Cpio:
    """Minimal writer for the cpio 'newc' format the kernel unpacks."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", *, rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.lstrip("/").encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.buf.write(name_b)
        self.buf.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        path = "/" + path.strip("/")
        if path == "/" or path in self.dirs:
            return
        self.mkdir(os.path.dirname(path))
        self.dirs.add(path)
        self._entry(path, stat.S_IFDIR | mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.mkdir(os.path.dirname(path))
        self._entry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _build_initramfs(kver: str, busybox: str, binaries: Sequence[str], modules: Sequence[Path]) -> bytes:
    c = _Cpio()
    for d in ("/proc", "/sys", "/dev", "/run", "/tmp", "/mnt", "/root", "/etc", "/usr/sbin", "/sbin"):
        c.mkdir(d)
    c.chardev("/dev/console", 5, 1)
    c.chardev("/dev/null", 1, 3, 0o666)
    c.file("/bin/busybox", Path(busybox).read_bytes(), 0o755)
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            c.symlink(f"/bin/{applet}", "busybox")
    c.file("/init", INIT_SCRIPT.read_bytes(), 0o755)
    c.file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("/etc/group", b"root:x:0:\n")

    names = []
    for i, mod in enumerate(modules):
        name = f"{i:02d}-{mod.name.split('.ko')[0]}.ko"
        c.file(f"/lib/modules/e2e/{name}", _read_module(mod))
        names.append(name)
    c.file("/lib/modules/e2e/order", ("\n".join(names) + "\n").encode())

    libs: dict[str, None] = {}
    for b in binaries:
        c.file(f"/usr/bin/{os.path.basename(b)}", Path(b).read_bytes(), 0o755)
        libs.update(dict.fromkeys(_shared_libs(b)))
    for lib in libs:
        c.file(lib, Path(lib).read_bytes(), 0o755)
    return gzip.compress(c.finish(), compresslevel=6, mtime=0)


def _overlay(files: Mapping[str, bytes]) -> bytes:
    c = _Cpio()
    for path, data in files.items():
        c.file(path, data, 0o755)
    return gzip.compress(c.finish(), compresslevel=1, mtime=0)


# --------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class GuestResult:
    """Outcome of one guest run."""

    #: workload exit status; 125 if the guest setup (e.g. mount) failed;
    #: None if no exit marker was seen (timeout, kernel panic, QEMU error)
    exit_status: int | None
    #: whole serial console output (kernel messages included), decoded
    output: str
    #: seconds from QEMU start until it exited or was killed
    duration: float
    #: seconds from QEMU start until the workload started (None if never)
    boot_time: float | None = None
    timed_out: bool = False
    qemu_returncode: int | None = None
    qemu_stderr: str = ""

    @property
    def workload_output(self) -> str:
        """Console text between the start and exit markers."""
        start = self.output.find(START_MARKER.decode())
        text = self.output[start + len(START_MARKER) :] if start >= 0 else self.output
        m = re.search(EXIT_MARKER.pattern.decode(), text)
        return (text[: m.start()] if m else text).lstrip("\r\n")

    @property
    def smoke_results(self) -> dict[str, str]:
        """``{group: PASS|FAIL|SKIP|XFAIL|XPASS}`` from a smoke.sh run."""
        return dict(_SMOKE_RESULT.findall(self.output))

    def check_failures(self) -> list[str]:
        """The ``E2E-CHECK-FAILED: ...`` lines the workload printed."""
        return [line.strip() for line in self.output.splitlines() if "E2E-CHECK-FAILED:" in line]

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def check(self) -> "GuestResult":
        """Raise GuestError with the log unless the workload exited 0."""
        if not self.ok:
            raise GuestError(self.describe())
        return self

    def describe(self) -> str:
        why = (
            "timed out" if self.timed_out
            else "guest setup failed" if self.exit_status == SETUP_FAILED_STATUS
            else f"exit status {self.exit_status}"
        )
        parts = [f"guest run failed ({why}, {self.duration:.1f}s, qemu rc {self.qemu_returncode})"]
        if self.qemu_stderr.strip():
            parts.append("--- qemu stderr ---\n" + self.qemu_stderr.strip())
        parts.append("--- console ---\n" + self.output[-20000:])
        return "\n".join(parts)


def _shell_assign(name: str, value: str) -> str:
    return f"{name}={shlex.quote(value)}\n"


def run_guest(
    script: str,
    *,
    share: Share | Sequence[Share] | None = None,
    timeout: float = 600.0,
    extra_mount_opts: str = "",
    env: Mapping[str, str] | None = None,
    msize: int = DEFAULT_MSIZE,
    image: GuestImage | None = None,
    memory_mb: int = 512,
    qemu_args: Sequence[str] = (),
    kernel_args: str = "",
    pass_fds: Sequence[int] = (),
    workdir: str | None = None,
    console_log: str | os.PathLike[str] | None = None,
    qemu: str | None = None,
) -> GuestResult:
    """Boot the guest, mount ``share`` (or several) and run ``script``.

    ``script`` is busybox ash, run in ``workdir`` (default the first mount
    point, else ``/``) with ``set -e`` and the ``lib.sh`` helpers, stdin
    from /dev/null and output to the serial console. ``env`` is exported to
    it. Every share is mounted with ``version=9p2000.L,msize=<msize>``, then
    ``extra_mount_opts``, then the share's own ``mount_opts``.
    ``qemu_args`` are appended to the QEMU command line, ``kernel_args`` to
    the kernel's, and ``pass_fds`` are inherited by QEMU (for ``sock_fd``).
    ``console_log`` also streams the console to that file as it arrives.
    ``qemu`` is the QEMU binary; by default Debian's, or :func:`vhost_qemu`
    when a share needs it. With :func:`vhost_qemu`'s binary the guest is a
    q35 machine whose RAM is a shared memfd (so built-in and vhost-user
    shares compare on the same machine).
    Never raises for a failed workload: inspect the result or ``.check()``.
    """
    image = image or GuestImage.ensure()
    shares: list[Share] = [] if share is None else [share] if isinstance(share, Share) else list(share)
    if qemu is None and any(s.needs_shared_memory for s in shares):
        qemu = vhost_qemu()
        if qemu is None:
            raise GuestError("a vhost-user share needs QEMU >= 10.2: run scripts/build-qemu")
    machine_args: list[str] = []
    if qemu is not None and qemu == vhost_qemu():
        machine_args = [
            "-object", f"memory-backend-memfd,id=guestram,size={memory_mb}M,share=on",
            "-machine", "q35,memory-backend=guestram",
        ]  # fmt: skip

    config = [f"E2E_NSHARES={len(shares)}\n"]
    args: list[str] = []
    if any(isinstance(s, _FdShare) for s in shares):
        args += ["-device", "virtio-serial-pci,id=ninepser"]
    first_mnt = None
    for i, s in enumerate(shares):
        tag = s.mount_tag(i)
        mnt = s.mountpoint or ("/mnt" if i == 0 else f"/mnt{i}")
        if i == 0:
            first_mnt = mnt
        opts = ",".join(o for o in (f"version=9p2000.L,msize={msize}", extra_mount_opts, s.mount_opts) if o)
        config += [
            _shell_assign(f"E2E_SHARE{i}_KIND", s.kind),
            _shell_assign(f"E2E_SHARE{i}_TAG", tag),
            _shell_assign(f"E2E_SHARE{i}_MNT", mnt),
            _shell_assign(f"E2E_SHARE{i}_OPTS", opts),
            _shell_assign(f"E2E_SHARE{i}_MOUNT", "1" if s.mount else "0"),
        ]
        args += s.qemu_args(i, tag)
    default_wd = first_mnt if first_mnt and shares[0].mount else "/"
    config.append(_shell_assign("E2E_WORKDIR", workdir or default_wd))
    env_text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())

    overlay = _overlay(
        {
            "/e2e/config": "".join(config).encode(),
            "/e2e/env": env_text.encode(),
            "/e2e/lib.sh": LIB_SCRIPT.read_bytes(),
            "/e2e/workload.sh": script.encode(),
        }
    )
    cmdline = "console=ttyS0 quiet panic=-1 oops=panic 8250.nr_uarts=1 mitigations=off " + kernel_args
    with tempfile.TemporaryDirectory(prefix="ninep-e2e-run.") as tmp:
        initrd = Path(tmp, "initrd")
        with open(initrd, "wb") as f, open(image.initrd, "rb") as base:
            shutil.copyfileobj(base, f)
            f.write(b"\0" * (-f.tell() % 512))
            f.write(overlay)
        cmd = [
            qemu or _tool(QEMU) or QEMU, "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "mon:stdio", "-no-reboot",
            "-kernel", str(image.kernel), "-initrd", str(initrd), "-append", cmdline.strip(),
            *machine_args, *args, *qemu_args,
        ]  # fmt: skip
        return _run_qemu(cmd, timeout=timeout, pass_fds=pass_fds, console_log=console_log)


def run_smoke(
    share: Share | Sequence[Share],
    *,
    skip: Sequence[str] = (),
    xfail: Sequence[str] = (),
    nfiles: int = 3000,
    timeout: float = 900.0,
    env: Mapping[str, str] | None = None,
    **kwargs: object,
) -> GuestResult:
    """Run smoke.sh on the first share (mounted on /mnt).

    ``skip`` groups are not run (e.g. ``chown``/``mknod`` for a security
    model that maps owners differently); ``xfail`` groups must fail (a
    pass counts as a failure, XPASS). Other keyword arguments go to
    :func:`run_guest`. Check ``result.ok`` / ``result.smoke_results``.
    """
    for g in (*skip, *xfail):
        if g not in SMOKE_GROUPS:
            raise ValueError(f"unknown smoke group {g!r}")
    smoke_env = {"SMOKE_SKIP": " ".join(skip), "SMOKE_XFAIL": " ".join(xfail), "SMOKE_NFILES": str(nfiles)}
    smoke_env.update(env or {})
    return run_guest(SMOKE_SCRIPT.read_text(), share=share, timeout=timeout, env=smoke_env, **kwargs)  # type: ignore[arg-type]


async def run_guest_async(script: str, **kwargs: object) -> GuestResult:
    """:func:`run_guest` in a worker thread, for servers running in this loop."""
    import asyncio

    return await asyncio.to_thread(run_guest, script, **kwargs)  # type: ignore[arg-type]


def _run_qemu(
    cmd: list[str], *, timeout: float, pass_fds: Sequence[int], console_log: str | os.PathLike[str] | None
) -> GuestResult:
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()
    marks: dict[str, float] = {}
    exit_seen = threading.Event()
    log = open(console_log, "ab") if console_log else None

    def pump_out() -> None:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            out.extend(chunk)
            if log:
                log.write(chunk)
                log.flush()
            tail = bytes(out[-200 - len(chunk) :])
            if "start" not in marks and START_MARKER in tail:
                marks["start"] = time.monotonic() - start
            if EXIT_MARKER.search(tail):
                exit_seen.set()

    def pump_err() -> None:
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 65536):
            err.extend(chunk)

    threads = [threading.Thread(target=pump_out, daemon=True), threading.Thread(target=pump_err, daemon=True)]
    for t in threads:
        t.start()
    timed_out = False
    deadline = start + timeout
    exit_at: float | None = None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if exit_seen.is_set() and exit_at is None:
                exit_at = now
            if exit_at is not None and now - exit_at > 15:  # done, but QEMU did not exit
                break
            if now > deadline:
                timed_out = exit_at is None
                break
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in threads:
            t.join(timeout=5)
        if log:
            log.close()
    duration = time.monotonic() - start
    m = None
    for m in EXIT_MARKER.finditer(bytes(out)):
        pass
    return GuestResult(
        exit_status=int(m.group(1)) if m else None,
        output=out.decode(errors="replace").replace("\r\n", "\n"),
        duration=duration,
        boot_time=marks.get("start"),
        timed_out=timed_out,
        qemu_returncode=proc.returncode,
        qemu_stderr=err.decode(errors="replace"),
    )


def wait_for_listener(
    address: str | tuple[str, int],
    timeout: float = 10.0,
    proc: subprocess.Popen | None = None,
    *,
    probe: bool = True,
) -> None:
    """Wait until a Unix socket path or (host, port) accepts connections.

    Raises GuestError on timeout or if ``proc`` exits first. The probe
    connection is seen (and dropped at once) by the server; with
    ``probe=False`` a Unix socket is only waited for to exist.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise GuestError(f"server exited with status {proc.returncode} before listening on {address}")
        if not probe and isinstance(address, str):
            try:
                if stat.S_ISSOCK(os.stat(address).st_mode):
                    return
            except FileNotFoundError:
                pass
        else:
            family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                try:
                    s.connect(address)
                    return
                except OSError:
                    pass
        if time.monotonic() > deadline:
            raise GuestError(f"nothing listening on {address} after {timeout}s")
        time.sleep(0.05)
