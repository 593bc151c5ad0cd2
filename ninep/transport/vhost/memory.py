"""Guest memory as the vhost-user front end shares it: mmap'd regions, bounds-checked.

The front end (QEMU) sends one file descriptor per RAM region together with
three coordinates: the guest-physical address (gpa) the guest driver uses in
descriptors, the front end's own virtual address (uva) that ring addresses
arrive in, and the offset of the region inside the fd.  :class:`GuestMemory`
maps each fd and turns either kind of address into memoryviews over the
mapping, never a byte outside a region.

Why memoryviews: a Tread's ``os.preadv`` and a Twrite's ``os.pwritev`` then
work on guest memory directly.  And why it is safe to unmap: CPython refuses
``mmap.close()`` while any view is alive, so :meth:`GuestMemory.close` unmaps
what nobody uses and leaves the rest to be unmapped by the mmap object itself
when the last view of it goes away.  No code path holds a raw pointer, so no
access can outlive its mapping.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from dataclasses import dataclass

log = logging.getLogger("ninep.vhost.memory")

#: One region as vhost-user describes it: gpa, size, uva, mmap offset.
REGION = struct.Struct("<QQQQ")
_U64_MAX = (1 << 64) - 1


class GuestMemoryError(Exception):
    """An address range that no mapped region covers (or a bad region)."""


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """Where a region lives for the guest (gpa), the front end (uva) and in its fd."""

    gpa: int
    size: int
    uva: int
    mmap_offset: int

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> MemoryRegion:
        return cls(*REGION.unpack_from(data, offset))

    def pack(self) -> bytes:
        return REGION.pack(self.gpa, self.size, self.uva, self.mmap_offset)

    def same_as(self, other: MemoryRegion) -> bool:
        """REM_MEM_REG identity: guest address, user address and size (not the offset)."""
        return (self.gpa, self.size, self.uva) == (other.gpa, other.size, other.uva)


class MappedRegion:
    """One region's mapping and a view over exactly its bytes."""

    __slots__ = ("region", "_mmap", "view")

    def __init__(self, region: MemoryRegion, fd: int) -> None:
        if region.size <= 0:
            raise GuestMemoryError("memory region of size 0")
        if region.gpa + region.size - 1 > _U64_MAX or region.uva + region.size - 1 > _U64_MAX:
            raise GuestMemoryError("memory region wraps around the address space")
        page = _mapping_granularity(fd)
        start = region.mmap_offset - region.mmap_offset % page
        skip = region.mmap_offset - start
        length = skip + region.size
        if page > mmap.ALLOCATIONGRANULARITY:  # hugetlbfs wants whole huge pages
            length = -(-length // page) * page
        try:
            self._mmap: mmap.mmap | None = mmap.mmap(
                fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                offset=start)
        except (OSError, ValueError, OverflowError) as exc:
            raise GuestMemoryError(f"cannot map region gpa={region.gpa:#x} size={region.size:#x} "
                                   f"offset={region.mmap_offset:#x}: {exc}") from None
        self.region = region
        self.view: memoryview | None = memoryview(self._mmap)[skip:skip + region.size]

    def close(self) -> bool:
        """Unmap now if no view is exported; True if it was unmapped now.

        Otherwise the mmap object unmaps itself when its last view is released,
        so a request still running keeps valid memory until it finishes.
        """
        view, self.view = self.view, None
        if view is not None:
            try:
                view.release()
            except BufferError:  # exported by a call in progress; it lets go on return
                pass
        mm, self._mmap = self._mmap, None
        if mm is None:
            return True
        try:
            mm.close()
            return True
        except BufferError:
            log.debug("region gpa=%#x still has views in use; unmapping when they are released",
                      self.region.gpa)
            return False


def _mapping_granularity(fd: int) -> int:
    """The alignment mmap needs for this fd (the huge page size on hugetlbfs)."""
    try:
        bsize = os.fstatvfs(fd).f_bsize
    except OSError:
        bsize = 0
    if bsize > mmap.ALLOCATIONGRANULARITY and bsize & (bsize - 1) == 0:
        return bsize
    return mmap.ALLOCATIONGRANULARITY


class GuestMemory:
    """The front end's memory table: translate gpa/uva ranges to memoryviews.

    Every translation is checked against the region bounds; a range not
    entirely inside mapped memory raises :class:`GuestMemoryError`.  A
    guest-physical range may span adjacent regions (it then yields one view per
    region), a ring (uva) must lie within one region.
    """

    #: How many regions ADD_MEM_REG may build up (GET_MAX_MEM_SLOTS).
    MAX_REGIONS = 32

    def __init__(self) -> None:
        self._regions: list[MappedRegion] = []
        #: (gpa, end, view) per region, for locate() on the chain-walking hot path
        self._spans: list[tuple[int, int, memoryview]] = []

    def _index(self) -> None:
        self._spans = [(m.region.gpa, m.region.gpa + m.region.size, m.view)
                       for m in self._regions if m.view is not None]

    # --- building the table ---------------------------------------------------------------

    def add(self, region: MemoryRegion, fd: int) -> None:
        """Map *region* from *fd*.  The caller keeps (and closes) *fd*."""
        if len(self._regions) >= self.MAX_REGIONS:
            raise GuestMemoryError(f"more than {self.MAX_REGIONS} memory regions")
        for other in self._regions:
            o = other.region
            if region.gpa < o.gpa + o.size and o.gpa < region.gpa + region.size:
                raise GuestMemoryError(f"region gpa={region.gpa:#x} overlaps gpa={o.gpa:#x}")
            if region.uva < o.uva + o.size and o.uva < region.uva + region.size:
                raise GuestMemoryError(f"region uva={region.uva:#x} overlaps uva={o.uva:#x}")
        self._regions.append(MappedRegion(region, fd))
        self._regions.sort(key=lambda r: r.region.gpa)
        self._index()

    def remove(self, region: MemoryRegion) -> bool:
        """Unmap the region with the same gpa, uva and size; False if there is none."""
        for i, mapped in enumerate(self._regions):
            if mapped.region.same_as(region):
                del self._regions[i]
                self._index()
                mapped.close()
                return True
        return False

    def close(self) -> bool:
        """Forget every region (unmapping each as soon as no view of it is in use).

        True if every region was unmapped now, False if some view still holds one.
        """
        regions, self._regions = self._regions, []
        self._spans = []
        return all([mapped.close() for mapped in regions])

    @property
    def regions(self) -> list[MemoryRegion]:
        return [m.region for m in self._regions]

    def __len__(self) -> int:
        return len(self._regions)

    # --- translation -------------------------------------------------------------------

    def gpa_views(self, addr: int, length: int) -> list[memoryview]:
        """Views covering guest-physical ``[addr, addr+length)``, split at region ends."""
        if length == 0:
            return []
        if addr < 0 or length < 0 or addr + length - 1 > _U64_MAX:
            raise GuestMemoryError(f"guest range {addr:#x}+{length:#x} overflows")
        out: list[memoryview] = []
        while length:
            mapped = self._find_gpa(addr)
            r = mapped.region
            start = addr - r.gpa
            take = min(length, r.size - start)
            out.append(mapped.view[start:start + take])  # type: ignore[index]
            addr += take
            length -= take
        return out

    def locate(self, addr: int) -> tuple[int, int, memoryview]:
        """The region holding guest-physical *addr*: its gpa, its end and a view of it.

        For callers that cut many ranges from one region (a descriptor chain):
        they check ``addr + length <= end`` themselves and slice the view.
        """
        for start, end, view in self._spans:
            if start <= addr < end:
                return start, end, view
        raise GuestMemoryError(f"guest address {addr:#x} is not in guest memory")

    def gpa_view(self, addr: int, length: int) -> memoryview:
        """One view of guest-physical ``[addr, addr+length)``; it must lie in one region."""
        if addr < 0 or length < 0:
            raise GuestMemoryError(f"guest range {addr:#x}+{length:#x} is negative")
        mapped = self._find_gpa(addr)
        r = mapped.region
        start = addr - r.gpa
        if length > r.size - start:
            raise GuestMemoryError(f"guest range {addr:#x}+{length:#x} leaves its region")
        return mapped.view[start:start + length]  # type: ignore[index]

    def uva_view(self, addr: int, length: int) -> memoryview:
        """One view of front-end virtual ``[addr, addr+length)`` (ring addresses)."""
        if addr < 0 or length < 0:
            raise GuestMemoryError(f"user range {addr:#x}+{length:#x} is negative")
        for mapped in self._regions:
            r = mapped.region
            if r.uva <= addr < r.uva + r.size:
                start = addr - r.uva
                if length > r.size - start:
                    raise GuestMemoryError(f"user range {addr:#x}+{length:#x} leaves its region")
                return mapped.view[start:start + length]  # type: ignore[index]
        raise GuestMemoryError(f"user address {addr:#x} is not in guest memory")

    def _find_gpa(self, addr: int) -> MappedRegion:
        for mapped in self._regions:
            r = mapped.region
            if r.gpa <= addr < r.gpa + r.size:
                return mapped
        raise GuestMemoryError(f"guest address {addr:#x} is not in guest memory")


__all__ = ["GuestMemory", "GuestMemoryError", "MemoryRegion", "MappedRegion", "REGION"]
