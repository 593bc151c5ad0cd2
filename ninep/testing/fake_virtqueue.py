"""A fake guest for virtqueue tests: driver-side split rings in shared memory.

Real rings, real descriptors, real eventfds, no VM.  ``GuestRam`` is a memfd
laid out as one or more guest RAM regions whose guest-physical and user
addresses differ (as QEMU's do); ``DriverQueue`` plays the guest driver of one
split virtqueue in it (descriptor table, avail and used rings, EVENT_IDX,
direct or indirect chains); ``VirtioNinePDriver`` speaks 9P through it.

``FakeVirtqueue`` wires all that to an in-process
:class:`~ninep.transport.vhost.virtqueue.SplitVirtqueue` on its own
:class:`~ninep.transport.vhost.memory.GuestMemory` mapping of the same memfd, so a
library user can unit-test a request handler or a Session through the ring::

    async with FakeVirtqueue(session.submit) as fv:
        reply = await fv.ninep.rpc(p.Tversion(512000, "9P2000.L"))

The same driver pieces drive a real server in
:mod:`ninep.testing.vhost_frontend`.
"""

from __future__ import annotations

import asyncio
import itertools
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol import ninep as p
from ..transport.vhost.memory import GuestMemory, MemoryRegion
from ..transport.vhost.virtqueue import (DESC, USED_ELEM, VIRTQ_AVAIL_F_NO_INTERRUPT,
                                         VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
                                         VIRTQ_DESC_F_WRITE, RequestHandler, SplitVirtqueue,
                                         ring_sizes, vring_need_event)

_U16 = struct.Struct("<H")
_PAGE = 4096


def default_layout(size: int) -> list[MemoryRegion]:
    """Two regions, adjacent in guest-physical space but far apart in user space and
    at different file offsets, so translation bugs and region-spanning buffers show."""
    half = size // 2
    return [
        MemoryRegion(gpa=0, size=half, uva=0x7FF7CBFFF000, mmap_offset=0),
        MemoryRegion(gpa=half, size=size - half, uva=0x7FA000000000, mmap_offset=half),
    ]


class GuestRam:
    """A memfd acting as guest RAM, with the driver's own mapping of it."""

    def __init__(self, size: int = 64 << 20, layout: Sequence[MemoryRegion] | None = None) -> None:
        self.size = size
        self.fd = os.memfd_create("ninep-guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self._mmap = mmap.mmap(self.fd, size)
        self.view = memoryview(self._mmap)
        self.regions = list(layout if layout is not None else default_layout(size))
        for r in self.regions:
            if r.mmap_offset + r.size > size:
                raise ValueError("region outside the memfd")
        # Free extents per region, in guest-physical terms: [start, end).
        self._free: list[list[int]] = sorted([r.gpa, r.gpa + r.size] for r in self.regions)

    # --- addresses ------------------------------------------------------------------

    def _region(self, gpa: int) -> MemoryRegion:
        for r in self.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                return r
        raise ValueError(f"gpa {gpa:#x} is not guest RAM")

    def uva(self, gpa: int) -> int:
        """The front end's virtual address for a guest-physical one."""
        r = self._region(gpa)
        return r.uva + gpa - r.gpa

    def _spans(self, gpa: int, length: int) -> list[tuple[int, int]]:
        out = []
        while length > 0:
            r = self._region(gpa)
            take = min(length, r.gpa + r.size - gpa)
            out.append((r.mmap_offset + gpa - r.gpa, take))
            gpa += take
            length -= take
        return out

    def write(self, gpa: int, data: bytes | memoryview) -> None:
        pos = 0
        for off, n in self._spans(gpa, len(data)):
            self.view[off:off + n] = data[pos:pos + n]
            pos += n

    def read(self, gpa: int, length: int) -> bytes:
        return b"".join(bytes(self.view[off:off + n]) for off, n in self._spans(gpa, length))

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        for off, n in self._spans(gpa, length):
            self.view[off:off + n] = bytes([byte]) * n

    # --- allocation ---------------------------------------------------------------------

    def alloc(self, size: int, align: int = 16) -> int:
        """A guest-physical range of *size* bytes inside one region (first fit)."""
        size = max(size, 1)
        for ext in self._free:
            start = -(-ext[0] // align) * align
            if start + size <= ext[1]:
                if start > ext[0]:
                    self._free.append([ext[0], start])
                ext[0] = start + size
                self._free = sorted(e for e in self._free if e[0] < e[1])
                return start
        raise MemoryError(f"guest RAM exhausted allocating {size} bytes")

    def reserve(self, gpa: int, size: int) -> int:
        """Take the fixed range ``[gpa, gpa+size)`` (it must be free and in one region)."""
        for ext in self._free:
            if ext[0] <= gpa and gpa + size <= ext[1]:
                self._free.append([gpa + size, ext[1]])
                ext[1] = gpa
                self._free = sorted(e for e in self._free if e[0] < e[1])
                return gpa
        raise ValueError(f"{gpa:#x}+{size:#x} is not free guest RAM")

    def free(self, gpa: int, size: int) -> None:
        size = max(size, 1)
        self._free.append([gpa, gpa + size])
        self._free.sort()
        merged: list[list[int]] = []
        for ext in self._free:
            if merged and merged[-1][1] == ext[0] and self._same_region(merged[-1][0], ext[0]):
                merged[-1][1] = ext[1]
            else:
                merged.append(ext)
        self._free = merged

    def _same_region(self, a: int, b: int) -> bool:
        return self._region(a) is self._region(b)

    # --- the device's side -------------------------------------------------------------

    def guest_memory(self) -> GuestMemory:
        """A device-side GuestMemory mapping the same memfd (for in-process tests)."""
        memory = GuestMemory()
        for r in self.regions:
            memory.add(r, self.fd)
        return memory

    def close(self) -> None:
        self.view.release()
        self._mmap.close()
        os.close(self.fd)


@dataclass(eq=False)
class PendingRequest:
    """One chain the driver made available, until the device returns it."""

    head: int
    out_buffers: list[tuple[int, int]]
    in_buffers: list[tuple[int, int]]
    descriptors: list[int]
    table: tuple[int, int] | None
    future: asyncio.Future
    data: bytes = b""
    length: int = -1
    #: free bytes left after each buffer (add_chain's *scattered*), freed with it
    gap: int = 0

    @property
    def in_capacity(self) -> int:
        return sum(n for _, n in self.in_buffers)


@dataclass
class DriverStats:
    kicks: int = 0
    kicks_suppressed: int = 0
    calls: int = 0
    used: int = 0


class DriverQueue:
    """The guest driver of one split virtqueue in :class:`GuestRam`."""

    def __init__(self, ram: GuestRam, num: int = 128, *, event_idx: bool = True,
                 index: int = 0, at: tuple[int, int, int] | None = None) -> None:
        """*at* places the rings at fixed guest addresses (desc, avail, used)."""
        self.ram = ram
        self.num = num
        self.index = index
        self.event_idx = event_idx
        desc_size, avail_size, used_size = ring_sizes(num, True)
        if at is None:
            self.desc_gpa = ram.alloc(desc_size, _PAGE)
            self.avail_gpa = ram.alloc(avail_size, 2)
            self.used_gpa = ram.alloc(used_size, _PAGE)
        else:
            self.desc_gpa = ram.reserve(at[0], desc_size)
            self.avail_gpa = ram.reserve(at[1], avail_size)
            self.used_gpa = ram.reserve(at[2], used_size)
        for gpa, n in ((self.desc_gpa, desc_size), (self.avail_gpa, avail_size),
                       (self.used_gpa, used_size)):
            ram.fill(gpa, n)
        self.free_heads = list(range(num - 1, -1, -1))  # pop() hands out 0 first, LIFO reuse
        self.avail_idx = 0
        self.last_used = 0
        self._kick_checked = 0
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.err_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.pending: dict[int, PendingRequest] = {}
        #: Every used element seen, in ring order: (head, len).
        self.used_log: list[tuple[int, int]] = []
        self.stats = DriverStats()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- addresses for SET_VRING_ADDR ------------------------------------------------

    @property
    def desc_uva(self) -> int:
        return self.ram.uva(self.desc_gpa)

    @property
    def avail_uva(self) -> int:
        return self.ram.uva(self.avail_gpa)

    @property
    def used_uva(self) -> int:
        return self.ram.uva(self.used_gpa)

    # --- ring fields --------------------------------------------------------------------

    def _u16(self, gpa: int) -> int:
        return _U16.unpack(self.ram.read(gpa, 2))[0]

    def _set_u16(self, gpa: int, value: int) -> None:
        self.ram.write(gpa, _U16.pack(value & 0xFFFF))

    @property
    def used_idx(self) -> int:
        return self._u16(self.used_gpa + 2)

    @property
    def avail_event(self) -> int:
        return self._u16(self.used_gpa + 4 + 8 * self.num)

    @property
    def used_event(self) -> int:
        return self._u16(self.avail_gpa + 4 + 2 * self.num)

    @used_event.setter
    def used_event(self, value: int) -> None:
        self._set_u16(self.avail_gpa + 4 + 2 * self.num, value)

    def set_no_interrupt(self, on: bool) -> None:
        self._set_u16(self.avail_gpa, VIRTQ_AVAIL_F_NO_INTERRUPT if on else 0)

    def write_desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
                   table: int | None = None) -> None:
        """Write one descriptor into the ring's table (or an indirect *table* at a gpa)."""
        base = self.desc_gpa if table is None else table
        self.ram.write(base + 16 * index, DESC.pack(addr, length, flags, nxt))

    def publish(self, head: int) -> None:
        """Put *head* on the avail ring: the entry first, then the index."""
        self._set_u16(self.avail_gpa + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self._set_u16(self.avail_gpa + 2, self.avail_idx)

    # --- requests -------------------------------------------------------------------------

    def add_chain(self, out: Sequence[bytes | memoryview], in_sizes: Sequence[int], *,
                  indirect: bool = True, publish: bool = True,
                  scattered: bool = False) -> PendingRequest:
        """Copy *out* segments into guest RAM, reserve *in_sizes*, make one chain available.

        Buffers are allocated one after another, so the device may see them as one
        run of guest memory; *scattered* puts a gap between them, as a real guest's
        pinned pages usually have.
        """
        gap = 64 if scattered else 0
        out_buffers = []
        for seg in out:
            gpa = self.ram.alloc(len(seg) + gap, 8)
            self.ram.write(gpa, seg)
            out_buffers.append((gpa, len(seg)))
        in_buffers = []
        for n in in_sizes:
            gpa = self.ram.alloc(n + gap, 8)
            self.ram.fill(gpa, n, 0xA5)  # stale bytes a bogus length would expose
            in_buffers.append((gpa, n))
        segs = ([(g, n, 0) for g, n in out_buffers]
                + [(g, n, VIRTQ_DESC_F_WRITE) for g, n in in_buffers])
        if indirect:
            head = self._take_heads(1)[0]
            table = (self.ram.alloc(16 * len(segs), 16), 16 * len(segs))
            for i, (gpa, n, flags) in enumerate(segs):
                last = i == len(segs) - 1
                self.write_desc(i, gpa, n, flags | (0 if last else VIRTQ_DESC_F_NEXT),
                                0 if last else i + 1, table=table[0])
            self.write_desc(head, table[0], table[1], VIRTQ_DESC_F_INDIRECT)
            descriptors = [head]
        else:
            descriptors = self._take_heads(len(segs))
            table = None
            for i, (gpa, n, flags) in enumerate(segs):
                last = i == len(segs) - 1
                self.write_desc(descriptors[i], gpa, n, flags | (0 if last else VIRTQ_DESC_F_NEXT),
                                0 if last else descriptors[i + 1])
            head = descriptors[0]
        req = PendingRequest(head, out_buffers, in_buffers, descriptors, table,
                             self._get_loop().create_future(), gap=gap)
        self.pending[head] = req
        if publish:
            self.publish(head)
        return req

    def _take_heads(self, n: int) -> list[int]:
        if len(self.free_heads) < n:
            raise RuntimeError(f"no {n} free descriptors")
        return [self.free_heads.pop() for _ in range(n)]

    def kick(self, force: bool = False) -> bool:
        """Notify the device, unless EVENT_IDX says it does not want to hear (vring_need_event)."""
        old, new = self._kick_checked, self.avail_idx
        self._kick_checked = new
        if not force and self.event_idx and not vring_need_event(self.avail_event, new, old):
            self.stats.kicks_suppressed += 1
            return False
        os.eventfd_write(self.kick_fd, 1)
        self.stats.kicks += 1
        return True

    def collect_used(self) -> list[tuple[int, int]]:
        """Consume new used entries, complete their requests and free their buffers."""
        out = []
        while True:
            used_idx = self.used_idx
            while self.last_used != used_idx:
                slot = self.used_gpa + 4 + 8 * (self.last_used % self.num)
                head, length = USED_ELEM.unpack(self.ram.read(slot, 8))
                self.last_used = (self.last_used + 1) & 0xFFFF
                out.append((head, length))
                self.used_log.append((head, length))
                self.stats.used += 1
                self._complete(head, length)
            if not self.event_idx:
                return out
            # Ask for a call at the next completion, then look once more (the race).
            self.used_event = self.last_used
            if self.used_idx == used_idx:
                return out

    def _complete(self, head: int, length: int) -> None:
        req = self.pending.pop(head, None)
        if req is None:
            raise AssertionError(f"device returned head {head}, which was not in flight")
        req.length = length
        if 0 <= length <= req.in_capacity:
            data = b"".join(self.ram.read(g, n) for g, n in req.in_buffers)
            req.data = data[:length]
        for gpa, n in req.out_buffers + req.in_buffers:
            self.ram.free(gpa, n + req.gap)
        if req.table is not None:
            self.ram.free(*req.table)
        self.free_heads.extend(reversed(req.descriptors))
        if not req.future.done():
            req.future.set_result(length)

    def forget(self, req: PendingRequest) -> None:
        """Give up on a request the device will never return (a broken chain)."""
        self.pending.pop(req.head, None)
        self.free_heads.extend(reversed(req.descriptors))

    # --- notifications ----------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.call_fd, self._on_call)
        return self._loop

    def start(self) -> None:
        """Begin watching the call eventfd (needs a running loop)."""
        self._get_loop()

    def _on_call(self) -> None:
        try:
            self.stats.calls += os.eventfd_read(self.call_fd)
        except BlockingIOError:
            return
        self.collect_used()

    def read_err(self) -> int:
        """How many times the device signalled the error eventfd since the last look."""
        try:
            return os.eventfd_read(self.err_fd)
        except BlockingIOError:
            return 0

    async def wait(self, req: PendingRequest, timeout: float = 10.0) -> int:
        """The used length of *req*, once the device returned it and signalled the call fd."""
        return await asyncio.wait_for(asyncio.shield(req.future), timeout)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.call_fd)
            self._loop = None
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def split_sizes(total: int, first: int, rest: int = _PAGE) -> list[int]:
    """Segment sizes as the Linux 9p client lays them out: a header part, then pages."""
    sizes = [min(first, total)]
    left = total - sizes[0]
    while left > 0:
        sizes.append(min(rest, left))
        left -= sizes[-1]
    return sizes


def split_bytes(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        out.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


class VirtioNinePDriver:
    """9P requests through a :class:`DriverQueue`, one chain per request."""

    def __init__(self, driver: DriverQueue, msize: int = 512000) -> None:
        self.driver = driver
        self.msize = msize
        self._tags = itertools.cycle(range(0xFFFE))
        self._fids = itertools.count(1)

    def new_fid(self) -> int:
        return next(self._fids)

    def submit(self, msg: Any, *, tag: int | None = None, reply_size: int | None = None,
               in_sizes: Sequence[int] | None = None, out_sizes: Sequence[int] | None = None,
               indirect: bool = True, kick: bool = True,
               scattered: bool = False) -> tuple[int, PendingRequest]:
        """Make one request available (and kick); returns (tag, pending)."""
        if tag is None:
            tag = p.NOTAG if isinstance(msg, p.Tversion) else next(self._tags)
        frame = p.encode(msg, tag)
        out = split_bytes(frame, out_sizes) if out_sizes else [frame]
        if in_sizes is None:
            in_sizes = [reply_size if reply_size is not None else self.msize]
        req = self.driver.add_chain(out, in_sizes, indirect=indirect, scattered=scattered)
        if kick:
            self.driver.kick()
        return tag, req

    async def result(self, tag: int, req: PendingRequest, timeout: float = 10.0) -> Any:
        """The decoded reply of a submitted request (Rlerror included)."""
        length = await self.driver.wait(req, timeout)
        if length > req.in_capacity:
            raise AssertionError(f"used length {length} exceeds the {req.in_capacity} "
                                 "writable bytes")
        size = struct.unpack_from("<I", req.data)[0] if length >= 4 else -1
        if size != length:
            raise AssertionError(f"used length {length} but the reply says {size} bytes")
        rtag, reply = p.decode(req.data)
        if rtag != tag:
            raise AssertionError(f"reply tag {rtag} for request tag {tag}")
        return reply

    async def rpc(self, msg: Any, **kwargs: Any) -> Any:
        """Send *msg* and return its decoded reply; Rlerror raises OSError."""
        timeout = kwargs.pop("timeout", 10.0)
        tag, req = self.submit(msg, **kwargs)
        reply = await self.result(tag, req, timeout)
        if isinstance(reply, p.Rlerror):
            raise OSError(reply.ecode, os.strerror(reply.ecode))
        return reply

    # --- conveniences -------------------------------------------------------------------

    async def version(self, msize: int | None = None) -> p.Rversion:
        reply = await self.rpc(p.Tversion(msize or self.msize, p.VERSION_9P2000L), reply_size=64)
        self.msize = reply.msize
        return reply

    async def attach(self, uname: str = "root", n_uname: int = 0) -> int:
        fid = self.new_fid()
        await self.rpc(p.Tattach(fid, p.NOFID, uname, "", n_uname), reply_size=64)
        return fid

    async def walk(self, fid: int, names: list[str]) -> int:
        newfid = self.new_fid()
        await self.rpc(p.Twalk(fid, newfid, names), reply_size=11 + 13 * max(1, len(names)))
        return newfid

    async def lopen(self, fid: int, flags: int = p.DOTL_RDONLY) -> p.Rlopen:
        return await self.rpc(p.Tlopen(fid, flags), reply_size=64)

    async def lcreate(self, dfid: int, name: str, flags: int = p.DOTL_RDWR,
                      mode: int = 0o644) -> p.Rlcreate:
        return await self.rpc(p.Tlcreate(dfid, name, flags, mode, 0), reply_size=64)

    async def clunk(self, fid: int) -> None:
        await self.rpc(p.Tclunk(fid), reply_size=64)

    async def getattr(self, fid: int) -> p.Rgetattr:
        return await self.rpc(p.Tgetattr(fid, p.GETATTR_BASIC), reply_size=256)

    async def read(self, fid: int, offset: int, count: int) -> bytes:
        """A zero-copy style Tread: an 11-byte header segment, then pages (not adjacent
        in guest memory, as a real guest's pinned pages mostly are not)."""
        reply = await self.rpc(p.Tread(fid, offset, count), in_sizes=split_sizes(11 + count, 11),
                               scattered=True)
        return reply.data

    async def write(self, fid: int, offset: int, data: bytes) -> int:
        """A zero-copy style Twrite: the 23-byte header segment, then pages (scattered)."""
        reply = await self.rpc(p.Twrite(fid, offset, data),
                               out_sizes=split_sizes(23 + len(data), 23), reply_size=64,
                               scattered=True)
        return reply.count

    async def readdir(self, fid: int, offset: int, count: int,
                      pages: int | None = None) -> list[tuple[p.Qid, int, int, str]]:
        in_sizes = split_sizes(11 + count, 11) if pages is None else [11] + [_PAGE] * pages
        reply = await self.rpc(p.Treaddir(fid, offset, count), in_sizes=in_sizes)
        return p.decode_dirents(reply.data)

    async def readdir_all(self, fid: int, count: int = 8192) -> list[str]:
        names: list[str] = []
        offset = 0
        while True:
            entries = await self.readdir(fid, offset, count)
            if not entries:
                return names
            names.extend(e[3] for e in entries)
            offset = entries[-1][1]


@dataclass
class FakeVirtqueue:
    """A SplitVirtqueue in process, fed by a fake guest driver over shared memory."""

    handler: RequestHandler
    num: int = 128
    event_idx: bool = True
    ram_size: int = 64 << 20
    layout: Sequence[MemoryRegion] | None = None
    msize: int = 512000
    #: the queue's polling window after its last reply (SplitVirtqueue's poll_ns)
    poll_ns: int = 0
    ram: GuestRam = field(init=False)
    memory: GuestMemory = field(init=False)
    driver: DriverQueue = field(init=False)
    queue: SplitVirtqueue = field(init=False)
    ninep: VirtioNinePDriver = field(init=False)

    async def start(self) -> FakeVirtqueue:
        self.ram = GuestRam(self.ram_size, self.layout)
        self.memory = self.ram.guest_memory()
        self.driver = DriverQueue(self.ram, self.num, event_idx=self.event_idx)
        self.driver.start()
        q = self.queue = SplitVirtqueue(0, self.handler, poll_ns=self.poll_ns)
        q.set_num(self.num)
        q.set_base(0)
        q.set_event_idx(self.event_idx)
        q.set_memory(self.memory)
        q.set_addresses(self.driver.desc_uva, self.driver.avail_uva, self.driver.used_uva)
        q.set_call_fd(os.dup(self.driver.call_fd))
        q.set_err_fd(os.dup(self.driver.err_fd))
        q.set_enabled(True)
        q.set_kick_fd(os.dup(self.driver.kick_fd))
        self.ninep = VirtioNinePDriver(self.driver, self.msize)
        return self

    async def close(self, timeout: float = 10.0) -> None:
        self.queue.halt()
        await self.queue.wait_idle(timeout)
        self.queue.close()
        self.memory.close()
        self.driver.close()
        self.ram.close()

    async def __aenter__(self) -> FakeVirtqueue:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


__all__ = ["GuestRam", "DriverQueue", "PendingRequest", "VirtioNinePDriver", "FakeVirtqueue",
           "default_layout", "split_sizes", "split_bytes"]
