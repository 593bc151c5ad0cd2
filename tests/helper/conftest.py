"""Fixtures for the proxy-helper tests (the machinery is in proxy_helper_support.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_helper_support import Helper, make_tree  # noqa: E402

if os.geteuid() != 0:  # chroot, capabilities, fsuid switching
    pytest.skip("the proxy helper tests need root", allow_module_level=True)


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


@pytest.fixture(params=["socket", "fd"])
def helper(request, tree):
    h = Helper(tree[0], request.param)
    yield h
    h.stop()
    assert "Traceback" not in h.stderr(), h.stderr()


@pytest.fixture
def client(helper):
    c = helper.connect()
    yield c
    c.close()


@pytest.fixture
def socket_helper(tree):
    h = Helper(tree[0], "socket")
    yield h
    h.stop()
    assert "Traceback" not in h.stderr(), h.stderr()
