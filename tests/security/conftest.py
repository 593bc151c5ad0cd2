"""The export-escape rig: an export full of traps next to a canary tree.

Every test gets a fresh rig, served over the stream transport to a tapped
test client, once with openat2 confinement and once with the per-component
O_NOFOLLOW fallback.  Teardown is the real assertion of every attack: the
canary is byte-for-byte unchanged, no reply carried canary content, no probe
file appeared outside, the server still answers, and every fid and fd the
attack made was released.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ninep import syscalls
from ninep.backends.local import LocalBackend, make_model
from ninep.backends.local.secmodel import SecurityModel
from ninep.client import Client
from ninep.protocol import ninep as p

from .harness import (PROBE, Canary, InProcessServer, connect, fd_count, loop_errors,
                      pytest_exception_interact, pytest_runtest_protocol, rpc, serve_inprocess)

INSIDE = b"inside data\n"
# The hang guard: a test that hangs aborts the run with every thread's stack.
__all__ = ["pytest_exception_interact", "pytest_runtest_protocol"]


@dataclass
class EscapeRig:
    base: Path
    export: Path
    canary: Canary
    server: InProcessServer
    client: Client
    root: int

    @property
    def outside(self) -> Path:
        return self.canary.root

    async def walk(self, *names: str) -> int:
        """A new fid for *names* below the root (must walk all the way)."""
        return await self.client.walk(self.root, list(names))

    async def try_walk(self, *names: str) -> p.Rwalk | OSError:
        fid = self.client.new_fid()
        try:
            reply = await rpc(self.client, p.Twalk(self.root, fid, list(names)))
        except OSError as exc:
            return exc
        if len(reply.wqids) == len(names):
            await self.client.clunk(fid)
        return reply

    def assert_no_canary_qids(self, qids: list[p.Qid]) -> None:
        """No qid names an inode of the canary tree (or the export's parent)."""
        hit = [q for q in qids if q.path in self.canary.inodes]
        assert not hit, f"walk reached outside the export: {hit}"


def build_export(base: Path, outside: Path) -> Path:
    """The export: plain files plus symlinks that point out of it in every way."""
    export = base / "export"
    export.mkdir()
    (export / "file.txt").write_bytes(INSIDE)
    (export / "dir").mkdir()
    for name in ("inner.txt", "secret.txt"):
        (export / "dir" / name).write_bytes(INSIDE)
    links = {
        "link_out_dir": "../outside",
        "link_out_abs": str(outside),
        "link_out_file": str(outside / "secret.txt"),
        "link_out_rel_file": "../outside/secret.txt",
        "up": "..",
        "dangling": str(outside / PROBE),
        "dangling_rel": f"../outside/{PROBE}2",
    }
    for name, target in links.items():
        os.symlink(target, export / name)
    return export


@pytest.fixture(params=["openat2", "nofollow-walk"])
def resolution(request: pytest.FixtureRequest) -> bool:
    """Which confinement the local back end uses to reach a parent directory."""
    if request.param == "openat2":
        if not syscalls.have_openat2():
            pytest.skip("kernel has no openat2")
        return True
    return False


@contextlib.asynccontextmanager
async def open_rig(tmp_path: Path, use_openat2: bool,
                   model: SecurityModel | None = None) -> AsyncIterator[EscapeRig]:
    """Build, serve and connect a rig; on exit check the attack left no trace."""
    base = tmp_path / "rig"
    base.mkdir()
    canary = Canary.plant(base)
    export = build_export(base, canary.root)
    fds_before = fd_count()
    backend = LocalBackend(str(export), model=model, use_openat2=use_openat2, threads=4)
    with loop_errors() as errors:
        async with serve_inprocess(export, backend=backend) as server:
            client = await connect(server.socket_path)
            root = await client.attach()
            canary.arm()
            rig = EscapeRig(base, export, canary, server, client, root)
            try:
                yield rig
                # The attack is over: the server must still be serving.
                await rpc(client, p.Tgetattr(root, p.GETATTR_BASIC))
            finally:
                await client.close()
            await server.wait_idle()
            assert server.live_nodes() == 0, "fids survived the end of their session"
            leaks = client.reader.leaks  # type: ignore[attr-defined]
            assert leaks == [], "a reply carried canary content"
            canary.assert_intact()
    assert errors == [], f"unhandled errors in the event loop: {errors}"
    assert fd_count() == fds_before, "the server leaked file descriptors"


@pytest.fixture
async def rig(tmp_path: Path, resolution: bool) -> AsyncIterator[EscapeRig]:
    async with open_rig(tmp_path, resolution) as rig:
        yield rig


@contextlib.asynccontextmanager
async def _mapped(tmp_path: Path, model: str) -> AsyncIterator[EscapeRig]:
    async with open_rig(tmp_path, syscalls.have_openat2(), make_model(model)) as rig:
        yield rig


@pytest.fixture(params=["mapped-file", "mapped-xattr"])
async def mapped_rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[EscapeRig]:
    """The rig served with a mapped security model (openat2 confinement if available)."""
    async with _mapped(tmp_path, request.param) as rig:
        yield rig


@pytest.fixture
async def mapped_file_rig(tmp_path: Path) -> AsyncIterator[EscapeRig]:
    async with _mapped(tmp_path, "mapped-file") as rig:
        yield rig


@pytest.fixture
async def mapped_xattr_rig(tmp_path: Path) -> AsyncIterator[EscapeRig]:
    async with _mapped(tmp_path, "mapped-xattr") as rig:
        yield rig
