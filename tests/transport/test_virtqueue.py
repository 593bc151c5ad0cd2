"""SplitVirtqueue against the fake guest driver: chains, used ring, EVENT_IDX, bad chains,
stop/resume, and 9P through a Session."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from ninep.backends.local import LocalBackend
from ninep.protocol import ninep as p
from ninep.server.session import Session, SessionConfig
from ninep.testing.fake_virtqueue import FakeVirtqueue
from ninep.protocol.framing import scatter
from ninep.server.sink import ReplySink
from ninep.transport.vhost.virtqueue import (VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
                                             VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
                                             SplitVirtqueue, VirtqueueError, vring_need_event)

KIB = 1024


class Echo:
    """Replies b"<" + request + b">" and records the request segments."""

    def __init__(self) -> None:
        self.requests: list[list[bytes]] = []

    def __call__(self, request: list[memoryview], sink: ReplySink) -> None:
        self.requests.append([bytes(v) for v in request])
        sink.send(b"<" + b"".join(request) + b">")


class Deferred:
    """Holds every request until the test completes it."""

    def __init__(self) -> None:
        self.items: list[tuple[list[memoryview], ReplySink]] = []

    def __call__(self, request: list[memoryview], sink: ReplySink) -> None:
        self.items.append((request, sink))


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.002)
    await asyncio.wait_for(poll(), timeout)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --- chains and the used ring ------------------------------------------------------------


@pytest.mark.parametrize("indirect", [True, False])
async def test_chain_segments_and_reply_through_the_used_ring(indirect):
    echo = Echo()
    async with FakeVirtqueue(echo) as fv:
        req = fv.driver.add_chain([b"hello ", b"world"], [3, 100], indirect=indirect)
        assert fv.driver.kick()
        length = await fv.driver.wait(req)
        assert echo.requests == [[b"hello ", b"world"]]
        assert length == 13 and req.data == b"<hello world>"
        assert fv.driver.used_idx == 1
        assert fv.driver.stats.calls == 1  # the call eventfd fired
        assert fv.queue.stats.requests == fv.queue.stats.completed == 1


async def test_views_are_guest_memory_not_copies():
    deferred = Deferred()
    async with FakeVirtqueue(deferred) as fv:
        req = fv.driver.add_chain([b"abcd"], [4096, 4096], scattered=True)
        fv.driver.kick()
        await until(lambda: deferred.items)
        request, sink = deferred.items[0]
        # The driver changes its buffer: a copy would not see it, a view does.
        fv.ram.write(req.out_buffers[0][0], b"WXYZ")
        assert bytes(request[0]) == b"WXYZ"
        views = sink.reserve(5000)
        assert [len(v) for v in views] == [4096, 904]
        scatter(views, b"x" * 5000)
        # Written straight into guest memory before completion.
        assert fv.ram.read(req.in_buffers[1][0], 4) == b"xxxx"
        sink.commit(4500)
        assert await fv.driver.wait(req) == 4500


async def test_adjacent_descriptors_become_one_view():
    """Descriptors that continue each other in guest memory (in the same direction)
    are one view, so a 128-page Tread is not 128 slices and 128 iovecs; a gap, or a
    change of direction, starts a new one."""
    deferred = Deferred()
    async with FakeVirtqueue(deferred) as fv:
        fv.driver.add_chain([b"abcdefgh", b"ijklmnop"], [4096, 4096])
        fv.driver.add_chain([b"abcdefgh", b"ijklmnop"], [4096, 4096], scattered=True)
        fv.driver.kick()
        await until(lambda: len(deferred.items) == 2)
        (adj_req, adj_sink), (gap_req, gap_sink) = deferred.items
        assert [bytes(v) for v in adj_req] == [b"abcdefghijklmnop"]
        assert [len(v) for v in adj_sink.reserve(8192)] == [8192]
        assert [bytes(v) for v in gap_req] == [b"abcdefgh", b"ijklmnop"]
        assert [len(v) for v in gap_sink.reserve(8192)] == [4096, 4096]
        adj_sink.commit(0)
        gap_sink.commit(0)


@pytest.mark.parametrize("event_idx", [True, False], ids=["event-idx", "no-event-idx"])
async def test_polling_takes_the_next_request_without_a_kick(event_idx):
    """With a polling window, the queue asks the driver not to kick after its last
    reply and finds the next chain itself; when the window ends it asks for kicks
    again, so a later request is not stranded."""
    echo = Echo()
    async with FakeVirtqueue(echo, event_idx=event_idx, poll_ns=200_000_000) as fv:
        first = fv.driver.add_chain([b"1"], [16])
        fv.driver.kick()
        assert await fv.driver.wait(first) == 3
        # Polling now: the driver is told not to kick.
        second = fv.driver.add_chain([b"2"], [16])
        if event_idx:
            assert not fv.driver.kick()  # avail_event says: no need
        else:
            assert fv.driver._u16(fv.driver.used_gpa) & VIRTQ_USED_F_NO_NOTIFY
        assert await fv.driver.wait(second, timeout=5) == 3
        assert fv.queue.stats.kicks == 1  # the second came without one
        # After the window: notifications are on again and a kick is needed and works.
        await until(lambda: fv.queue._poll_until == 0, timeout=5)
        if not event_idx:
            assert not fv.driver._u16(fv.driver.used_gpa) & VIRTQ_USED_F_NO_NOTIFY
        third = fv.driver.add_chain([b"3"], [16])
        assert fv.driver.kick()
        assert await fv.driver.wait(third) == 3
        assert echo.requests == [[b"1"], [b"2"], [b"3"]]


async def test_the_polling_window_shrinks_when_requests_come_late_and_grows_back():
    """A request that only comes after the window (by kick) halves it, down to no
    polling at all; requests that come soon after a reply grow it back."""
    echo = Echo()
    window = 20_000_000  # 20 ms
    async with FakeVirtqueue(echo, poll_ns=window) as fv:
        async def request(delay: float) -> None:
            await asyncio.sleep(delay)
            req = fv.driver.add_chain([b"x"], [16])
            fv.driver.kick()
            assert await fv.driver.wait(req) == 3
            await until(lambda: fv.queue._poll_until == 0 or fv.queue.poll_window_ns == 0)

        await request(0)
        for _ in range(12):  # each comes 30 ms after the last reply: too late to catch
            await asyncio.sleep(0.03 - 0.001)
            await request(0.001)
        assert fv.queue.poll_window_ns == 0
        assert fv.queue._poll_until == 0  # not polling after that reply
        await request(0)
        for _ in range(16):  # now each comes at once after the window ended: by kick
            await request(0)
        # Doubled back up (from 10 µs); each request here waits out the window, so at
        # the top it may come just later than poll_ns and halve it once.
        assert fv.queue.poll_window_ns >= window // 2


async def test_no_polling_by_default():
    echo = Echo()
    async with FakeVirtqueue(echo) as fv:
        req = fv.driver.add_chain([b"1"], [16])
        fv.driver.kick()
        assert await fv.driver.wait(req) == 3
        later = fv.driver.add_chain([b"2"], [16])
        assert fv.driver.kick()  # the device still wants to hear of it
        assert await fv.driver.wait(later) == 3


async def test_requests_complete_out_of_order():
    deferred = Deferred()
    async with FakeVirtqueue(deferred) as fv:
        reqs = [fv.driver.add_chain([bytes([i])], [16]) for i in range(5)]
        fv.driver.kick()
        await until(lambda: len(deferred.items) == 5)
        for request, sink in reversed(deferred.items):
            sink.send(b"r" + bytes(request[0]))
            await settle()
        for i, req in enumerate(reqs):
            assert await fv.driver.wait(req) == 2
            assert req.data == b"r" + bytes([i])
        # The used ring lists them in completion order.
        used = [fv.ram.read(fv.driver.used_gpa + 4 + 8 * i, 4) for i in range(5)]
        assert [int.from_bytes(u, "little") for u in used] == [r.head for r in reversed(reqs)]


async def test_buffer_spanning_two_regions():
    echo = Echo()
    async with FakeVirtqueue(echo, ram_size=8 << 20) as fv:
        half = fv.ram.regions[1].gpa
        # Far from anything the allocator has handed out in this small test.
        out_gpa = half - 5
        fv.ram.write(out_gpa, b"0123456789")
        in_gpa = half + 4096 - 6
        head = fv.driver.free_heads.pop()
        table = fv.ram.alloc(32, 16)
        fv.driver.write_desc(0, out_gpa, 10, VIRTQ_DESC_F_NEXT, 1, table=table)
        fv.driver.write_desc(1, in_gpa, 12, VIRTQ_DESC_F_WRITE, 0, table=table)
        fv.driver.write_desc(head, table, 32, VIRTQ_DESC_F_INDIRECT)
        fv.driver.publish(head)
        fv.driver.kick()
        await until(lambda: fv.driver.used_idx == 1)
        assert echo.requests == [[b"01234", b"56789"]]  # split at the region boundary
        assert fv.ram.read(in_gpa, 12) == b"<0123456789>"


# --- malformed chains ----------------------------------------------------------------------


def _bad_loop(fv):
    fv.driver.write_desc(0, fv.ram.alloc(8), 8, VIRTQ_DESC_F_NEXT, 1)
    fv.driver.write_desc(1, fv.ram.alloc(8), 8, VIRTQ_DESC_F_NEXT, 0)
    return 0


def _bad_chain_longer_than_queue(fv):
    for i in range(fv.num):  # 0 -> 1 -> ... -> num-1 -> 0: more than num descriptors
        fv.driver.write_desc(i, fv.ram.alloc(8), 8, VIRTQ_DESC_F_NEXT, (i + 1) % fv.num)
    return 0


def _indirect(fv, entries):
    table = fv.ram.alloc(16 * len(entries), 16)
    for i, (addr, length, flags, nxt) in enumerate(entries):
        fv.driver.write_desc(i, addr, length, flags, nxt, table=table)
    fv.driver.write_desc(0, table, 16 * len(entries), VIRTQ_DESC_F_INDIRECT)
    return 0


def _bad_indirect_loop(fv):
    b = fv.ram.alloc(8)
    return _indirect(fv, [(b, 8, VIRTQ_DESC_F_NEXT, 1), (b, 8, VIRTQ_DESC_F_NEXT, 0)])


def _bad_indirect_table_too_long(fv):
    b = fv.ram.alloc(8)
    n = 1025
    return _indirect(fv, [(b, 8, VIRTQ_DESC_F_NEXT if i < n - 1 else 0, i + 1) for i in range(n)])


def _bad_address_out_of_range(fv):
    fv.driver.write_desc(0, fv.ram.size + 4096, 8, 0, 0)
    return 0


def _bad_length_overflow(fv):
    fv.driver.write_desc(0, fv.ram.alloc(8), 0xFFFFFFFF, 0, 0)
    return 0


def _bad_address_wraps(fv):
    fv.driver.write_desc(0, (1 << 64) - 16, 64, 0, 0)
    return 0


def _bad_nested_indirect(fv):
    inner = fv.ram.alloc(32, 16)
    return _indirect(fv, [(inner, 32, VIRTQ_DESC_F_INDIRECT, 0)])


def _bad_readable_after_writable(fv):
    return _indirect(fv, [(fv.ram.alloc(8), 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1),
                          (fv.ram.alloc(8), 8, 0, 0)])


def _bad_direct_readable_after_writable(fv):
    fv.driver.write_desc(0, fv.ram.alloc(8), 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
    fv.driver.write_desc(1, fv.ram.alloc(8), 8, 0, 0)
    return 0


def _bad_head_out_of_range(fv):
    return fv.num + 3


def _bad_next_out_of_range(fv):
    fv.driver.write_desc(0, fv.ram.alloc(8), 8, VIRTQ_DESC_F_NEXT, fv.num + 1)
    return 0


def _bad_indirect_next_out_of_range(fv):
    return _indirect(fv, [(fv.ram.alloc(8), 8, VIRTQ_DESC_F_NEXT, 5)])


def _bad_indirect_size(fv):
    fv.driver.write_desc(0, fv.ram.alloc(64, 16), 40, VIRTQ_DESC_F_INDIRECT)
    return 0


def _bad_indirect_empty(fv):
    fv.driver.write_desc(0, fv.ram.alloc(64, 16), 0, VIRTQ_DESC_F_INDIRECT)
    return 0


def _bad_indirect_table_outside(fv):
    fv.driver.write_desc(0, fv.ram.size - 16, 64, VIRTQ_DESC_F_INDIRECT)
    return 0


def _bad_indirect_with_next(fv):
    table = fv.ram.alloc(16, 16)
    fv.driver.write_desc(0, fv.ram.alloc(8), 8, 0, 0, table=table)
    fv.driver.write_desc(0, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
    return 0


def _bad_indirect_mid_chain(fv):
    table = fv.ram.alloc(16, 16)
    fv.driver.write_desc(0, fv.ram.alloc(8), 8, 0, 0, table=table)
    fv.driver.write_desc(0, fv.ram.alloc(8), 8, VIRTQ_DESC_F_NEXT, 1)
    fv.driver.write_desc(1, table, 16, VIRTQ_DESC_F_INDIRECT)
    return 0


BAD_CHAINS = {name[5:]: fn for name, fn in globals().items() if name.startswith("_bad_")}


@pytest.mark.parametrize("builder", BAD_CHAINS.values(), ids=BAD_CHAINS.keys())
async def test_bad_chain_is_dropped_signalled_and_the_next_request_served(builder):
    echo = Echo()
    async with FakeVirtqueue(echo, num=8) as fv:
        fv.driver.free_heads[:] = []  # the builders write raw descriptors themselves
        head = builder(fv)
        fv.driver.publish(head)
        fv.driver.kick()
        await until(lambda: fv.queue.stats.broken == 1)
        assert fv.driver.read_err() == 1  # SET_VRING_ERR's eventfd was signalled
        assert echo.requests == []
        assert fv.driver.used_idx == 0  # nothing bogus was completed
        # The queue keeps serving: make a good request with fresh descriptors.
        fv.driver.free_heads[:] = [7]
        good = fv.driver.add_chain([b"ok"], [16])
        fv.driver.kick(force=True)
        assert await fv.driver.wait(good) == 4
        assert good.data == b"<ok>"
        assert fv.driver.used_idx == 1 and fv.queue.stats.broken == 1


async def test_avail_index_jumping_past_the_ring_stops_the_queue():
    echo = Echo()
    async with FakeVirtqueue(echo, num=8) as fv:
        fv.driver._set_u16(fv.driver.avail_gpa + 2, fv.num + 1)
        fv.driver.kick(force=True)
        await until(lambda: fv.queue.broken)
        assert fv.driver.read_err() == 1
        assert echo.requests == [] and fv.driver.used_idx == 0
        # GET_VRING_BASE still answers, and the ring can be restarted from a sane base.
        assert await fv.queue.stop(1.0) == 0
        assert not fv.queue.broken


async def test_rings_outside_memory_are_refused():
    async with FakeVirtqueue(Echo()) as fv:
        q = fv.queue
        with pytest.raises(VirtqueueError, match="not in guest memory"):
            q.set_addresses(fv.driver.desc_uva, fv.driver.avail_uva, 0xDEAD0000)
        assert not q.started
        assert fv.driver.read_err() == 1
        with pytest.raises(VirtqueueError, match="misaligned"):
            q.set_addresses(fv.driver.desc_uva + 8, fv.driver.avail_uva, fv.driver.used_uva)
        # The used ring's last bytes past the end of its region.
        region = fv.ram.regions[0]
        with pytest.raises(VirtqueueError):
            q.set_addresses(fv.driver.desc_uva, fv.driver.avail_uva,
                            region.uva + region.size - 64)
        q.set_addresses(fv.driver.desc_uva, fv.driver.avail_uva, fv.driver.used_uva)
        assert q.started
        req = fv.driver.add_chain([b"x"], [8])
        fv.driver.kick(force=True)
        assert await fv.driver.wait(req) == 3


# --- notifications -----------------------------------------------------------------------


async def test_event_idx_publishes_avail_event_and_lets_the_driver_skip_kicks():
    echo = Echo()
    async with FakeVirtqueue(echo, event_idx=True) as fv:
        d = fv.driver
        first = d.add_chain([b"a"], [8])
        assert d.kick()
        second = d.add_chain([b"b"], [8])
        # The device has not run yet, so avail_event still says "kick at 0": no need.
        assert not d.kick()
        await d.wait(first)
        await d.wait(second)
        assert echo.requests == [[b"a"], [b"b"]]  # the one kick fetched both
        assert d.avail_event == 2 == fv.queue.last_avail_idx
        third = d.add_chain([b"c"], [8])
        assert d.kick()  # avail_event 2 was crossed
        await d.wait(third)
        assert d.stats.kicks == 2 and d.stats.kicks_suppressed == 1


async def test_event_idx_calls_only_when_used_event_is_crossed():
    echo = Echo()
    async with FakeVirtqueue(echo, event_idx=True) as fv:
        d = fv.driver
        fv.driver._loop.remove_reader(d.call_fd)  # poll the used ring instead of the call fd
        d.used_event = 3  # "call me when used idx passes 3"
        for i in range(3):
            d.add_chain([bytes([i])], [8])
            d.kick(force=True)
            await until(lambda i=i: d.used_idx == i + 1)
            await settle()
            assert _eventfd_count(d.call_fd) == 0
        d.add_chain([b"x"], [8])
        d.kick(force=True)
        await until(lambda: d.used_idx == 4)
        await settle()
        assert _eventfd_count(d.call_fd) == 1
        assert vring_need_event(3, 4, 3) and not vring_need_event(3, 3, 2)
        d.collect_used()


async def test_without_event_idx_no_interrupt_suppresses_calls():
    echo = Echo()
    async with FakeVirtqueue(echo, event_idx=False) as fv:
        d = fv.driver
        req = d.add_chain([b"1"], [8])
        assert d.kick()
        await d.wait(req)
        assert d.stats.calls == 1
        assert d.avail_event == 0  # the EVENT_IDX fields are left alone
        fv.driver._loop.remove_reader(d.call_fd)
        d.set_no_interrupt(True)
        d.add_chain([b"2"], [8])
        d.kick()
        await until(lambda: d.used_idx == 2)
        await settle()
        assert _eventfd_count(d.call_fd) == 0
        d.set_no_interrupt(False)
        d.add_chain([b"3"], [8])
        d.kick()
        await until(lambda: d.used_idx == 3)
        await settle()
        assert _eventfd_count(d.call_fd) == 1
        d.collect_used()


def _eventfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


async def test_call_fd_replaced_while_requests_are_in_flight():
    deferred = Deferred()
    async with FakeVirtqueue(deferred) as fv:
        d = fv.driver
        req = d.add_chain([b"q"], [8])
        d.kick()
        await until(lambda: deferred.items)
        old_watch = d.call_fd
        new = os.eventfd(0, os.EFD_NONBLOCK)
        fv.queue.set_call_fd(os.dup(new))  # the queue closes the fd it had
        deferred.items[0][1].send(b"done")
        await until(lambda: d.used_idx == 1)
        await settle()
        assert _eventfd_count(new) == 1
        assert _eventfd_count(old_watch) == 0
        d.collect_used()
        assert req.data == b"done"
        os.close(new)


# --- sinks ---------------------------------------------------------------------------


async def test_sink_drop_completes_with_what_was_reserved():
    deferred = Deferred()
    async with FakeVirtqueue(deferred) as fv:
        reqs = [fv.driver.add_chain([b"x"], [4, 16]) for _ in range(4)]
        fv.driver.kick()
        await until(lambda: len(deferred.items) == 4)
        (_, a), (_, b), (_, c), (_, e) = deferred.items
        scatter(a.reserve(11), b"flushed-err")
        a.drop()  # a flushed request: the chain still comes back, with the reserved bytes
        b.send(b"y" * 21)  # more than the 20 writable bytes: nothing bogus, length 0
        c.send(b"ok")
        c.send(b"again")  # a second completion is ignored
        views = e.reserve(100)  # clamped to the capacity
        assert sum(len(v) for v in views) == 20
        e.commit(7)
        lengths = [await fv.driver.wait(r) for r in reqs]
        assert lengths == [11, 0, 2, 7]
        assert reqs[0].data == b"flushed-err" and reqs[2].data == b"ok"
        assert fv.driver.used_idx == 4


async def test_a_guest_cannot_queue_more_than_the_ring_size():
    deferred = Deferred()
    async with FakeVirtqueue(deferred, num=8) as fv:
        d = fv.driver
        reqs = [d.add_chain([bytes([i])], [8]) for i in range(8)]
        d.kick(force=True)
        await until(lambda: len(deferred.items) == 8)
        # A misbehaving driver re-posts a head still in flight.
        d.publish(reqs[0].head)
        d.kick(force=True)
        await asyncio.sleep(0.02)
        assert len(deferred.items) == 8 and fv.queue.inflight == 8
        deferred.items[3][1].send(b"r")
        await until(lambda: len(deferred.items) == 9)  # resumed once one completed
        assert fv.queue.last_avail_idx == 9
        d._loop.remove_reader(d.call_fd)  # head 0 comes back twice; don't account it
        for _, sink in deferred.items:
            if not sink.done:
                sink.send(b"r")
        await until(lambda: fv.queue.inflight == 0)


# --- stop / GET_VRING_BASE -----------------------------------------------------------------


async def test_stop_waits_for_in_flight_requests_and_returns_last_avail():
    deferred = Deferred()
    async with FakeVirtqueue(deferred) as fv:
        reqs = [fv.driver.add_chain([b"s"], [8]) for _ in range(3)]
        fv.driver.kick()
        await until(lambda: len(deferred.items) == 3)
        stopping = asyncio.ensure_future(fv.queue.stop(5.0))
        await asyncio.sleep(0.05)
        assert not stopping.done()
        for _, sink in deferred.items:
            sink.send(b"late")
        assert await stopping == 3
        assert fv.driver.used_idx == 3  # published before the ring stopped
        fv.driver.collect_used()
        assert all(r.data == b"late" for r in reqs)
        # Stopped: new requests are not taken.
        fv.driver.add_chain([b"t"], [8])
        fv.driver.kick(force=True)
        await asyncio.sleep(0.05)
        assert len(deferred.items) == 3


async def test_completion_after_a_timed_out_stop_is_discarded():
    deferred = Deferred()
    async with FakeVirtqueue(deferred) as fv:
        fv.driver.add_chain([b"s"], [8])
        fv.driver.kick()
        await until(lambda: deferred.items)
        assert await fv.queue.stop(0.05) == 1
        deferred.items[0][1].send(b"too late")
        await settle()
        assert fv.driver.used_idx == 0


async def test_resume_from_base_reads_used_idx_from_the_ring():
    echo = Echo()
    async with FakeVirtqueue(echo, num=8) as fv:
        d = fv.driver
        for i in range(11):  # wrap the 8-entry ring
            r = d.add_chain([bytes([i])], [8])
            d.kick()
            await d.wait(r)
        base = await fv.queue.stop(1.0)
        assert base == 11
        # A new queue object (as after a reconnect) resumes from SET_VRING_BASE.
        q = SplitVirtqueue(0, echo)
        q.set_num(8)
        q.set_base(base)
        q.set_event_idx(True)
        q.set_memory(fv.memory)
        q.set_addresses(d.desc_uva, d.avail_uva, d.used_uva)
        q.set_call_fd(os.dup(d.call_fd))
        q.set_enabled(True)
        q.set_kick_fd(os.dup(d.kick_fd))
        r = d.add_chain([b"after"], [16])
        d.kick(force=True)
        assert await d.wait(r) == 7 and r.data == b"<after>"
        assert d.used_idx == 12
        q.close()


# --- 9P through a Session ------------------------------------------------------------------


@pytest.fixture
def export(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    return d


@pytest.mark.parametrize("event_idx", [True, False])
async def test_ninep_session_large_io_and_readdir(export, event_idx):
    payload = os.urandom(512 * KIB)
    (export / "big").write_bytes(payload)
    (export / "sub").mkdir()
    names = {f"entry-{i:04d}-{'x' * 40}" for i in range(300)}
    for n in names:
        (export / "sub" / n).write_bytes(b"")
    session = Session(LocalBackend(str(export)), SessionConfig(msize=1 << 20))
    async with FakeVirtqueue(session.submit, event_idx=event_idx, ram_size=128 << 20,
                             msize=1 << 20) as fv:
        n = fv.ninep
        assert (await n.version()).msize == 1 << 20
        root = await n.attach()
        f = await n.walk(root, ["big"])
        await n.lopen(f)
        assert await n.read(f, 0, 512 * KIB) == payload  # 1 + 128 writable segments
        w = await n.walk(root, [])
        await n.lcreate(w, "copy", p.DOTL_RDWR)
        assert await n.write(w, 0, payload) == 512 * KIB  # 1 + 128 readable segments
        d = await n.walk(root, ["sub"])
        await n.lopen(d)
        got = await n.readdir_all(d, count=16 * 4096)
        assert set(got) - {".", ".."} == names
        for fid in (f, w, d, root):
            await n.clunk(fid)
    await session.close()
    assert (export / "copy").read_bytes() == payload


async def test_ninep_errors_and_concurrency_through_the_ring(export):
    for i in range(64):
        (export / f"f{i}").write_bytes(bytes([i]) * (8 * KIB))
    session = Session(LocalBackend(str(export)), SessionConfig())
    async with FakeVirtqueue(session.submit) as fv:
        n = fv.ninep
        await n.version()
        root = await n.attach()
        with pytest.raises(FileNotFoundError):
            await n.walk(root, ["missing"])
        fids = []
        for i in range(64):
            fid = await n.walk(root, [f"f{i}"])
            await n.lopen(fid)
            fids.append(fid)
        data = await asyncio.gather(*(n.read(fid, 0, 8 * KIB) for fid in fids))
        assert data == [bytes([i]) * (8 * KIB) for i in range(64)]
    await session.close()
