"""Every operation on entries whose path inside the export is past PATH_MAX.

The POSIX suite creates, chmods, chowns, links, renames, truncates... files
under a 32-component, ~4,000-byte path; below the export's own directories
that is more than PATH_MAX.  The guest's kernel accepts such paths (it walks
them one component at a time), and so must every back end.  Only QEMU's
proxy helper, which hands each whole path to one syscall, refuses them.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from deep_tree import deep_lstat, make_deep
from ninep.backends.base import Node, SetAttr

from .conftest import CRED, Caps, Fs

SEGMENT = "p" * 130
DEPTH = 32  # 32 * 131 bytes: the suite's ~4,000 bytes, plus a little export prefix
PATH_MAX = 4096


async def _deep_dir(fs: Fs) -> Node:
    make_deep(fs.export, SEGMENT, DEPTH)
    assert DEPTH * (len(SEGMENT) + 1) > PATH_MAX
    return await fs.walk("/".join([SEGMENT] * DEPTH))


async def test_every_operation_past_path_max(fs: Fs, caps: Caps) -> None:
    if not caps.paths_past_path_max:
        make_deep(fs.export, SEGMENT, DEPTH)
        above = await fs.walk("/".join([SEGMENT] * (DEPTH - 1)))  # 4061 bytes: still fits
        with pytest.raises(OSError) as exc:
            await fs.walk(SEGMENT, base=above)
        assert exc.value.errno == errno.ENAMETOOLONG
        return
    be = fs.backend
    deep = await _deep_dir(fs)

    async def here(name: str) -> Node:
        return await fs.walk(name, base=deep)

    made = fs.track((await be.walk(deep, []))[1])
    await be.create(made, "file", os.O_RDWR, 0o644, CRED)
    assert await fs.write(made, b"deep data") == 9
    await fs.clunk(made)

    node = await here("file")
    await be.setattr(node, SetAttr(mode=0o640))
    await be.setattr(node, SetAttr(uid=4321, gid=5432))
    await be.setattr(node, SetAttr(size=4))
    await be.setattr(node, SetAttr(atime=(1, 0), mtime=(2, 500)))
    _, st = await be.getattr(node)
    assert (stat.S_IMODE(st.mode), st.uid, st.gid, st.size, st.mtime_ns) == \
        (0o640, 4321, 5432, 4, 2_000_000_500)
    await be.xattr_set(node, "user.deep", b"v", 0)
    assert await be.xattr_get(node, "user.deep") == b"v"
    await be.open(node, os.O_RDONLY)
    assert await fs.read(node, 100) == b"deep"

    await be.link(deep, node, "hard")
    await be.renameat(deep, "hard", fs.root, "top")  # out of the depths, and back
    await be.renameat(fs.root, "top", deep, "back")
    assert deep_lstat(fs.export, SEGMENT, DEPTH, "back").st_nlink == 2
    await be.mkdir(deep, "dir", 0o751, CRED)
    await be.mknod(deep, "fifo", stat.S_IFIFO | 0o640, 0, CRED)
    await be.symlink(deep, "sym", "file", CRED)
    assert await be.readlink(await here("sym")) == "file"
    _, dst = await be.getattr(await here("dir"))
    _, fst = await be.getattr(await here("fifo"))
    assert stat.S_ISDIR(dst.mode) and stat.S_IMODE(dst.mode) == 0o751
    assert stat.S_ISFIFO(fst.mode)

    listing = await be.walk(deep, [])
    await be.open(fs.track(listing[1]), os.O_RDONLY | os.O_DIRECTORY)
    names = {os.fsdecode(e.name) for e in await fs.entries(listing[1])}
    assert {"file", "back", "dir", "fifo", "sym"} <= names
    await be.remove(await here("back"))
    await be.unlinkat(deep, "dir", True)
    for name in ("fifo", "sym", "file"):
        await be.unlinkat(deep, name, False)
    assert not ({"file", "back", "dir", "fifo", "sym"} & {
        os.fsdecode(e.name) for e in await fs.entries(listing[1])})
