"""Nothing a guest does through the export may reach outside it.

The export holds symlinks that point out of it (to ``/etc``, ``../..``, and
the canary directory ``outside`` next to the export, relatively and
absolutely).  The ``outside`` fixture fails any test after which the canary
changed, so every test here also proves that the target stayed untouched.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from ninep.backends.base import SetAttr
from ninep.protocol.ninep import QTSYMLINK

from .conftest import CRED, Caps, Fs

DIR_LINKS = ["etc", "up", "canary", "canary_abs"]
FILE_LINKS = ["secret", "secret_abs"]


@pytest.fixture
def escapes(fs: Fs, outside: Path) -> Fs:
    links = {"etc": "/etc", "up": "../..", "canary": "../outside", "canary_abs": str(outside),
             "secret": "../outside/secret", "secret_abs": str(outside / "secret"),
             "dangling": "../outside/new_file"}
    for name, target in links.items():
        fs.host(name).symlink_to(target)
    return fs


@pytest.mark.parametrize("link,inner", [("etc", "passwd"), ("up", "tmp"), ("canary", "secret"),
                                        ("canary_abs", "sub")])
async def test_walk_does_not_pass_through_escaping_symlink(escapes: Fs, link: str,
                                                           inner: str) -> None:
    qids, node = await escapes.backend.walk(escapes.root, [link, inner])
    assert node is None and [q.type for q in qids] == [QTSYMLINK]
    link_node = await escapes.walk(link)
    with pytest.raises(OSError) as exc:
        await escapes.backend.walk(link_node, [inner])
    assert exc.value.errno in (errno.ENOTDIR, errno.ENOENT)


@pytest.mark.parametrize("link", DIR_LINKS + FILE_LINKS + ["dangling"])
@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_RDWR | os.O_TRUNC, os.O_RDONLY | os.O_DIRECTORY])
async def test_open_of_escaping_symlink_fails(escapes: Fs, link: str, flags: int) -> None:
    with pytest.raises(OSError) as exc:
        await escapes.open(link, flags)
    assert exc.value.errno in (errno.ELOOP, errno.ENOTDIR)


@pytest.mark.parametrize("link", ["canary", "canary_abs", "secret", "secret_abs"])
@pytest.mark.parametrize("change", [SetAttr(mode=0o777), SetAttr(size=0), SetAttr(uid=CRED.uid,
                                    gid=CRED.gid), SetAttr(atime=(1, 0), mtime=(1, 0)),
                                    SetAttr(ctime=True)],
                         ids=["mode", "size", "owner", "times", "ctime"])
async def test_setattr_on_escaping_symlink_spares_target(escapes: Fs, link: str,
                                                         change: SetAttr) -> None:
    node = await escapes.walk(link)
    try:
        await escapes.backend.setattr(node, change)
    except OSError:
        pass  # refusing is fine; changing the link itself is fine; the target is checked
    assert stat.S_ISLNK((await escapes.backend.getattr(node))[1].mode)


@pytest.mark.parametrize("link", ["canary", "canary_abs", "secret", "secret_abs"])
async def test_xattrs_on_escaping_symlink_spare_target(escapes: Fs, link: str) -> None:
    node = await escapes.walk(link)
    with pytest.raises(OSError):
        await escapes.backend.xattr_get(node, "user.canary")
    for op in (escapes.backend.xattr_set(node, "user.canary", b"pwned", 0),
               escapes.backend.xattr_set(node, "user.new", b"pwned", 0),
               escapes.backend.xattr_remove(node, "user.canary")):
        try:
            await op
        except OSError:
            pass
    assert b"user.canary" not in await escapes.backend.xattr_list(node)


@pytest.mark.parametrize("link", ["canary", "canary_abs"])
async def test_directory_ops_through_escaping_symlink_fail(escapes: Fs, link: str) -> None:
    node = await escapes.walk(link)
    ops = [
        escapes.backend.mkdir(node, "x", 0o755, CRED),
        escapes.backend.symlink(node, "x", "y", CRED),
        escapes.backend.mknod(node, "x", stat.S_IFIFO | 0o600, 0, CRED),
        escapes.backend.unlinkat(node, "secret", False),
        escapes.backend.renameat(node, "secret", escapes.root, "stolen"),
        escapes.backend.renameat(escapes.root, "secret", node, "x"),
        escapes.backend.link(node, await escapes.walk("secret"), "x"),
        escapes.backend.create(node, "x", os.O_RDWR, 0o600, CRED),
    ]
    for op in ops:
        with pytest.raises(OSError) as exc:
            await op
        assert exc.value.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT)
    assert not escapes.host("stolen").exists()


async def test_create_over_dangling_escaping_symlink_fails(escapes: Fs, outside: Path) -> None:
    for flags in (os.O_RDWR, os.O_RDWR | os.O_TRUNC, os.O_WRONLY | os.O_EXCL):
        node = await escapes.walk("")
        with pytest.raises(OSError) as exc:
            await escapes.backend.create(node, "dangling", flags, 0o666, CRED)
        assert exc.value.errno in (errno.ELOOP, errno.EEXIST)
    assert not (outside / "new_file").exists()


async def test_namespace_ops_on_escaping_symlinks_touch_only_the_links(escapes: Fs) -> None:
    await escapes.backend.link(escapes.root, await escapes.walk("secret"), "secret2")
    assert os.readlink(escapes.host("secret2")) == "../outside/secret"
    await escapes.backend.renameat(escapes.root, "canary", escapes.root, "moved")
    await escapes.backend.unlinkat(escapes.root, "secret", False)
    node = await escapes.walk("canary_abs")
    await escapes.backend.remove(node)
    await escapes.clunk(node)
    assert escapes.host("moved").is_symlink() and not escapes.host("canary_abs").exists()


async def test_readdir_of_root_lists_links_as_links(escapes: Fs) -> None:
    node = await escapes.open("")
    entries = {e.name: e for e in await escapes.entries(node)}
    for name in DIR_LINKS + FILE_LINKS:
        assert entries[name.encode()].qid.type == QTSYMLINK
        assert entries[name.encode()].qid.path == os.lstat(escapes.host(name)).st_ino


async def test_directory_swapped_for_symlink_after_walk(escapes: Fs, caps: Caps) -> None:
    """A host process replaces a walked directory with an escaping symlink.

    A path-based node now crosses a symlink, so every use must be refused; a
    handle-based node still holds the original inodes and must act on them
    (now below ``a_old``).  Either way the canary stays untouched.
    """
    escapes.host("a/sub").mkdir(parents=True)
    escapes.host("a/secret").touch()
    a = await escapes.walk("a")
    sub = await escapes.walk("a/sub")
    secret = await escapes.walk("a/secret")
    os.rename(escapes.host("a"), escapes.host("a_old"))
    escapes.host("a").symlink_to("../outside")
    ops = {
        "getattr": escapes.backend.getattr(secret),
        "open": escapes.backend.open(secret, os.O_RDWR | os.O_TRUNC),
        "open-dir": escapes.backend.open(sub, os.O_RDONLY),
        "chmod": escapes.backend.setattr(secret, SetAttr(mode=0o777)),
        "truncate": escapes.backend.setattr(secret, SetAttr(size=0)),
        "chown": escapes.backend.setattr(secret, SetAttr(uid=CRED.uid)),
        "utimes": escapes.backend.setattr(secret, SetAttr(mtime=(1, 0))),
        "xattr_set": escapes.backend.xattr_set(secret, "user.x", b"v", 0),
        "mkdir": escapes.backend.mkdir(sub, "x", 0o755, CRED),
        "walk": escapes.backend.walk(a, ["secret"]),
        "create": escapes.backend.create(a, "new", os.O_RDWR, 0o600, CRED),  # a becomes "new"
        "remove": escapes.backend.remove(secret),
    }
    for name, op in ops.items():
        try:
            result: Any = await op
        except OSError as exc:
            assert caps.nodes_are_paths, f"{name} refused on a handle-based node"
            assert exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT), name
        else:
            assert not caps.nodes_are_paths, f"{name} went through a swapped directory"
            if name == "getattr":
                assert result[0].path == os.stat(escapes.host("a_old/secret")).st_ino
            if name == "walk":
                escapes.track(result[1])
    for node in (secret, sub):  # what still must fail either way
        with pytest.raises(OSError):
            await escapes.backend.xattr_get(node, "user.canary")
        with pytest.raises(OSError):
            await escapes.backend.readlink(node)
    if not caps.nodes_are_paths:
        assert escapes.host("a_old/new").exists() and escapes.host("a_old/sub/x").is_dir()


async def test_host_hard_link_to_outside_file_is_served(fs: Fs, tmp_path: Path) -> None:
    """Documented limit: a hard link made on the host cannot be told from the
    file it links; the export serves it like any file (as QEMU does)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"linked in by the host")
    os.link(elsewhere, fs.host("hard"))
    node = await fs.open("hard", os.O_RDWR)
    qid, st = await fs.backend.getattr(node)
    assert st.nlink == 2 and qid.path == os.stat(elsewhere).st_ino
    assert await fs.read(node, 100) == b"linked in by the host"
    await fs.write(node, b"LINKED")
    assert elsewhere.read_bytes() == b"LINKED in by the host"
