"""Fixtures for the dispatcher tests: a back end whose calls can be held at a
gate (to keep requests in flight without timing anything), an in-process
sink for talking to a Session directly, and an export with user xattrs."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from session_helpers import Direct, GatedBackend

from ninep.backends.local import LocalBackend
from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import Session, SessionConfig


@pytest.fixture
def gated(export: Path) -> GatedBackend:
    return GatedBackend(str(export))


@pytest.fixture
async def direct(export: Path) -> Any:
    """A Session over a LocalBackend on ``export``, attached as fid 0."""
    backend = LocalBackend(str(export), threads=4)
    session = Session(backend, SessionConfig())
    d = Direct(session)
    await d.ok(p.Tattach(0, p.NOFID, "root", "", 0))
    yield d
    await session.close()
    await backend.close()


def _supports_user_xattrs(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()


@pytest.fixture
def xattr_export(export: Path) -> Iterator[Path]:
    """``export`` if its file system takes user.* xattrs, else a dir under /var/tmp."""
    if _supports_user_xattrs(export):
        yield export
        return
    path = Path(tempfile.mkdtemp(prefix="ninep-xattr-", dir="/var/tmp"))
    try:
        if not _supports_user_xattrs(path):
            pytest.skip("no file system here takes user.* xattrs")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def rlerror(client: Client, msg: Any) -> int:
    """Send *msg*, expect Rlerror, return its errno."""
    with pytest.raises(OSError) as info:
        await client.rpc(msg)
    return info.value.errno


@pytest.fixture
def expect_errno() -> Callable[..., Any]:
    return rlerror
