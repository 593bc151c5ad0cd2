"""rename (Trename), renameat, unlinkat, remove."""

from __future__ import annotations

import errno
import os

import pytest

from .conftest import Fs


async def ino(fs: Fs, node: object) -> int:
    return (await fs.backend.getattr(node))[0].path


# --- Trename ---------------------------------------------------------------------------------

async def test_rename_node_stays_valid(fs: Fs) -> None:
    fs.host("d").mkdir()
    fs.host("f").write_bytes(b"data")
    node = await fs.walk("f")
    dnode = await fs.walk("d")
    await fs.backend.rename(node, dnode, "g")
    assert not fs.host("f").exists() and fs.host("d/g").read_bytes() == b"data"
    assert await ino(fs, node) == os.stat(fs.host("d/g")).st_ino
    await fs.backend.open(node, os.O_RDONLY)  # opens the file at its new place
    assert await fs.read(node, 10) == b"data"


async def test_rename_directory_repoints_nodes_below(fs: Fs) -> None:
    fs.host("dir/a/sub").mkdir(parents=True)
    fs.host("dir/a/file").write_bytes(b"inner")
    fs.host("dir/ab").mkdir()  # a name sharing the prefix "a" must not move
    fs.host("dir/ab/file").write_bytes(b"other")
    a = await fs.walk("dir/a")
    inner = await fs.walk("dir/a/file")
    sub = await fs.walk("dir/a/sub")
    other = await fs.walk("dir/ab/file")
    await fs.backend.rename(a, await fs.walk("dir"), "b")
    assert await ino(fs, inner) == os.stat(fs.host("dir/b/file")).st_ino
    assert await ino(fs, a) == os.stat(fs.host("dir/b")).st_ino
    assert await ino(fs, other) == os.stat(fs.host("dir/ab/file")).st_ino
    await fs.backend.open(inner, os.O_RDONLY)
    assert await fs.read(inner, 10) == b"inner"
    qids, node = await fs.backend.walk(sub, ["..", "file"])
    assert node is not None
    fs.track(node)
    assert qids[-1].path == os.stat(fs.host("dir/b/file")).st_ino


async def test_rename_root_refused(fs: Fs) -> None:
    with pytest.raises(OSError):
        await fs.backend.rename(fs.root, fs.root, "x")


# --- renameat --------------------------------------------------------------------------------

async def test_renameat_over_existing_file(fs: Fs) -> None:
    fs.host("src").write_bytes(b"new")
    fs.host("dst").write_bytes(b"old")
    node = await fs.walk("src")
    await fs.backend.renameat(fs.root, "src", fs.root, "dst")
    assert not fs.host("src").exists() and fs.host("dst").read_bytes() == b"new"
    assert await ino(fs, node) == os.stat(fs.host("dst")).st_ino


async def test_renameat_directory_across_directories(fs: Fs) -> None:
    fs.host("x/moved/deep").mkdir(parents=True)
    fs.host("x/moved/deep/f").write_bytes(b"f")
    fs.host("y").mkdir()
    deep = await fs.walk("x/moved/deep/f")
    await fs.backend.renameat(await fs.walk("x"), "moved", await fs.walk("y"), "here")
    assert not fs.host("x/moved").exists()
    assert fs.host("y/here/deep/f").read_bytes() == b"f"
    assert await ino(fs, deep) == os.stat(fs.host("y/here/deep/f")).st_ino


async def test_renameat_directory_over_empty_directory(fs: Fs) -> None:
    fs.host("a").mkdir()
    fs.host("a/f").touch()
    fs.host("b").mkdir()
    await fs.backend.renameat(fs.root, "a", fs.root, "b")
    assert fs.host("b/f").exists() and not fs.host("a").exists()


@pytest.mark.parametrize("src,dst,err", [
    ("dir", "full", errno.ENOTEMPTY),
    ("file", "dir", errno.EISDIR),
    ("dir", "file", errno.ENOTDIR),
    ("missing", "x", errno.ENOENT),
    ("dir", "dir/inside", errno.EINVAL),
])
async def test_renameat_errors(fs: Fs, src: str, dst: str, err: int) -> None:
    fs.host("dir").mkdir()
    fs.host("full").mkdir()
    fs.host("full/f").touch()
    fs.host("file").touch()
    newdir, _, newname = dst.rpartition("/")
    with pytest.raises(OSError) as exc:
        await fs.backend.renameat(fs.root, src, await fs.walk(newdir), newname)
    allowed = {err, errno.EEXIST} if err == errno.ENOTEMPTY else {err}  # rename(2) allows both
    assert exc.value.errno in allowed
    assert sorted(os.listdir(fs.export)) == ["dir", "file", "full"]


# --- unlinkat / remove -----------------------------------------------------------------------

async def test_unlinkat_file_and_dir(fs: Fs) -> None:
    fs.host("f").touch()
    fs.host("d").mkdir()
    await fs.backend.unlinkat(fs.root, "f", False)
    await fs.backend.unlinkat(fs.root, "d", True)
    assert os.listdir(fs.export) == []


@pytest.mark.parametrize("name,rmdir,err", [
    ("d", False, errno.EISDIR),
    ("f", True, errno.ENOTDIR),
    ("full", True, errno.ENOTEMPTY),
    ("missing", False, errno.ENOENT),
    ("missing", True, errno.ENOENT),
])
async def test_unlinkat_errors(fs: Fs, name: str, rmdir: bool, err: int) -> None:
    fs.host("f").touch()
    fs.host("d").mkdir()
    fs.host("full").mkdir()
    fs.host("full/x").touch()
    with pytest.raises(OSError) as exc:
        await fs.backend.unlinkat(fs.root, name, rmdir)
    assert exc.value.errno == err
    assert sorted(os.listdir(fs.export)) == ["d", "f", "full"]


async def test_unlinkat_symlink_removes_only_link(fs: Fs) -> None:
    fs.host("d").mkdir()
    fs.host("ln").symlink_to("d")
    await fs.backend.unlinkat(fs.root, "ln", False)
    assert os.listdir(fs.export) == ["d"]


async def test_remove_file_dir_symlink(fs: Fs) -> None:
    fs.host("f").touch()
    fs.host("d").mkdir()
    fs.host("ln").symlink_to("f")
    for name in ("ln", "d"):
        node = await fs.walk(name)
        await fs.backend.remove(node)
        await fs.clunk(node)
    assert os.listdir(fs.export) == ["f"]


async def test_remove_nonempty_dir_and_root_fail(fs: Fs) -> None:
    fs.host("full").mkdir()
    fs.host("full/x").touch()
    with pytest.raises(OSError) as exc:
        await fs.backend.remove(await fs.walk("full"))
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError):
        await fs.backend.remove(fs.root)
    assert fs.host("full/x").exists()
