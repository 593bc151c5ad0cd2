"""Extended attributes: user.* get/set/list/remove and their errors."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import pytest

from ninep.backends.base import Node

from .conftest import Fs

Target = Callable[[Fs], Awaitable[tuple[Node, str]]]


async def closed_file(fs: Fs) -> tuple[Node, str]:
    fs.host("f").touch()
    return await fs.walk("f"), "f"


async def open_file(fs: Fs) -> tuple[Node, str]:
    fs.host("f").touch()
    return await fs.open("f", os.O_RDONLY), "f"


async def open_dir(fs: Fs) -> tuple[Node, str]:
    fs.host("d").mkdir()
    return await fs.open("d", os.O_RDONLY), "d"


async def root_dir(fs: Fs) -> tuple[Node, str]:
    return fs.root, ""


@pytest.fixture(params=[closed_file, open_file, open_dir, root_dir],
                ids=["closed-file", "open-file", "open-dir", "root"])
def target(request: pytest.FixtureRequest) -> Target:
    return request.param


def names(raw: bytes) -> set[str]:
    assert raw == b"" or raw.endswith(b"\0")
    return {n.decode() for n in raw.split(b"\0") if n}


async def test_set_get_list_remove(fs: Fs, target: Target) -> None:
    node, path = await target(fs)
    await fs.backend.xattr_set(node, "user.one", b"1", 0)
    await fs.backend.xattr_set(node, "user.two", b"\0binary\xff", 0)
    await fs.backend.xattr_set(node, "user.empty", b"", 0)
    assert await fs.backend.xattr_get(node, "user.two") == b"\0binary\xff"
    assert await fs.backend.xattr_get(node, "user.empty") == b""
    assert {"user.one", "user.two", "user.empty"} <= names(await fs.backend.xattr_list(node))
    assert os.getxattr(fs.host(path), "user.one") == b"1"  # stored on the file itself
    await fs.backend.xattr_remove(node, "user.one")
    assert "user.one" not in names(await fs.backend.xattr_list(node))
    with pytest.raises(OSError) as exc:
        await fs.backend.xattr_get(node, "user.one")
    assert exc.value.errno == errno.ENODATA


async def test_replace_value(fs: Fs, target: Target) -> None:
    node, _ = await target(fs)
    await fs.backend.xattr_set(node, "user.k", b"first", 0)
    await fs.backend.xattr_set(node, "user.k", b"2nd", 0)
    assert await fs.backend.xattr_get(node, "user.k") == b"2nd"


async def test_create_and_replace_flags(fs: Fs, target: Target) -> None:
    node, _ = await target(fs)
    with pytest.raises(OSError) as exc:
        await fs.backend.xattr_set(node, "user.k", b"v", os.XATTR_REPLACE)
    assert exc.value.errno == errno.ENODATA
    await fs.backend.xattr_set(node, "user.k", b"v", os.XATTR_CREATE)
    with pytest.raises(FileExistsError):
        await fs.backend.xattr_set(node, "user.k", b"w", os.XATTR_CREATE)
    await fs.backend.xattr_set(node, "user.k", b"w", os.XATTR_REPLACE)
    assert await fs.backend.xattr_get(node, "user.k") == b"w"


async def test_missing_attribute_is_enodata(fs: Fs, target: Target) -> None:
    node, _ = await target(fs)
    for op in (fs.backend.xattr_get(node, "user.missing"),
               fs.backend.xattr_remove(node, "user.missing")):
        with pytest.raises(OSError) as exc:
            await op
        assert exc.value.errno == errno.ENODATA


async def test_list_of_bare_file_has_no_user_names(fs: Fs) -> None:
    node, _ = await closed_file(fs)
    assert not {n for n in names(await fs.backend.xattr_list(node)) if n.startswith("user.")}


async def test_xattr_of_vanished_file_is_enoent(fs: Fs) -> None:
    node, path = await closed_file(fs)
    os.unlink(fs.host(path))
    with pytest.raises(FileNotFoundError):
        await fs.backend.xattr_get(node, "user.x")
    with pytest.raises(FileNotFoundError):
        await fs.backend.xattr_set(node, "user.x", b"v", 0)
