"""Byte-range locks (open-file-description semantics) and getlock."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ninep.backends.base import LockResult, Node
from ninep.protocol import ninep as p
from ninep.protocol.ninep import (LOCK_BLOCKED, LOCK_SUCCESS, LOCK_TYPE_RDLCK, LOCK_TYPE_UNLCK,
                                  LOCK_TYPE_WRLCK)

from .conftest import Fs

RD, WR, UN = LOCK_TYPE_RDLCK, LOCK_TYPE_WRLCK, LOCK_TYPE_UNLCK


@pytest.fixture
async def pair(fs: Fs) -> tuple[Node, Node]:
    """Two nodes (two guest opens) on the same file."""
    fs.host("f").write_bytes(b"x" * 100)
    return await fs.open("f", os.O_RDWR), await fs.open("f", os.O_RDWR)


async def lock(fs: Fs, node: Node, ltype: int, start: int = 0, length: int = 0) -> int:
    return await fs.backend.lock(node, ltype, start, length, 1, "client")


def assert_encodable(res: LockResult) -> None:
    """Whatever getlock returns must fit the Rgetlock wire format."""
    p.encode(p.Rgetlock(*res), 1)


async def test_write_lock_blocks_other_open(fs: Fs, pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert await lock(fs, a, WR) == LOCK_SUCCESS
    assert await lock(fs, b, WR) == LOCK_BLOCKED
    assert await lock(fs, b, RD, 50, 1) == LOCK_BLOCKED
    res = await fs.backend.getlock(b, WR, 0, 0, 2, "other")
    assert_encodable(res)
    assert (res.type, res.start, res.length) == (WR, 0, 0)
    assert await lock(fs, a, WR) == LOCK_SUCCESS  # an owner may re-take its own lock


async def test_getlock_reports_conflicting_range(fs: Fs, pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert await lock(fs, a, WR, 10, 10) == LOCK_SUCCESS
    res = await fs.backend.getlock(b, RD, 0, 100, 2, "other")
    assert_encodable(res)
    assert (res.type, res.start, res.length) == (WR, 10, 10)
    assert await lock(fs, b, WR, 20, 10) == LOCK_SUCCESS  # adjacent, no overlap
    assert await lock(fs, b, WR, 0, 10) == LOCK_SUCCESS
    assert await lock(fs, b, WR, 19, 2) == LOCK_BLOCKED


async def test_getlock_without_conflict_is_unlck(fs: Fs, pair: tuple[Node, Node]) -> None:
    a, b = pair
    await lock(fs, a, WR, 0, 10)
    res = await fs.backend.getlock(b, WR, 10, 5, 7, "me")
    assert_encodable(res)
    assert res.type == UN
    res = await fs.backend.getlock(a, WR, 0, 10, 7, "me")  # own locks never conflict
    assert res.type == UN


async def test_unlock_lets_other_lock(fs: Fs, pair: tuple[Node, Node]) -> None:
    a, b = pair
    await lock(fs, a, WR, 0, 50)
    assert await lock(fs, b, WR, 0, 50) == LOCK_BLOCKED
    assert await lock(fs, a, UN, 0, 25) == LOCK_SUCCESS
    assert await lock(fs, b, WR, 0, 25) == LOCK_SUCCESS
    assert await lock(fs, b, WR, 25, 1) == LOCK_BLOCKED
    assert await lock(fs, a, UN) == LOCK_SUCCESS
    assert await lock(fs, b, WR, 0, 50) == LOCK_SUCCESS


async def test_clunk_releases_locks(fs: Fs, pair: tuple[Node, Node]) -> None:
    a, b = pair
    await lock(fs, a, WR)
    assert await lock(fs, b, WR) == LOCK_BLOCKED
    await fs.clunk(a)
    assert await lock(fs, b, WR) == LOCK_SUCCESS


async def test_read_locks_share(fs: Fs, pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert await lock(fs, a, RD) == LOCK_SUCCESS
    assert await lock(fs, b, RD) == LOCK_SUCCESS
    assert await lock(fs, b, WR) == LOCK_BLOCKED
    res = await fs.backend.getlock(b, WR, 0, 0, 2, "")
    assert res.type == RD
    assert (await fs.backend.getlock(b, RD, 0, 0, 2, "")).type == UN


async def test_lock_upgrade_and_downgrade_on_one_node(fs: Fs, pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert await lock(fs, a, RD) == LOCK_SUCCESS
    assert await lock(fs, a, WR) == LOCK_SUCCESS
    assert await lock(fs, b, RD) == LOCK_BLOCKED
    assert await lock(fs, a, RD) == LOCK_SUCCESS
    assert await lock(fs, b, RD) == LOCK_SUCCESS


async def test_write_lock_on_read_only_open_is_ebadf(fs: Fs) -> None:
    fs.host("f").touch()
    node = await fs.open("f", os.O_RDONLY)
    with pytest.raises(OSError) as exc:
        await lock(fs, node, WR)
    assert exc.value.errno == errno.EBADF
    assert await lock(fs, node, RD) == LOCK_SUCCESS


async def test_lock_on_unopened_node_is_ebadf(fs: Fs) -> None:
    fs.host("f").touch()
    node = await fs.walk("f")
    with pytest.raises(OSError) as exc:
        await lock(fs, node, RD)
    assert exc.value.errno == errno.EBADF


@pytest.mark.parametrize("start,length", [(2**63, 0), (0, 2**64 - 1), (2**64 - 1, 1)])
async def test_out_of_range_lock_is_einval(fs: Fs, pair: tuple[Node, Node], start: int,
                                           length: int) -> None:
    a, _ = pair
    for op in (fs.backend.lock(a, WR, start, length, 1, ""),
               fs.backend.getlock(a, WR, start, length, 1, "")):
        with pytest.raises(OSError) as exc:
            await op
        assert exc.value.errno in (errno.EINVAL, errno.EOVERFLOW)


# --- against a host process ------------------------------------------------------------------

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 10, 5)  # bytes 5..14
print("locked", flush=True)
sys.stdin.readline()
"""

PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print("blocked")
else:
    print("acquired")
"""


@pytest.fixture
def host_holder(fs: Fs) -> Iterator[subprocess.Popen[str]]:
    """A host process holding a POSIX write lock on bytes 5..14 of export/f."""
    fs.host("f").write_bytes(b"x" * 100)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(fs.host("f"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    yield proc
    proc.communicate("")


def probe(path: object) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


async def test_host_process_sees_guest_lock(fs: Fs, pair: tuple[Node, Node]) -> None:
    a, _ = pair
    assert probe(fs.host("f")) == "acquired"
    await lock(fs, a, WR, 0, 1)
    assert probe(fs.host("f")) == "blocked"
    await lock(fs, a, UN, 0, 1)
    assert probe(fs.host("f")) == "acquired"


async def test_guest_sees_host_process_lock(fs: Fs, host_holder: subprocess.Popen[str]) -> None:
    node = await fs.open("f", os.O_RDWR)
    assert await lock(fs, node, WR, 0, 6) == LOCK_BLOCKED
    assert await lock(fs, node, WR, 0, 5) == LOCK_SUCCESS
    res = await fs.backend.getlock(node, RD, 0, 0, 9, "me")
    assert_encodable(res)
    assert (res.type, res.start, res.length, res.proc_id) == (WR, 5, 10, host_holder.pid)
    host_holder.communicate("")
    assert await lock(fs, node, WR, 0, 0) == LOCK_SUCCESS
