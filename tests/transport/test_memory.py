"""GuestMemory: mapping regions with offsets, translating gpa/uva, bounds, unmapping."""

from __future__ import annotations

import mmap
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ninep.transport.vhost.memory import GuestMemory, GuestMemoryError, MemoryRegion

MIB = 1 << 20


@pytest.fixture
def memfd():
    fd = os.memfd_create("test-guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4 * MIB)
    with mmap.mmap(fd, 4 * MIB) as mm:
        # Every 4-byte word holds its own file offset, so a view shows where it points.
        for off in range(0, 4 * MIB, 4096):
            mm[off:off + 4] = off.to_bytes(4, "little")
        mm.flush()
    yield fd
    os.close(fd)


def file_bytes(fd: int, offset: int, length: int) -> bytes:
    return os.pread(fd, length, offset)


def mapped_bytes(name: str) -> int:
    """How many bytes of this process's address space map the memfd called *name*."""
    total = 0
    for line in open("/proc/self/maps"):
        if name in line:
            lo, hi = line.split()[0].split("-")
            total += int(hi, 16) - int(lo, 16)
    return total


def two_regions(fd: int) -> GuestMemory:
    mem = GuestMemory()
    # gpa-adjacent, uva far apart, file offsets crossed over (region 0 is the file's 2nd MiB).
    mem.add(MemoryRegion(gpa=0, size=MIB, uva=0x7F0000000000, mmap_offset=MIB), fd)
    mem.add(MemoryRegion(gpa=MIB, size=MIB, uva=0x7E0000000000, mmap_offset=0), fd)
    return mem


def test_gpa_and_uva_translate_through_the_mmap_offset(memfd):
    mem = two_regions(memfd)
    view = mem.gpa_view(0x1000, 8)
    assert bytes(view[:4]) == (MIB + 0x1000).to_bytes(4, "little")
    assert bytes(mem.uva_view(0x7E0000000000 + 0x3000, 4)) == (0x3000).to_bytes(4, "little")
    # Writes land in the file at the translated place.
    mem.gpa_view(MIB + 0x2004, 4)[:] = b"abcd"
    assert file_bytes(memfd, 0x2004, 4) == b"abcd"
    mem.close()


def test_unaligned_mmap_offset(memfd):
    mem = GuestMemory()
    mem.add(MemoryRegion(gpa=0x100000, size=0x3000, uva=0x5000_0000, mmap_offset=0x1800), memfd)
    os.pwrite(memfd, b"XY", 0x1800)
    assert bytes(mem.gpa_view(0x100000, 2)) == b"XY"
    assert bytes(mem.uva_view(0x5000_0000, 2)) == b"XY"
    with pytest.raises(GuestMemoryError):
        mem.gpa_view(0x100000 + 0x3000 - 1, 2)
    mem.close()


def test_a_guest_range_spanning_regions_splits(memfd):
    mem = two_regions(memfd)
    views = mem.gpa_views(MIB - 8, 16)
    assert [len(v) for v in views] == [8, 8]
    assert bytes(views[1][:4]) == (0).to_bytes(4, "little")
    with pytest.raises(GuestMemoryError):
        mem.gpa_view(MIB - 8, 16)  # one contiguous view cannot span
    with pytest.raises(GuestMemoryError):
        mem.uva_view(0x7F0000000000 + MIB - 8, 16)  # neither can a ring
    mem.close()


@pytest.mark.parametrize("addr,length", [
    (2 * MIB, 1),  # just past the end
    (2 * MIB - 1, 2),  # straddles the end
    ((1 << 64) - 8, 16),  # wraps the 64-bit space
    (0, (1 << 64)),  # absurd length
    (-1, 4),
])
def test_out_of_range_guest_addresses_raise(memfd, addr, length):
    mem = two_regions(memfd)
    with pytest.raises(GuestMemoryError):
        mem.gpa_views(addr, length)
    with pytest.raises(GuestMemoryError):
        mem.gpa_view(addr, length)
    mem.close()


def test_uva_outside_every_region(memfd):
    mem = two_regions(memfd)
    with pytest.raises(GuestMemoryError):
        mem.uva_view(0, 4)  # a gpa is not a uva
    with pytest.raises(GuestMemoryError):
        mem.uva_view(0x7F0000000000 + MIB, 4)
    mem.close()


def test_bad_regions_are_refused(memfd):
    mem = two_regions(memfd)
    with pytest.raises(GuestMemoryError, match="overlaps"):
        mem.add(MemoryRegion(gpa=MIB // 2, size=4096, uva=0x1000, mmap_offset=0), memfd)
    with pytest.raises(GuestMemoryError, match="overlaps"):
        mem.add(MemoryRegion(gpa=8 * MIB, size=4096, uva=0x7F0000000000, mmap_offset=0), memfd)
    with pytest.raises(GuestMemoryError, match="size 0"):
        mem.add(MemoryRegion(gpa=8 * MIB, size=0, uva=0x1000, mmap_offset=0), memfd)
    with pytest.raises(GuestMemoryError, match="cannot map"):  # beyond the end of the file
        mem.add(MemoryRegion(gpa=8 * MIB, size=8 * MIB, uva=0x1000, mmap_offset=0), memfd)
    r, w = os.pipe()
    try:
        with pytest.raises(GuestMemoryError, match="cannot map"):
            mem.add(MemoryRegion(gpa=8 * MIB, size=4096, uva=0x1000, mmap_offset=0), r)
    finally:
        os.close(r)
        os.close(w)
    assert len(mem) == 2
    mem.close()


def test_remove_region_by_gpa_uva_and_size(memfd):
    mem = two_regions(memfd)
    assert not mem.remove(MemoryRegion(gpa=0, size=MIB, uva=0x1234, mmap_offset=MIB))
    assert mem.remove(MemoryRegion(gpa=0, size=MIB, uva=0x7F0000000000, mmap_offset=999))
    with pytest.raises(GuestMemoryError):
        mem.gpa_view(0, 4)
    assert bytes(mem.gpa_view(MIB, 4)) == (0).to_bytes(4, "little")
    mem.close()


def test_close_keeps_a_view_in_use_valid_until_released(memfd):
    """Unmapping must never pull memory from under a request still using it."""
    mem = two_regions(memfd)
    in_flight = mem.gpa_view(0x10, 4)
    assert mapped_bytes("test-guest-ram") == 2 * MIB
    mem.close()
    in_flight[:] = b"late"  # still mapped: no crash, and the write reaches the file
    assert file_bytes(memfd, MIB + 0x10, 4) == b"late"
    assert mapped_bytes("test-guest-ram") == MIB  # the unused region is gone already
    in_flight.release()
    del in_flight
    assert mapped_bytes("test-guest-ram") == 0
    with pytest.raises(GuestMemoryError):
        mem.gpa_view(0x10, 4)


def test_region_limit(memfd):
    mem = GuestMemory()
    for i in range(GuestMemory.MAX_REGIONS):
        mem.add(MemoryRegion(gpa=i * 4096, size=4096, uva=0x10_0000 + i * 4096,
                             mmap_offset=i * 4096), memfd)
    with pytest.raises(GuestMemoryError, match="more than"):
        mem.add(MemoryRegion(gpa=1 << 40, size=4096, uva=1 << 41, mmap_offset=0), memfd)
    mem.close()


_MEM_SIZE = 2 * MIB


@settings(max_examples=300, deadline=None)
@given(addr=st.integers(min_value=-16, max_value=_MEM_SIZE + 64)
       | st.integers(min_value=0, max_value=(1 << 64) + 10),
       length=st.integers(min_value=0, max_value=_MEM_SIZE + 64)
       | st.integers(min_value=0, max_value=1 << 65))
def test_translation_matches_a_model(addr, length):
    """Either the views hold exactly the model's bytes, or the range is rejected."""
    fd = os.memfd_create("prop-ram", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, _MEM_SIZE)
        pattern = bytes(range(251)) * (_MEM_SIZE // 251 + 1)
        os.pwrite(fd, pattern[:_MEM_SIZE], 0)
        mem = two_regions(fd)
        inside = 0 <= addr and length >= 0 and addr + length <= _MEM_SIZE
        try:
            views = mem.gpa_views(addr, length)
        except GuestMemoryError:
            assert not inside
        else:
            assert inside or length == 0
            if length:
                # gpa [0, MIB) is file [MIB, 2MIB); gpa [MIB, 2MIB) is file [0, MIB).
                expect = b"".join(
                    file_bytes(fd, (a + MIB) % (2 * MIB), 1)
                    for a in (addr, addr + length - 1))
                got = b"".join(bytes(v) for v in views)
                assert len(got) == length
                assert got[:1] + got[-1:] == expect
            del views
        mem.close()
    finally:
        os.close(fd)
