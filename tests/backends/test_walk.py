"""attach, walk, clone and clunk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ninep.backends.base import Backend
from ninep.protocol.ninep import QTDIR, QTFILE, QTSYMLINK

from .conftest import BackendSpec, Fs, build_backend, open_fd_count


@pytest.fixture
def tree(fs: Fs) -> Fs:
    """export/a/b/file, export/top, export/link -> a (a symlink to a directory)."""
    (fs.host("a/b")).mkdir(parents=True)
    fs.host("a/b/file").write_bytes(b"x")
    fs.host("top").write_bytes(b"t")
    fs.host("link").symlink_to("a")
    return fs


async def test_attach_gives_root_dir_qid(backend: Backend, fs: Fs) -> None:
    node, qid = await backend.attach("someone", 1000, "")
    fs.track(node)
    assert qid.type == QTDIR
    assert qid.path == os.stat(fs.export).st_ino
    assert qid == (await backend.getattr(fs.root))[0]


async def test_walk_multi_component(tree: Fs) -> None:
    qids, node = await tree.backend.walk(tree.root, ["a", "b", "file"])
    assert node is not None
    tree.track(node)
    assert [q.type for q in qids] == [QTDIR, QTDIR, QTFILE]
    assert [q.path for q in qids] == [os.stat(tree.host(p)).st_ino for p in ("a", "a/b", "a/b/file")]
    assert (await tree.backend.getattr(node))[0] == qids[-1]


async def test_walk_first_name_missing_raises_enoent(tree: Fs) -> None:
    with pytest.raises(FileNotFoundError):
        await tree.backend.walk(tree.root, ["nope", "b"])


async def test_partial_walk_returns_prefix_qids_and_no_node(tree: Fs) -> None:
    qids, node = await tree.backend.walk(tree.root, ["a", "b", "missing", "x"])
    assert node is None
    assert len(qids) == 2


async def test_dotdot_at_root_stays_root(tree: Fs) -> None:
    root_qid = (await tree.backend.getattr(tree.root))[0]
    qids, node = await tree.backend.walk(tree.root, ["..", "..", "a", "..", ".."])
    assert node is not None
    tree.track(node)
    assert qids[0] == qids[1] == qids[4] == root_qid
    assert qids[2].path == os.stat(tree.host("a")).st_ino
    assert (await tree.backend.getattr(node))[0] == root_qid


async def test_dot_and_dotdot_inside(tree: Fs) -> None:
    qids, node = await tree.backend.walk(tree.root, ["a", "b", ".", "..", "b", "file"])
    assert node is not None
    tree.track(node)
    ino = lambda p: os.stat(tree.host(p)).st_ino  # noqa: E731
    assert [q.path for q in qids] == [ino("a"), ino("a/b"), ino("a/b"), ino("a"), ino("a/b"),
                                      ino("a/b/file")]


async def test_walk_from_a_file_fails_enotdir(tree: Fs) -> None:
    node = await tree.walk("top")
    for names in (["x"], ["."], [".."]):
        with pytest.raises(NotADirectoryError):
            await tree.backend.walk(node, names)
    qids, none = await tree.backend.walk(tree.root, ["top", "x"])
    assert none is None and len(qids) == 1


async def test_walk_does_not_follow_symlink_component(tree: Fs) -> None:
    qids, node = await tree.backend.walk(tree.root, ["link", "b"])
    assert node is None
    assert [q.type for q in qids] == [QTSYMLINK]
    link = await tree.walk("link")
    with pytest.raises(OSError) as exc:
        await tree.backend.walk(link, ["b"])
    assert exc.value.errno in (errno.ENOTDIR, errno.ENOENT)


async def test_walk_to_symlink_itself_is_the_link(tree: Fs) -> None:
    link = await tree.walk("link")
    qid, st = await tree.backend.getattr(link)
    assert qid.type == QTSYMLINK
    assert qid.path == os.lstat(tree.host("link")).st_ino != os.stat(tree.host("a")).st_ino
    assert await tree.backend.readlink(link) == "a"


async def test_clone_is_independent(tree: Fs) -> None:
    a = await tree.walk("a")
    qids, clone = await tree.backend.walk(a, [])
    assert qids == [] and clone is not None and clone is not a
    tree.track(clone)
    await tree.clunk(a)
    assert (await tree.backend.getattr(clone))[0].path == os.stat(tree.host("a")).st_ino
    qids, deeper = await tree.backend.walk(clone, ["b"])
    assert deeper is not None
    tree.track(deeper)


async def test_clone_of_open_node_is_not_open(tree: Fs) -> None:
    node = await tree.open("top")
    _, clone = await tree.backend.walk(node, [])
    tree.track(clone)
    await tree.backend.open(clone, os.O_RDONLY)  # would fail if it shared the fd state
    assert await tree.read(clone, 10) == b"t"


async def test_clunk_releases_fds(tree: Fs) -> None:
    before = open_fd_count()
    nodes = [await tree.open("top") for _ in range(5)]
    nodes += [await tree.open("a/b", os.O_RDONLY | os.O_DIRECTORY) for _ in range(3)]
    assert open_fd_count() >= before + len(nodes)
    for node in nodes:
        await tree.clunk(node)
    assert open_fd_count() == before


async def test_walk_and_failed_walk_leak_no_fd(tree: Fs) -> None:
    before = open_fd_count()
    for _ in range(3):
        node = await tree.walk("a/b/file")
        await tree.clunk(node)
        await tree.backend.walk(tree.root, ["a", "missing"])
        with pytest.raises(OSError):
            await tree.backend.walk(tree.root, ["missing"])
    assert open_fd_count() == before


async def test_close_releases_nodes_never_clunked(backend_spec: BackendSpec, tmp_path: Path) -> None:
    """A session that dies without clunking must not leak the fds of its fids."""
    export = tmp_path / "other_export"
    (export / "d").mkdir(parents=True)
    (export / "f").write_bytes(b"x")
    before = open_fd_count()
    backend = await build_backend(backend_spec, export)
    root, _ = await backend.attach("root", 0, "")
    fid_table = [root]  # what a session still holds when its connection drops
    for path, flags in ((["f"], os.O_RDWR), (["d"], os.O_RDONLY), ([], os.O_RDONLY)):
        _, node = await backend.walk(root, path)
        await backend.open(node, flags)
        fid_table.append(node)
    await backend.close()
    assert open_fd_count() == before
