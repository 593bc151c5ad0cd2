"""An export spanning two file systems (QEMU's multidevs=remap|forbid|warn).

The export is itself a fresh tmpfs with another fresh tmpfs mounted on
``sub``.  Fresh tmpfs instances number their inodes from the same small
values, so raw inode numbers collide between the two, which is exactly what
``remap`` must hide.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ninep.backends.base import Backend, Node

from .conftest import Caps, Fs

FILES = [f"f{i}" for i in range(8)]


@pytest.fixture
def two_devices(tmp_path: Path, tmpfs: Callable[[Path], Path], caps: Caps) -> Path:
    if not caps.multidevs:
        pytest.skip("back end has no multidevs option")
    top = tmpfs(tmp_path / "mdev")
    (top / "sub").mkdir()
    tmpfs(top / "sub")
    for name in FILES:
        (top / name).write_bytes(b"top")
        (top / "sub" / name).write_bytes(b"sub")
    assert os.stat(top).st_dev != os.stat(top / "sub").st_dev
    return top


MakeFs = Callable[[str], Awaitable[Fs]]


@pytest.fixture
async def make_fs(two_devices: Path,
                  make_backend: Callable[..., Awaitable[Backend]]) -> AsyncIterator[MakeFs]:
    """``await make_fs(mode)``: an attached back end on the two-device export."""
    made: list[Fs] = []

    async def make(mode: str) -> Fs:
        backend = await make_backend(two_devices, multidevs=mode)
        root, _ = await backend.attach("root", 0, "")
        fs = Fs(backend, root, two_devices)
        fs.track(root)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        await fs.clunk_all()


async def qid_paths(fs: Fs, node: Node, prefix: str) -> dict[str, int]:
    """qid.path of every file in a directory, by walk and by readdir (which must agree)."""
    walked = {}
    for name in FILES:
        walked[name] = (await fs.getattr(f"{prefix}{name}"))[0].path
    listed = {e.name.decode(): e.qid.path for e in await fs.entries(node)
              if e.name.decode() in FILES}
    assert listed == walked
    return walked


async def test_raw_inode_numbers_do_collide(two_devices: Path) -> None:
    """The premise of the other tests."""
    top = {os.stat(two_devices / n).st_ino for n in FILES}
    sub = {os.stat(two_devices / "sub" / n).st_ino for n in FILES}
    assert top & sub


async def test_remap_keeps_qid_paths_unique(make_fs: MakeFs) -> None:
    fs = await make_fs("remap")
    top_dir = await fs.open("")
    sub_dir = await fs.open("sub")
    top = await qid_paths(fs, top_dir, "")
    sub = await qid_paths(fs, sub_dir, "sub/")
    all_paths = [*top.values(), *sub.values(),
                 (await fs.getattr(""))[0].path, (await fs.getattr("sub"))[0].path]
    assert len(set(all_paths)) == len(all_paths)
    entries = {e.name: e.qid.path for e in await fs.entries(sub_dir)}
    assert entries[b"."] == (await fs.getattr("sub"))[0].path
    assert entries[b".."] == (await fs.getattr(""))[0].path


async def test_remap_is_stable_across_lookups(make_fs: MakeFs) -> None:
    fs = await make_fs("remap")
    first = (await fs.getattr("sub/f3"))[0].path
    await fs.getattr("f3")
    assert (await fs.getattr("sub/f3"))[0].path == first


async def test_forbid_refuses_other_device(make_fs: MakeFs) -> None:
    fs = await make_fs("forbid")
    assert (await fs.getattr("f1"))[0].path == os.stat(fs.host("f1")).st_ino
    with pytest.raises(OSError) as exc:
        await fs.backend.walk(fs.root, ["sub"])
    assert exc.value.errno == errno.ENODEV
    qids, node = await fs.backend.walk(fs.root, [".", "sub", "f1"])
    assert node is None and len(qids) == 1


async def test_warn_serves_and_logs_once(make_fs: MakeFs, caplog: pytest.LogCaptureFixture) -> None:
    fs = await make_fs("warn")
    with caplog.at_level(logging.WARNING):
        assert (await fs.getattr("f1"))[0].path == os.stat(fs.host("f1")).st_ino
        assert not caplog.records
        for name in FILES:
            path = (await fs.getattr(f"sub/{name}"))[0].path
            assert path == os.stat(fs.host(f"sub/{name}")).st_ino
        node = await fs.open("sub")
        await fs.entries(node)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "remap" in warnings[0].getMessage()
