"""readdir: cookies, paging, qids of entries, `..` at the root."""

from __future__ import annotations

import errno
import os
from collections import Counter

import pytest

from .conftest import Caps, Fs

DT_UNKNOWN, DT_DIR, DT_REG, DT_LNK, DT_FIFO = 0, 4, 8, 10, 1


@pytest.fixture
def many(fs: Fs) -> list[bytes]:
    """1000 entries in export/big; returns every name readdir must yield."""
    return _linked_entries(fs, "big", [f"entry-{i:04d}-{'x' * (i % 40)}" for i in range(1000)])


def _linked_entries(fs: Fs, dirname: str, names: list[str]) -> list[bytes]:
    """Directory *dirname* holding *names* (hard links to one file: cheap to make,
    and still one directory entry each); returns every name readdir must yield."""
    fs.host(dirname).mkdir()
    dfd = os.open(fs.host(dirname), os.O_PATH | os.O_DIRECTORY)
    try:
        os.close(os.open(names[0], os.O_CREAT | os.O_WRONLY, dir_fd=dfd))
        for name in names[1:]:
            os.link(names[0], name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)
    return [b".", b"..", *(n.encode() for n in names)]


@pytest.mark.parametrize("max_entries", [1, 7, 1000, 5000])
async def test_paging_yields_every_entry_exactly_once(fs: Fs, many: list[bytes],
                                                      max_entries: int) -> None:
    node = await fs.open("big")
    entries = await fs.entries(node, max_entries)
    counts = Counter(e.name for e in entries)
    assert sorted(counts) == sorted(many)
    assert set(counts.values()) == {1}


async def test_a_large_request_takes_the_whole_directory_at_once(fs: Fs) -> None:
    """A Treaddir of a full msize (~21000 entries' room) gets a 2000-entry
    directory (~180 KiB of host dirents) in one call, not a 64 KiB getdents64's
    worth: listing it is one round trip."""
    expected = _linked_entries(fs, "wide", [f"{i:04d}-{'y' * 60}" for i in range(2000)])
    node = await fs.open("wide")
    batch = await fs.backend.readdir(node, 0, 21000)
    assert sorted(e.name for e in batch) == sorted(expected)
    assert await fs.backend.readdir(node, batch[-1].offset, 21000) == []


async def test_batches_respect_max_entries(fs: Fs, many: list[bytes]) -> None:
    node = await fs.open("big")
    offset = 0
    sizes = []
    while batch := await fs.backend.readdir(node, offset, 7):
        sizes.append(len(batch))
        offset = batch[-1].offset
    assert max(sizes) <= 7 and sum(sizes) == len(many)
    assert await fs.backend.readdir(node, offset, 7) == []


async def test_cookies_are_stable(fs: Fs, many: list[bytes]) -> None:
    node = await fs.open("big")
    first = await fs.backend.readdir(node, 0, 50)
    middle = first[24].offset
    again = await fs.backend.readdir(node, middle, 10)
    assert again == first[25:35]
    other = await fs.open("big")  # another open file description sees the same cookies
    assert await fs.backend.readdir(other, middle, 10) == again
    assert await fs.entries(node) == await fs.entries(other)


async def test_entry_qids_and_types(fs: Fs, caps: Caps) -> None:
    fs.host("d/sub").mkdir(parents=True)
    fs.host("d/file").touch()
    fs.host("d/ln").symlink_to("file")
    os.mkfifo(fs.host("d/fifo"))
    node = await fs.open("d")
    by_name = {e.name: e for e in await fs.entries(node)}
    assert set(by_name) == {b".", b"..", b"sub", b"file", b"ln", b"fifo"}
    host_types = {b".": DT_DIR, b"..": DT_DIR, b"sub": DT_DIR, b"file": DT_REG, b"ln": DT_LNK,
                  b"fifo": DT_FIFO}
    expected = host_types if caps.host_file_types else dict.fromkeys(host_types, DT_UNKNOWN)
    assert {n: e.type for n, e in by_name.items()} == expected
    for name in ("sub", "file", "ln", "fifo"):
        entry = by_name[name.encode()]
        qid = (await fs.getattr(f"d/{name}"))[0]
        assert (entry.qid.type, entry.qid.path) == (qid.type, qid.path)
    assert by_name[b"."].qid.path == (await fs.backend.getattr(node))[0].path
    assert by_name[b".."].qid.path == (await fs.backend.getattr(fs.root))[0].path


async def test_dotdot_at_root_does_not_reveal_parent(fs: Fs) -> None:
    fs.host("f").touch()
    node = await fs.open("")
    root_qid = (await fs.backend.getattr(fs.root))[0]
    entries = {e.name: e for e in await fs.entries(node)}
    assert entries[b".."].qid.path == root_qid.path == entries[b"."].qid.path
    assert entries[b".."].qid.path != os.stat(fs.export.parent).st_ino


async def test_empty_directory_has_dot_entries_only(fs: Fs) -> None:
    fs.host("e").mkdir()
    node = await fs.open("e")
    assert sorted(e.name for e in await fs.entries(node)) == [b".", b".."]


async def test_readdir_needs_an_open_directory(fs: Fs) -> None:
    fs.host("d").mkdir()
    fs.host("f").touch()
    with pytest.raises(OSError) as exc:
        await fs.backend.readdir(await fs.walk("d"), 0, 10)
    assert exc.value.errno == errno.EBADF
    with pytest.raises(OSError) as exc:
        await fs.backend.readdir(await fs.open("f"), 0, 10)
    assert exc.value.errno == errno.ENOTDIR


async def test_readdir_sees_later_changes_after_rewind(fs: Fs) -> None:
    fs.host("d").mkdir()
    node = await fs.open("d")
    assert len(await fs.entries(node)) == 2
    fs.host("d/new").touch()
    assert b"new" in {e.name for e in await fs.entries(node)}
