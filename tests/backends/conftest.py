"""Fixtures for the shared back-end suite: every test runs against every
registered back end / security model.

Adding one is a single entry in :data:`BACKENDS`, for example::

    "local-mapped-xattr": BackendSpec(local_backend("mapped-xattr"), MAPPED_XATTR),
    "local-mapped-file": BackendSpec(local_backend("mapped-file"), MAPPED_FILE),
    "proxy": BackendSpec(start_proxy_backend, PASSTHROUGH),  # may be async

A spec's factory is called as ``factory(export_dir, multidevs="warn")`` and
returns the back end (or an awaitable of it); :func:`build_backend` then awaits
its ``start()`` (where the proxy back end starts its helper process), and
``Backend.close()`` must release everything it started.  Its
:class:`Caps` say which model-specific expectations apply, so tests read them
as data instead of branching on the back end's name.

Every test that uses a back end also checks, at teardown, that the back end
left no file descriptor open and that a canary directory next to the export
(the target of the confinement tests' escaping symlinks) is unchanged.
"""

from __future__ import annotations

import inspect
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pytest

from ninep.backends.base import Backend, Credentials, DirEntry, Node, Stat
from ninep.backends.handle import HandleBackend
from ninep.backends.local import LocalBackend, make_model
from ninep.client import Client
from ninep.protocol.ninep import Qid

from .proxy_support import start_proxy_backend, start_proxy_qemu_helper_backend


@dataclass(frozen=True)
class Caps:
    """What a back end (with its security model) promises about the host."""

    #: The host file's uid/gid are the guest-visible ones (not stored aside).
    host_owners: bool = True
    #: New entries belong to the request's Credentials; False: to the server.
    creates_as_caller: bool = True
    #: The host file's permission bits are the guest-visible ones.
    host_modes: bool = True
    #: Host entries have the guest-visible file type: symlink and mknod make real
    #: symlinks, FIFOs and devices, and readdir reports d_type (False: they are
    #: regular host files and readdir says DT_UNKNOWN, as in the mapped models).
    host_file_types: bool = True
    #: mknod may create character/block devices (guest-visible S_IFCHR + rdev).
    mknod_devices: bool = True
    #: The factory honours ``multidevs=`` (remap/forbid/warn).
    multidevs: bool = True
    #: A node names a path, resolved again on each use; False: it holds the
    #: inode itself (a file handle), so host renames do not affect it.
    nodes_are_paths: bool = True
    #: Guest owner/mode are kept by file name (mapped-file), so once an open
    #: file's name is gone they cannot change any more (ENOENT, as in QEMU).
    metadata_by_name: bool = False
    #: Paths inside the export of PATH_MAX bytes and more work (the guest's
    #: kernel accepts them); False: ENAMETOOLONG (QEMU's proxy helper).
    paths_past_path_max: bool = True


PASSTHROUGH = Caps()
#: none chowns new entries as passthrough does and ignores a failure: a root
#: server gives them the caller, an unprivileged one keeps its own owner.
NONE = Caps(creates_as_caller=os.geteuid() == 0)
MAPPED = Caps(host_owners=False, host_modes=False, host_file_types=False)
MAPPED_XATTR = MAPPED
MAPPED_FILE = replace(MAPPED, metadata_by_name=True)
HANDLE = Caps(nodes_are_paths=False)
#: The helper runs creating requests under the caller's fsuid, which drops
#: CAP_MKNOD for a non-root caller (as QEMU's helper does): no devices.
PROXY = replace(PASSTHROUGH, mknod_devices=False)


class BackendFactory(Protocol):
    def __call__(self, export: Path, *,
                 multidevs: str = "warn") -> Backend | Awaitable[Backend]: ...


@dataclass(frozen=True)
class BackendSpec:
    factory: BackendFactory
    caps: Caps


def local_backend(model: str) -> BackendFactory:
    """Factory for the local back end with security model *model*."""
    def build(export: Path, *, multidevs: str = "warn") -> Backend:
        return LocalBackend(str(export), model=make_model(model), multidevs=multidevs)
    return build


#: The back ends under test, by pytest id.
BACKENDS: dict[str, BackendSpec] = {
    "local-passthrough": BackendSpec(local_backend("passthrough"), PASSTHROUGH),
    "local-none": BackendSpec(local_backend("none"), NONE),
    "handle": BackendSpec(lambda export, **opts: HandleBackend(str(export), **opts), HANDLE),
    "local-mapped-xattr": BackendSpec(local_backend("mapped-xattr"), MAPPED_XATTR),
    "local-mapped-file": BackendSpec(local_backend("mapped-file"), MAPPED_FILE),
    "proxy": BackendSpec(start_proxy_backend, PROXY),
    "proxy-qemu-helper": BackendSpec(start_proxy_qemu_helper_backend,
                                     replace(PROXY, paths_past_path_max=False)),
}

#: A caller that is neither the server (root) nor anyone else in the tests.
CRED = Credentials(4321, 5432)


async def build_backend(spec: BackendSpec, export: Path, **options: Any) -> Backend:
    """A back end of *spec* serving *export*, started; the caller must close it."""
    built = spec.factory(export, **options)
    backend = await built if inspect.isawaitable(built) else built
    try:
        await backend.start()
    except BaseException:
        await backend.close()
        raise
    return backend


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def backend_spec(request: pytest.FixtureRequest) -> BackendSpec:
    return BACKENDS[request.param]


@pytest.fixture
def caps(backend_spec: BackendSpec) -> Caps:
    return backend_spec.caps


def _snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a confinement bug could change below *top* (not atime)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            data = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else None
            xattrs = {n: os.getxattr(path, n, follow_symlinks=False)
                      for n in os.listxattr(path, follow_symlinks=False)}
            out[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink,
                                               st.st_size, st.st_mtime_ns, st.st_ctime_ns, data,
                                               xattrs)
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A canary directory beside the export that no test may change."""
    canary = tmp_path / "outside"
    (canary / "sub").mkdir(parents=True)
    secret = canary / "secret"
    secret.write_bytes(b"canary data\n")
    secret.chmod(0o640)
    os.setxattr(secret, "user.canary", b"1")
    etc = os.stat("/etc")
    before = _snapshot(canary)
    yield canary
    assert _snapshot(canary) == before, "a test changed files outside the export"
    after = os.stat("/etc")
    assert (after.st_mode, after.st_uid, after.st_gid) == (etc.st_mode, etc.st_uid, etc.st_gid)


@pytest.fixture
def export(tmp_path: Path, outside: Path) -> Path:
    path = tmp_path / "export"
    path.mkdir()
    path.chmod(0o755)
    return path


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def make_backend(
        backend_spec: BackendSpec) -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    """Build back ends of the current kind (``await make_backend(dir, multidevs=…)``).

    All are closed at teardown, which then checks that no file descriptor
    outlived them.
    """
    built: list[Backend] = []
    fds = open_fd_count()

    async def make(export: Path, **options: Any) -> Backend:
        backend = await build_backend(backend_spec, export, **options)
        built.append(backend)
        return backend

    yield make
    for backend in reversed(built):
        await backend.close()
    assert open_fd_count() == fds, "the back end leaked file descriptors"


@pytest.fixture
async def backend(make_backend: Callable[..., Awaitable[Backend]], export: Path) -> Backend:
    """The back end under test, serving *export*."""
    return await make_backend(export)


class Fs:
    """Path-level conveniences over one attached back end.  Every node it
    hands out is clunked at teardown unless the test clunked it itself."""

    def __init__(self, backend: Backend, root: Node, export: Path) -> None:
        self.backend = backend
        self.root = root
        self.export = export
        self._live: dict[int, Node] = {}

    def host(self, path: str = "") -> Path:
        return self.export / path if path else self.export

    def track(self, node: Node) -> Node:
        self._live[id(node)] = node
        return node

    async def clunk(self, node: Node) -> None:
        self._live.pop(id(node), None)
        await self.backend.clunk(node)

    async def clunk_all(self) -> None:
        for node in list(self._live.values()):
            await self.clunk(node)

    async def walk(self, path: str = "", base: Node | None = None) -> Node:
        """A node for *path* (``a/b/c``); raises when any component fails."""
        names = [n for n in path.split("/") if n]
        qids, node = await self.backend.walk(self.root if base is None else base, names)
        assert node is not None, f"partial walk of {path!r}: {len(qids)} of {len(names)}"
        return self.track(node)

    async def open(self, path: str, flags: int = os.O_RDONLY) -> Node:
        node = await self.walk(path)
        await self.backend.open(node, flags)
        return node

    async def create(self, path: str, flags: int = os.O_RDWR, mode: int = 0o644,
                     cred: Credentials = CRED) -> Node:
        """Create and open *path*; its parent must exist."""
        parent, _, name = path.rpartition("/")
        node = await self.walk(parent)
        await self.backend.create(node, name, flags, mode, cred)
        return node

    async def getattr(self, target: str | Node) -> tuple[Qid, Stat]:
        if isinstance(target, str):
            node = await self.walk(target)
            try:
                return await self.backend.getattr(node)
            finally:
                await self.clunk(node)
        return await self.backend.getattr(target)

    async def write(self, node: Node, data: bytes, offset: int = 0) -> int:
        return await self.backend.write_from(node, offset, [memoryview(data)])

    async def read(self, node: Node, size: int, offset: int = 0) -> bytes:
        buf = bytearray(size)
        n = await self.backend.read_into(node, offset, [memoryview(buf)])
        return bytes(buf[:n])

    async def entries(self, node: Node, max_entries: int = 1000) -> list[DirEntry]:
        """Every entry of open directory *node*, following the returned cookies."""
        out: list[DirEntry] = []
        offset = 0
        while batch := await self.backend.readdir(node, offset, max_entries):
            out.extend(batch)
            offset = batch[-1].offset
        return out


@pytest.fixture
async def fs(backend: Backend, export: Path) -> AsyncIterator[Fs]:
    root, _ = await backend.attach("root", 0, "")
    helper = Fs(backend, root, export)
    helper.track(root)
    yield helper
    await helper.clunk_all()


Connect = Callable[..., Awaitable[Client]]  # connect(version=...) for another dialect


@pytest.fixture
async def connect(backend_spec: BackendSpec, export: Path,
                  serve: Callable[..., Awaitable[Any]]) -> Connect:
    """Clients of a server (client -> Session -> back end) on this test's back
    end (``serve``, from tests/conftest.py, closes the back end)."""
    served = await serve(backend=await build_backend(backend_spec, export))
    return served.connect


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path], Path]]:
    """Mount a fresh tmpfs on a directory (``tmpfs(path)``); unmounted at teardown.

    Skips when mounting is not allowed, except under CI=true where it fails.
    """
    mounted: list[Path] = []

    def mount(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "none", str(path)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            reason = f"cannot mount tmpfs: {res.stderr.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)
