"""qid.path allocation across host devices (QEMU's ``multidevs`` option)."""

from __future__ import annotations

import errno
import logging
import threading

from ..protocol.ninep import Qid
from .base import Stat, qid_type, qid_version

log = logging.getLogger("ninep.qid")

MULTIDEVS_CHOICES = ("remap", "forbid", "warn")
_INO_BITS = 48
_INO_MASK = (1 << _INO_BITS) - 1


class QidMapper:
    """Turns (st_dev, st_ino) into a qid.path that is unique within the export.

    * ``warn`` (QEMU's default): qid.path is the inode number; the first file
      seen on another device is logged once, since paths may then collide.
    * ``forbid``: files on another device than the export root get ENODEV.
    * ``remap``: each (device, high inode bits) pair gets a 16-bit prefix, so
      paths stay unique when the export spans several file systems.
    """

    def __init__(self, root_dev: int, mode: str = "warn") -> None:
        if mode not in MULTIDEVS_CHOICES:
            raise ValueError(f"--multidevs must be one of {', '.join(MULTIDEVS_CHOICES)}, "
                             f"not {mode!r}")
        self.root_dev = root_dev
        self.mode = mode
        self._prefixes: dict[tuple[int, int], int] = {(root_dev, 0): 0}
        self._lock = threading.Lock()
        self._warned = False

    def path(self, dev: int, ino: int) -> int:
        if self.mode == "remap":
            key = (dev, ino >> _INO_BITS)
            prefix = self._prefixes.get(key)
            if prefix is None:
                prefix = self._new_prefix(key)
            return (prefix << _INO_BITS) | (ino & _INO_MASK)
        if dev != self.root_dev:
            if self.mode == "forbid":
                raise OSError(errno.ENODEV, "file on another device (multidevs=forbid)")
            if not self._warned and self._first_warning():
                log.warning("export spans several devices; qid paths may collide "
                            "(use --multidevs remap)")
        return ino

    def _new_prefix(self, key: tuple[int, int]) -> int:
        """Allocate the next prefix, never one that would overflow 64 bits."""
        with self._lock:
            prefix = self._prefixes.get(key)
            if prefix is None:
                if len(self._prefixes) >= 1 << (64 - _INO_BITS):
                    raise OSError(errno.ENFILE, "qid path prefixes exhausted")
                prefix = self._prefixes[key] = len(self._prefixes)
        return prefix

    def _first_warning(self) -> bool:
        """True for exactly one caller, even when worker threads race here."""
        with self._lock:
            first, self._warned = not self._warned, True
        return first

    def qid(self, st: Stat) -> Qid:
        return Qid(qid_type(st.mode), qid_version(st), self.path(st.dev, st.ino))
