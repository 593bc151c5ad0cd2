"""The device side of a virtio split virtqueue, on top of :class:`GuestMemory`.

Each descriptor chain the driver makes available becomes one request: the
readable descriptors' memoryviews form the request and the writable ones
become a :class:`VirtqueueReplySink` that writes the reply straight into guest
memory.  Requests run concurrently; each goes to the used ring as soon as it
completes, in whatever order that is.

Everything the guest controls is checked before it is used: descriptor
indices, addresses (through GuestMemory), chain length, loops, nested
indirect tables, and the readable-then-writable order.  A chain that breaks a
rule is logged, counted, signalled on the error eventfd and never completed;
the queue goes on with the next one.  A well-formed chain whose readable part
exceeds ``max_request`` (the 9P msize) is signalled too, and returned with
used.len 0 without reaching the handler.

Memory ordering: Python has no barriers, so the code keeps the order the
virtio spec asks for and relies on x86/arm64 stores of aligned u16/u32 being
single accesses: read ``avail.idx`` before the ring entries; write a used
element before ``used.idx``; publish ``used.idx`` before reading
``used_event``; publish ``avail_event`` before re-reading ``avail.idx``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...segments import scatter, slice_segments
from .memory import GuestMemory, GuestMemoryError

log = logging.getLogger("ninep.vhost.virtqueue")

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

#: Largest queue a split ring may have.
MAX_QUEUE_SIZE = 32768
#: Most descriptors one chain may have, direct or after expanding an indirect table
#: (QEMU's VIRTQUEUE_MAX_SIZE): a chain walk is bounded even on a 32768-entry ring.
MAX_CHAIN = 1024
#: The smallest polling window an adaptive queue grows to from 0 (and shrinks to 0 below).
POLL_GROW_START = 10_000
#: Chains popped in one event-loop pass; the rest wait for the next pass, so a guest
#: that fills a large ring with long (or looping) chains cannot stall the loop.
CHAINS_PER_PASS = 16

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
USED_ELEM = struct.Struct("<II")  # id, len
_U16 = struct.Struct("<H")
_EVENT = b"\x01\x00\x00\x00\x00\x00\x00\x00"

RequestHandler = Callable[[list[memoryview], "VirtqueueReplySink"], None]


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """True if moving an index from *old_idx* to *new_idx* crossed *event_idx* (virtio spec)."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def ring_sizes(num: int, event_idx: bool) -> tuple[int, int, int]:
    """Bytes of the descriptor table, avail ring and used ring for a queue of *num*."""
    extra = 2 if event_idx else 0
    return 16 * num, 4 + 2 * num + extra, 4 + 8 * num + extra


class BrokenChain(Exception):
    """A descriptor chain that breaks the virtio rules; the request is dropped."""


class VirtqueueError(Exception):
    """A queue configuration that cannot work (bad size, rings outside memory)."""


@dataclass(slots=True)
class VirtqueueStats:
    """Counters that tests and logs look at."""

    kicks: int = 0
    requests: int = 0
    completed: int = 0
    broken: int = 0
    oversized: int = 0
    calls: int = 0
    errors_signalled: int = 0


class VirtqueueReplySink:
    """Writes one reply into the chain's writable descriptors and completes the chain."""

    __slots__ = ("capacity", "_queue", "_head", "_writable", "_reserved", "_cut_short",
                 "_generation")

    def __init__(self, queue: SplitVirtqueue, head: int, writable: list[memoryview],
                 capacity: int, generation: int) -> None:
        self.capacity = capacity
        self._queue = queue
        self._head = head
        self._writable: list[memoryview] | None = writable
        self._reserved = 0
        self._cut_short = False  # reserve() asked for more than the chain holds
        self._generation = generation

    @property
    def done(self) -> bool:
        return self._writable is None

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self._writable is None:
            log.warning("%s: second reply for head %d ignored", self._queue.name, self._head)
            return
        n = len(data)
        if n > self.capacity:
            log.error("%s: %d-byte reply does not fit the %d writable bytes of head %d",
                      self._queue.name, n, self.capacity, self._head)
            n = 0
        else:
            scatter(self._writable, memoryview(data))
        self._complete(n)

    def reserve(self, size: int) -> list[memoryview]:
        if self._writable is None:
            raise RuntimeError("reply sink already completed")
        self._reserved = max(0, min(size, self.capacity))
        self._cut_short = size > self.capacity
        return slice_segments(self._writable, 0, self._reserved)

    def commit(self, length: int) -> None:
        if self._writable is None:
            log.warning("%s: second commit for head %d ignored", self._queue.name, self._head)
            return
        if length > self._reserved:
            # Only part of the reply is in guest memory: return nothing, as send() does,
            # rather than a frame whose size field disagrees with used.len.
            log.error("%s: %d-byte reply does not fit the %d writable bytes of head %d",
                      self._queue.name, length, self._reserved, self._head)
            length = 0
        self._complete(max(0, length))

    def drop(self) -> None:
        # A virtqueue must return every chain: hand back what reserve() saw written
        # (nothing if that did not fit).
        if self._writable is not None:
            self._complete(0 if self._cut_short else self._reserved)

    def _complete(self, length: int) -> None:
        self._writable = None  # let the guest-memory views go
        self._queue._complete(self._head, length, self._generation)


class SplitVirtqueue:
    """One split virtqueue as a vhost-user back end runs it.

    The control plane configures it (:meth:`set_num`, :meth:`set_base`,
    :meth:`set_addresses`, :meth:`set_memory`, the fds, :meth:`set_enabled`);
    the ring starts once it has a size, addresses, memory and a kick fd, and
    :meth:`stop` (GET_VRING_BASE) stops it and returns the next avail index.
    The queue owns the kick/call/err fds it is given and closes them.
    """

    def __init__(self, index: int, handler: RequestHandler, *, max_chain: int = MAX_CHAIN,
                 max_request: Callable[[], int] | None = None, name: str | None = None,
                 poll_ns: int = 0) -> None:
        """*max_request* gives the most readable bytes a request may have (the 9P
        msize); a longer chain is returned unanswered instead of reaching *handler*.

        *poll_ns*: after answering the last request in flight, look at the avail
        ring on every loop pass for up to this long, with the driver's
        notifications suppressed, before sleeping on the kick eventfd again (0:
        never poll). The window adapts between 0 and *poll_ns* to how soon the
        next request has been coming.
        """
        self.index = index
        self.name = name or f"vq{index}"
        self.handler = handler
        self.max_chain = max_chain
        self.max_request = max_request
        self.num = 0
        self.last_avail_idx = 0
        self.event_idx = False
        self.enabled = False
        self.started = False
        self.broken = False
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.stats = VirtqueueStats()
        self._addresses: tuple[int, int, int] | None = None  # desc, avail, used (uva)
        self._memory: GuestMemory | None = None
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None
        self._used_idx = 0
        self._published = 0
        self._generation = 0
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._throttled = False
        self._flush_handle: asyncio.Handle | None = None
        self._resume_handle: asyncio.Handle | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        #: The loop the ring runs on (cached: on 3.11 get_running_loop() is a getpid()).
        self._loop: asyncio.AbstractEventLoop | None = None
        self.poll_ns = poll_ns
        self.poll_window_ns = poll_ns  # the current window, adapted (see _adapt_window)
        self._poll_until = 0  # monotonic ns; 0: not polling
        self._idle_since = 0  # monotonic ns of the last reply that left nothing in flight
        self._poll_handle: asyncio.Handle | None = None

    # --- configuration (control plane) -----------------------------------------------

    def set_num(self, num: int) -> None:
        if self.started:
            raise VirtqueueError("cannot resize a started queue")
        if not 0 < num <= MAX_QUEUE_SIZE or num & (num - 1):
            raise VirtqueueError(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.num = num
        self._unmap_rings()

    def set_base(self, last_avail_idx: int) -> None:
        if self.started:
            raise VirtqueueError("cannot set the base of a started queue")
        if not 0 <= last_avail_idx <= 0xFFFF:
            raise VirtqueueError(f"avail index {last_avail_idx} does not fit a split ring")
        self.last_avail_idx = last_avail_idx

    def set_addresses(self, desc: int, avail: int, used: int) -> None:
        """Ring addresses in the front end's virtual address space (uva)."""
        if desc % 16 or avail % 2 or used % 4:
            self._fail(f"misaligned ring addresses desc={desc:#x} avail={avail:#x} used={used:#x}")
        self._addresses = (desc, avail, used)
        self._unmap_rings()
        if self._memory is not None and self.num:
            self._remap_or_stop()
            self._maybe_start()

    def set_event_idx(self, enabled: bool) -> None:
        if enabled != self.event_idx:
            self.event_idx = enabled
            if self._desc is not None:
                self._unmap_rings()
                self._remap_or_stop()

    def set_memory(self, memory: GuestMemory | None) -> None:
        """A new memory table: ring views move to it (in-flight requests keep theirs)."""
        self._memory = memory
        self._unmap_rings()
        if not self.started:
            # Stale addresses are checked when the ring starts, not here.
            try:
                self._maybe_start()
            except VirtqueueError:
                pass
            return
        if memory is None:
            self._stop_reader()
            self.started = False
            return
        try:
            self._remap_or_stop()
        except VirtqueueError:
            pass

    def set_kick_fd(self, fd: int | None) -> None:
        """A new kick eventfd; receiving one starts the ring (as libvhost-user does)."""
        self._close_fd("kick_fd")
        self.kick_fd = fd
        if fd is None:
            return
        os.set_blocking(fd, False)
        if self.started:  # a replacement fd for a running ring
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, self._on_kick)
            self._reader_loop = loop
            loop.call_soon(self.process_avail)
            return
        self._maybe_start()

    def set_call_fd(self, fd: int | None) -> None:
        """The call eventfd may be replaced at any time (QEMU masks/unmasks with it).

        Made non-blocking, as the error fd: a write to a full one must not stall the loop.
        """
        self._close_fd("call_fd")
        if fd is not None:
            os.set_blocking(fd, False)
        self.call_fd = fd

    def set_err_fd(self, fd: int | None) -> None:
        self._close_fd("err_fd")
        if fd is not None:
            os.set_blocking(fd, False)
        self.err_fd = fd

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        if enabled and self.started:
            # A kick may have come while the ring was disabled: look now.
            asyncio.get_running_loop().call_soon(self.process_avail)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return self._inflight

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request of this queue is in flight; False on timeout."""
        if self._inflight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def halt(self) -> None:
        """Take no new requests; the ones in flight still complete into the used ring."""
        self._stop_reader()
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        self._stop_polling()
        self.started = False

    async def stop(self, timeout: float | None = None) -> int:
        """GET_VRING_BASE: stop the ring, let in-flight requests finish, return last_avail."""
        self.halt()
        if not await self.wait_idle(timeout):
            log.warning("%s: %d requests still running after %.0fs; their replies will be lost",
                        self.name, self._inflight, timeout or 0)
        self._flush_used()
        self._generation += 1
        self._unmap_rings()
        self._close_fd("kick_fd")
        self._close_fd("call_fd")
        self.broken = False
        return self.last_avail_idx

    def close(self) -> None:
        """Drop everything (disconnect): no more processing, fds closed, rings unmapped.

        In-flight requests may still complete; their replies are discarded.
        """
        self.halt()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._generation += 1
        self._unmap_rings()
        self._memory = None
        for attr in ("kick_fd", "call_fd", "err_fd"):
            self._close_fd(attr)

    # --- ring processing -------------------------------------------------------------

    def process_avail(self) -> None:
        """Pop and dispatch the chains the driver made available, CHAINS_PER_PASS of them
        per loop pass (the next pass is scheduled while more are waiting)."""
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        if not self.started or not self.enabled or self.broken:
            return
        avail = self._avail
        num = self.num
        assert avail is not None
        budget = CHAINS_PER_PASS
        while True:
            avail_idx = _U16.unpack_from(avail, 2)[0]
            pending = (avail_idx - self.last_avail_idx) & 0xFFFF
            if pending > num:
                self.broken = True
                self._signal_error(f"avail index moved from {self.last_avail_idx} to {avail_idx}, "
                                   f"more than the {num} entries of the ring; queue stopped")
                return
            if pending == 0:
                if not self.event_idx or self._throttled:
                    return
                _U16.pack_into(self._used, 4 + 8 * num, self.last_avail_idx)  # type: ignore[arg-type]
                if _U16.unpack_from(avail, 2)[0] == avail_idx:
                    return
                continue
            for _ in range(pending):
                if self._inflight >= num:
                    # A driver has at most num chains outstanding; resume on completion.
                    self._throttled = True
                    return
                if budget == 0:
                    self._resume_handle = self._get_loop().call_soon(self.process_avail)
                    return
                budget -= 1
                slot = 4 + 2 * (self.last_avail_idx % num)
                head = _U16.unpack_from(avail, slot)[0]
                self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
                self._dispatch(head)
                if not self.started:  # a handler may have stopped us
                    return

    def _dispatch(self, head: int) -> None:
        try:
            readable, writable, out_bytes, capacity = self._walk_chain(head)
        except BrokenChain as exc:
            self.stats.broken += 1
            self._signal_error(f"head {head}: {exc}; request dropped")
            return
        self.stats.requests += 1
        self._inflight += 1
        self._idle.clear()
        sink = VirtqueueReplySink(self, head, writable, capacity, self._generation)
        if self.max_request is not None and out_bytes > (limit := self.max_request()):
            # The handler would copy it: a guest could make us allocate 4 GiB per request.
            self.stats.oversized += 1
            self._signal_error(f"head {head}: a {out_bytes}-byte request, more than {limit}; "
                               "returned unanswered")
            sink.send(b"")
            return
        try:
            self.handler(readable, sink)
        except Exception:
            log.exception("%s: request handler failed for head %d", self.name, head)
            if not sink.done:
                sink.send(b"")

    def _walk_chain(self, head: int) -> tuple[list[memoryview], list[memoryview], int, int]:
        """Readable views, writable views and the byte count of each; BrokenChain if bogus."""
        memory = self._memory
        table = self._desc
        assert memory is not None and table is not None
        num = self.num
        if head >= num:
            raise BrokenChain(f"head index {head} outside a queue of {num}")
        addr, length, flags, nxt = DESC.unpack_from(table, 16 * head)
        entries = num  # of the table that next indices point into
        if flags & VIRTQ_DESC_F_INDIRECT:
            if flags & VIRTQ_DESC_F_NEXT:
                raise BrokenChain("indirect descriptor also has NEXT")
            if length == 0 or length % DESC.size:
                raise BrokenChain(f"indirect table of {length} bytes")
            entries = length // DESC.size
            if entries > self.max_chain:
                raise BrokenChain(f"indirect table of {entries} descriptors, more than "
                                  f"{self.max_chain}")
            try:
                table = memory.gpa_view(addr, length)
            except GuestMemoryError as exc:
                raise BrokenChain(f"indirect table: {exc}") from None
            addr, length, flags, nxt = DESC.unpack_from(table, 0)
        limit = min(entries, self.max_chain)  # so a loop is caught after that many
        readable: list[memoryview] = []
        writable: list[memoryview] = []
        out_bytes = in_bytes = 0
        count = 0
        seen_writable = False  # by descriptor: a zero-length one has no views
        # Descriptors that continue each other in guest memory (and in direction)
        # become one view: each view costs a slice here and an iovec in
        # preadv/pwritev, and a guest's pinned pages are adjacent now and then.
        run: memoryview | None = None  # region view the current run is cut from
        run_out = readable  # the list the run goes to
        run_lo = run_hi = 0  # the run's bytes in that view
        run_end = 0  # guest address right after the run
        region_start = region_end = 0  # the region of the last lookup
        view = memoryview(b"")
        while True:
            count += 1
            if count > limit:
                raise BrokenChain(f"chain longer than {limit} descriptors (a loop?)")
            if flags & VIRTQ_DESC_F_INDIRECT:
                raise BrokenChain("indirect descriptor inside a chain or an indirect table")
            if flags & VIRTQ_DESC_F_WRITE:
                seen_writable = True
                out = writable
                in_bytes += length
            else:
                if seen_writable:
                    raise BrokenChain("readable descriptor after a writable one")
                out = readable
                out_bytes += length
            if length:
                if (run is not None and addr == run_end and out is run_out
                        and addr + length <= region_end):
                    run_hi += length
                    run_end += length
                else:
                    if run is not None:
                        run_out.append(run[run_lo:run_hi])
                    if not region_start <= addr < region_end:  # else: the last run's region
                        try:
                            region_start, region_end, view = memory.locate(addr)
                        except GuestMemoryError as exc:
                            raise BrokenChain(str(exc)) from None
                    if addr + length <= region_end:
                        run, run_out = view, out
                        run_lo = addr - region_start
                        run_hi = run_lo + length
                        run_end = addr + length
                    else:  # crosses into the next region: one view per region
                        run = None
                        try:
                            out.extend(memory.gpa_views(addr, length))
                        except GuestMemoryError as exc:
                            raise BrokenChain(str(exc)) from None
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            if nxt >= entries:
                raise BrokenChain(f"next index {nxt} outside a table of {entries}")
            addr, length, flags, nxt = DESC.unpack_from(table, 16 * nxt)
        if run is not None:
            run_out.append(run[run_lo:run_hi])
        if in_bytes > 0xFFFFFFFF or out_bytes > 0xFFFFFFFF:
            raise BrokenChain("chain length overflows 32 bits")
        return readable, writable, out_bytes, in_bytes

    def _complete(self, head: int, length: int, generation: int) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()
        if generation != self._generation or self._used is None:
            log.debug("%s: dropping the completion of head %d from a stopped ring", self.name, head)
            return
        self.stats.completed += 1
        USED_ELEM.pack_into(self._used, 4 + 8 * (self._used_idx % self.num), head, length)
        self._used_idx = (self._used_idx + 1) & 0xFFFF
        if self._flush_handle is None:
            # Publish used.idx and notify once per loop iteration, for all completions
            # in it. (Doing it at once for a lone completion measured slower in the
            # guest: bench/OPTIMISATIONS.md, vhost-user round 1.)
            self._flush_handle = self._get_loop().call_soon(self._flush_used)
        if self._throttled and self._inflight < self.num:
            self._throttled = False
            self._get_loop().call_soon(self.process_avail)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _flush_used(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        used = self._used
        new = self._used_idx
        if used is None or new == self._published:
            return
        old = self._published
        _U16.pack_into(used, 2, new)
        self._published = new
        if self._should_notify(old, new):
            self._signal_call()
        if self.poll_ns and self._inflight == 0 and self.started and self._poll_until == 0:
            self._idle_since = now = time.monotonic_ns()
            if self.poll_window_ns:
                self._start_polling(now)

    # --- polling: the next request without a kick ---------------------------------------
    #
    # A guest that sends its next request soon after a reply (the Linux client
    # does, between the requests of one system call) pays for a kick it need
    # not make, and ninep for a wake-up from epoll. While polling, the driver
    # is told not to kick (avail_event left behind last_avail_idx, or
    # VIRTQ_USED_F_NO_NOTIFY) and each loop pass looks at avail.idx; when the
    # window ends, notifications are re-armed and the ring looked at once more,
    # so a chain made available meanwhile is never stranded.
    #
    # The window adapts as KVM's halt polling does: a request that came by kick
    # within poll_ns of the last reply says a longer window would have caught it
    # (double it, from POLL_GROW_START); one that came later says polling only
    # burnt CPU (halve it, to 0 below POLL_GROW_START). A guest that pauses
    # between requests (a process per request, a user typing) is soon not
    # polled for at all.

    def _adapt_window(self, idle_ns: int) -> None:
        if idle_ns <= self.poll_ns:
            self.poll_window_ns = min(self.poll_ns, max(POLL_GROW_START, 2 * self.poll_window_ns))
        else:
            window = self.poll_window_ns // 2
            self.poll_window_ns = window if window >= POLL_GROW_START else 0

    def _start_polling(self, now: int) -> None:
        self._poll_until = now + self.poll_window_ns
        self._set_notifications(False)
        self._poll_handle = self._get_loop().call_soon(self._poll)

    def _poll(self) -> None:
        self._poll_handle = None
        if not self.started or self.broken:
            self._poll_until = 0  # the ring stopped: it re-arms notifications when it restarts
            return
        avail = self._avail
        assert avail is not None
        if _U16.unpack_from(avail, 2)[0] != self.last_avail_idx:
            self._idle_since = 0  # caught by polling: the window is right
            self._stop_polling()  # notifications back on while the new requests run
            self.process_avail()
        elif time.monotonic_ns() < self._poll_until:
            self._poll_handle = self._get_loop().call_soon(self._poll)
        else:
            self._stop_polling()
            if _U16.unpack_from(avail, 2)[0] != self.last_avail_idx:
                self.process_avail()  # made available as notifications came back

    def _stop_polling(self) -> None:
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        if self._poll_until:
            self._poll_until = 0
            if self._used is not None and self._avail is not None:
                self._set_notifications(True)

    def _set_notifications(self, on: bool) -> None:
        """Ask the driver to kick for the next chain (or not to)."""
        used = self._used
        assert used is not None
        if self.event_idx:
            event = self.last_avail_idx if on else (self.last_avail_idx - 1) & 0xFFFF
            _U16.pack_into(used, 4 + 8 * self.num, event)
        else:
            flags = _U16.unpack_from(used, 0)[0]
            flags = flags & ~VIRTQ_USED_F_NO_NOTIFY if on else flags | VIRTQ_USED_F_NO_NOTIFY
            _U16.pack_into(used, 0, flags)

    def _should_notify(self, old: int, new: int) -> bool:
        avail = self._avail
        assert avail is not None
        if self.event_idx:
            used_event = _U16.unpack_from(avail, 4 + 2 * self.num)[0]
            return vring_need_event(used_event, new, old)
        return not _U16.unpack_from(avail, 0)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT

    def _signal_call(self) -> None:
        if self.call_fd is None:
            return
        try:
            os.write(self.call_fd, _EVENT)
            self.stats.calls += 1
        except BlockingIOError:
            pass  # the counter is saturated: the driver will look anyway
        except OSError as exc:
            log.error("%s: cannot signal the call eventfd: %s", self.name, exc)

    def _signal_error(self, why: str) -> None:
        log.error("%s: %s", self.name, why)
        if self.err_fd is None:
            return
        try:
            os.write(self.err_fd, _EVENT)
            self.stats.errors_signalled += 1
        except OSError as exc:
            log.error("%s: cannot signal the error eventfd: %s", self.name, exc)

    def _fail(self, why: str) -> None:
        self._signal_error(why)
        raise VirtqueueError(why)

    # --- internals ---------------------------------------------------------------------

    def _on_kick(self) -> None:
        fd = self.kick_fd
        if fd is None:
            return
        try:
            os.read(fd, 8)
        except BlockingIOError:
            pass
        except OSError as exc:
            log.error("%s: reading the kick eventfd failed: %s", self.name, exc)
            self._stop_reader()
            return
        self.stats.kicks += 1
        if self._poll_until:  # kicked before it saw the suppression
            self._stop_polling()
        if self._idle_since:
            self._adapt_window(time.monotonic_ns() - self._idle_since)
            self._idle_since = 0
        self.process_avail()

    def _maybe_start(self) -> None:
        if self.started or self.kick_fd is None or not self.num or self._addresses is None:
            return
        if self._memory is None or not len(self._memory):
            return
        if self._desc is None:
            self._remap_or_fail()
        used = self._used
        assert used is not None
        self._used_idx = self._published = _U16.unpack_from(used, 2)[0]
        self.started = True
        loop = self._get_loop()
        loop.add_reader(self.kick_fd, self._on_kick)
        self._reader_loop = loop
        if self.enabled:
            loop.call_soon(self.process_avail)

    def _remap_or_fail(self) -> None:
        assert self._memory is not None and self._addresses is not None
        desc_size, avail_size, used_size = ring_sizes(self.num, self.event_idx)
        desc, avail, used = self._addresses
        try:
            self._desc = self._memory.uva_view(desc, desc_size)
            self._avail = self._memory.uva_view(avail, avail_size)
            self._used = self._memory.uva_view(used, used_size)
        except GuestMemoryError as exc:
            self._unmap_rings()
            self._fail(f"ring not in guest memory: {exc}")

    def _remap_or_stop(self) -> None:
        """Map the rings; if that fails a running ring stops (and the error propagates)."""
        try:
            self._remap_or_fail()
        except VirtqueueError:
            if self.started:
                self._stop_reader()
                self.started = False
            raise

    def _unmap_rings(self) -> None:
        for attr in ("_desc", "_avail", "_used"):
            view = getattr(self, attr)
            setattr(self, attr, None)
            if view is not None:
                view.release()

    def _stop_reader(self) -> None:
        if self._reader_loop is not None and self.kick_fd is not None:
            self._reader_loop.remove_reader(self.kick_fd)
        self._reader_loop = None

    def _close_fd(self, attr: str) -> None:
        fd = getattr(self, attr)
        if fd is None:
            return
        if attr == "kick_fd":
            # While kick_fd still names it: closing an fd the loop still watches leaves a
            # stale epoll entry (EEXIST when the number comes back) and a reader on
            # whatever reuses the number.
            self._stop_reader()
        setattr(self, attr, None)
        try:
            os.close(fd)
        except OSError:
            pass


__all__ = [
    "SplitVirtqueue", "VirtqueueReplySink", "VirtqueueStats", "BrokenChain", "VirtqueueError",
    "RequestHandler", "vring_need_event", "ring_sizes", "DESC", "USED_ELEM",
    "VIRTQ_DESC_F_NEXT", "VIRTQ_DESC_F_WRITE", "VIRTQ_DESC_F_INDIRECT",
    "VIRTQ_AVAIL_F_NO_INTERRUPT", "VIRTQ_USED_F_NO_NOTIFY", "MAX_QUEUE_SIZE", "MAX_CHAIN",
    "CHAINS_PER_PASS",
]
