"""Back-end factories for the proxy back end in the shared suite (see conftest.py).

Each factory returns a :class:`~ninep.backends.proxy.ProxyBackend` whose
``start()`` starts a helper on the test's export; ``close()`` stops the
helper again.  Their Caps (``PROXY`` in conftest.py) are passthrough's
but for devices: see the comment there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ninep.backends.proxy import ProxyBackend

QEMU_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"


def require(ok: bool, reason: str) -> None:
    """Skip without what a helper needs; under CI=true that is a failure."""
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def start_proxy_backend(export: Path, *, multidevs: str = "warn") -> ProxyBackend:
    """Our ninep-proxy-helper (one process, ``-s``) with a pool of 4 connections."""
    require(os.geteuid() == 0, "a proxy helper needs root (chroot, capabilities)")
    return ProxyBackend.spawn(str(export), multidevs=multidevs, threads=4)


def start_proxy_qemu_helper_backend(export: Path, *, multidevs: str = "warn") -> ProxyBackend:
    """QEMU's virtfs-proxy-helper, which serves one connection and then exits: one
    helper per pooled connection, each on a socketpair (``-f``)."""
    require(os.geteuid() == 0, "a proxy helper needs root (chroot, capabilities)")
    require(os.access(QEMU_HELPER, os.X_OK),
             f"{QEMU_HELPER} is not installed (Debian package qemu-system-common)")
    return ProxyBackend.spawn(str(export), [QEMU_HELPER], per_connection=True,
                              multidevs=multidevs, threads=4)
