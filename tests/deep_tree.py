"""A directory chain deeper than PATH_MAX on the host, built and read one
component at a time (no host path string that long could reach a syscall)."""

from __future__ import annotations

import os
from pathlib import Path


def _descend(fd: int, segment: str | bytes, depth: int, create: bool) -> int:
    """The O_PATH fd *depth* levels of *segment* below *fd* (which it closes)."""
    try:
        for _ in range(depth):
            if create:
                os.mkdir(segment, 0o755, dir_fd=fd)
            nfd = os.open(segment, os.O_PATH, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_deep(top: Path, segment: str | bytes, depth: int) -> None:
    """mkdir *top*/segment/segment/... *depth* levels deep."""
    os.close(_descend(os.open(top, os.O_PATH), segment, depth, create=True))


def deep_lstat(top: Path, segment: str | bytes, depth: int, name: str | bytes) -> os.stat_result:
    """lstat of *name* at the bottom of a chain :func:`make_deep` made."""
    fd = _descend(os.open(top, os.O_PATH), segment, depth, create=False)
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)
