"""A pytest plugin: run a suite with fds named as under ``--sandbox chroot``.

The chroot itself needs a separate process; this keeps the test process's
root and switches only what chroot mode switches in fd naming: the working
directory becomes /proc/self/fd and ``fdnames.fd_path`` returns ``"N"``.
Used by test_chroot.py with ``-p tests.sandbox.fd_names_from_cwd``.
"""

from __future__ import annotations

import os

import pytest

from ninep import fdnames


def pytest_sessionstart(session: pytest.Session) -> None:
    fd_dir = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(fd_dir)
    finally:
        os.close(fd_dir)
    fdnames.name_fds_from_cwd()
    if fdnames.fd_path(5) != "5":
        raise pytest.UsageError("fd_path does not name fds relative to the working directory")
