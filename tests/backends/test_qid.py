"""QidMapper on its own: remap prefixes, forbid, warn-once under threads."""

from __future__ import annotations

import errno
import logging
import threading

import pytest

from ninep.backends.qid import QidMapper

ROOT_DEV = 7


def test_remap_prefixes_other_devices_and_high_inodes() -> None:
    qids = QidMapper(ROOT_DEV, "remap")
    assert qids.path(ROOT_DEV, 5) == 5
    other = qids.path(8, 5)
    high = qids.path(ROOT_DEV, (1 << 48) | 5)
    assert len({5, other, high}) == 3
    assert qids.path(8, 5) == other  # stable
    assert all(p < 1 << 64 for p in (other, high))


def test_remap_prefix_exhaustion_is_enfile_and_stays_so() -> None:
    qids = QidMapper(ROOT_DEV, "remap")
    for dev in range(1, 1 << 16):  # the root device holds prefix 0
        qids.path(ROOT_DEV + dev, 1)
    for _ in range(2):
        with pytest.raises(OSError) as exc:
            qids.path(10**9, 1)
        assert exc.value.errno == errno.ENFILE


def test_forbid_only_refuses_other_devices() -> None:
    qids = QidMapper(ROOT_DEV, "forbid")
    assert qids.path(ROOT_DEV, 42) == 42
    with pytest.raises(OSError) as exc:
        qids.path(ROOT_DEV + 1, 42)
    assert exc.value.errno == errno.ENODEV


def test_warn_logs_once_even_from_racing_threads(caplog: pytest.LogCaptureFixture) -> None:
    qids = QidMapper(ROOT_DEV, "warn")
    start = threading.Barrier(8)

    def lookups() -> None:
        start.wait()
        for ino in range(200):
            assert qids.path(ROOT_DEV + 1, ino) == ino

    with caplog.at_level(logging.WARNING, logger="ninep.qid"):
        threads = [threading.Thread(target=lookups) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(caplog.records) == 1
