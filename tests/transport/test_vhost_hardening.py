"""Regression tests for what the vhost-user fuzz (tests/fuzz/vhost_engine.py) found:
one test per bug, each failing without its fix."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import resource
import struct

import pytest

from ninep.protocol import ninep as p
from ninep.testing.fake_virtqueue import FakeVirtqueue, PendingRequest
from ninep.testing.vhost_frontend import ACKED, VhostUserFrontend
from ninep.protocol.framing import scatter
from ninep.transport.vhost import virtqueue as vq
from ninep.transport.vhost.virtqueue import (CHAINS_PER_PASS, DESC, MAX_CHAIN, VIRTQ_DESC_F_INDIRECT,
                                             VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE)
from ninep.transport.vhost_user import DEVICE_FEATURES

from test_virtqueue import Deferred, Echo, until
from test_vhost_user import _mapped, count, eventfd, guest, server  # noqa: F401 (fixtures)

MIB = 1 << 20


def _raw_request(g, size_field: int, pieces: list[tuple[int, int]],
                 reply: int = 64) -> PendingRequest:
    """Make available one indirect chain: readable *pieces* (gpa, len) whose first bytes
    are a Tgetattr header claiming *size_field* bytes, then *reply* writable bytes."""
    d, ram = g.driver, g.ram
    ram.write(pieces[0][0], struct.pack("<IBH", size_field, p.Tgetattr.TYPE, 1))
    out = ram.alloc(reply)
    table = ram.alloc(16 * (len(pieces) + 1), 16)
    for i, (gpa, n) in enumerate(pieces):
        d.write_desc(i, gpa, n, VIRTQ_DESC_F_NEXT, i + 1, table=table)
    d.write_desc(len(pieces), out, reply, VIRTQ_DESC_F_WRITE, table=table)
    head = d.free_heads.pop()
    d.write_desc(head, table, 16 * (len(pieces) + 1), VIRTQ_DESC_F_INDIRECT)
    req = PendingRequest(head, [], [(out, reply)], [head], (table, 16 * (len(pieces) + 1)),
                         asyncio.get_running_loop().create_future())
    d.pending[head] = req
    d.publish(head)
    d.kick(force=True)
    return req


async def _returned(g, req: PendingRequest) -> int:
    """The used.len of *req*, looking at the used ring (the call fd may not be ours)."""
    def done() -> bool:
        g.driver.collect_used()
        return req.future.done()

    await until(done)
    return req.length


async def test_a_request_longer_than_msize_is_returned_unanswered_not_copied(server, guest):
    """Bug: the session copied a request of any length, so a chain naming the same 32 MiB
    127 times made the server allocate 4 GiB per request.  Now a request longer than the
    msize comes back with used.len 0 (and an error signal) without reaching the session."""
    g = guest(ram_size=64 * MIB)
    await g.connect(server.path)
    d = g.driver
    half = g.ram.regions[1].gpa
    g.ram.reserve(half, 16)
    region = g.ram.regions[1].size
    pieces = [(half, region)] * 127  # 127 * 32 MiB: just under 4 GiB
    total = sum(n for _, n in pieces)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert await _returned(g, _raw_request(g, total, pieces)) == 0
    assert count(d.err_fd) == 1
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kib < 512 * 1024  # nothing near 4 GiB was allocated
    # Just over the msize (1 MiB here) is refused too; the negotiated msize counts.
    assert await _returned(g, _raw_request(g, MIB + 16, [(half, MIB + 16)])) == 0
    assert (await g.ninep.version(8192)).msize == 8192
    assert await _returned(g, _raw_request(g, 9000, [(half, 9000)])) == 0
    within = _raw_request(g, 8000, [(half, 8000)])  # within the msize: the session answers
    assert await _returned(g, within) == 11
    assert p.decode(within.data) == (1, p.Rlerror(errno.EINVAL))  # a malformed Tgetattr


async def test_chain_walks_are_bounded_and_a_kick_is_taken_a_pass_at_a_time(monkeypatch):
    """Bug: a direct chain could be as long as the ring (32768), so a guest that filled a
    32768-entry ring with looping chains stalled the event loop for minutes.  Now a walk
    stops after MAX_CHAIN descriptors and CHAINS_PER_PASS chains are taken per loop pass."""
    echo = Echo()
    num = 32768
    async with FakeVirtqueue(echo, num=num, ram_size=16 * MIB) as fv:
        buf = fv.ram.alloc(8)
        for i in range(num):  # one long loop through every descriptor
            fv.driver.write_desc(i, buf, 8, VIRTQ_DESC_F_NEXT, (i + 1) % num)
        chains = 2 * CHAINS_PER_PASS + 3
        for head in range(chains):
            fv.driver.publish(head)
        descriptors = 0  # read while walking

        class CountingDesc:
            size = vq.DESC.size

            @staticmethod
            def unpack_from(buf: memoryview, offset: int = 0) -> tuple[int, int, int, int]:
                nonlocal descriptors
                descriptors += 1
                return DESC.unpack_from(buf, offset)

        monkeypatch.setattr(vq, "DESC", CountingDesc)
        fv.queue.process_avail()  # one pass, as one kick's callback runs it
        assert fv.queue.stats.broken == CHAINS_PER_PASS
        assert descriptors == CHAINS_PER_PASS * (MAX_CHAIN + 1)  # the walk stops at the next one
        await until(lambda: fv.queue.stats.broken == chains)  # the rest, in later passes
        assert fv.driver.read_err() == chains and echo.requests == []


async def test_kick_call_and_err_fds_must_be_eventfds(server):
    """Bug: any fd was taken.  A pipe at EOF as the kick fd made the server spin on it
    (always readable, never an event); a full pipe as the call fd blocked the whole server
    in write().  Now they are refused, and the server closes them."""
    fe = await VhostUserFrontend.connect(server.path)
    try:
        r, w = os.pipe()
        os.close(w)
        assert await fe.set_vring_kick(0, r) == 1  # read end at EOF
        os.close(r)
        r, w = os.pipe()
        assert await fe.set_vring_call(0, w) == 1
        os.close(w)
        assert os.read(r, 1) == b""  # the server's copy of the write end is gone too
        os.close(r)
        f = os.open("/dev/null", os.O_RDWR)
        assert await fe.set_vring_err(0, f) == 1
        os.close(f)
        efd = eventfd()
        assert await fe.set_vring_err(0, efd) == 0
        os.close(efd)
        assert await fe.get_features() == DEVICE_FEATURES  # the connection carries on
    finally:
        fe.close()


async def test_call_fd_is_made_non_blocking(server, guest):
    """Bug: the call and error fds were written as they came; a blocking eventfd whose
    counter the front end had filled would have blocked the server in write() for good.
    Now they are switched to non-blocking, and a full one only loses that notification."""
    g = guest()
    await g.connect(server.path)
    full = os.eventfd(0, os.EFD_CLOEXEC)  # blocking
    os.eventfd_write(full, 0xFFFFFFFFFFFFFFFE)
    assert await g.frontend.set_vring_call(0, full) == 0
    assert not os.get_blocking(full)  # the file description is shared with the server's copy
    _, req = g.ninep.submit(p.Tversion(8192, p.VERSION_9P2000L), reply_size=64)
    assert await _returned(g, req) == 21  # Rversion; the server did not block on the call fd
    os.close(full)


async def test_zero_length_writable_then_readable_breaks_the_order():
    """Bug: the readable-after-writable check looked at writable *views*, and a zero-length
    writable descriptor has none, so a readable one after it was accepted."""
    echo = Echo()
    async with FakeVirtqueue(echo, num=8) as fv:
        fv.driver.free_heads[:] = []
        fv.driver.write_desc(0, fv.ram.alloc(8), 0, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1)
        fv.driver.write_desc(1, fv.ram.alloc(8), 8, 0, 0)
        fv.driver.publish(0)
        fv.driver.kick(force=True)
        await until(lambda: fv.queue.stats.broken == 1)
        assert echo.requests == [] and fv.driver.used_idx == 0


async def test_a_reply_larger_than_the_writable_buffers_returns_nothing():
    """Bug: reserve() clamped to the chain's writable bytes, and commit()/drop() then
    returned a truncated frame whose size field disagreed with used.len (a flushed
    request's 11-byte Rlerror in a 7-byte buffer came back as 7 bytes)."""
    deferred = Deferred()
    async with FakeVirtqueue(deferred) as fv:
        reqs = [fv.driver.add_chain([b"x"], [7]) for _ in range(3)]
        fv.driver.kick()
        await until(lambda: len(deferred.items) == 3)
        (_, flushed), (_, read), (_, fits) = deferred.items
        scatter(flushed.reserve(11), p.encode_rlerror(5, 4))
        flushed.drop()
        views = read.reserve(11 + 100)
        scatter(views, p.encode_rread_header(6, 100))
        read.commit(11 + 100)
        scatter(fits.reserve(7), p.encode(p.Rclunk(), 7))
        fits.commit(7)
        assert [await fv.driver.wait(r) for r in reqs] == [0, 0, 7]


async def test_disconnect_releases_guest_memory_even_with_failed_requests_in_cycles(
        server, export, guest):
    """Bug: a request that failed in the back end left its frames (holding views of guest
    RAM) in a reference cycle with the exception, so after a disconnect the mapping and
    its fd stayed until the cyclic collector happened to run.  The device now collects
    when a region is still in use after every request ended."""
    (export / "dir").mkdir()
    g = guest()
    gc.collect()  # what earlier tests left behind is not ours to count
    own = _mapped("ninep-guest-ram")
    gc.disable()
    try:
        await g.connect(server.path)
        n = g.ninep
        await n.version()
        root = await n.attach()
        for _ in range(3):
            with pytest.raises(FileExistsError):
                await n.rpc(p.Tmkdir(root, "dir", 0o755, 0), reply_size=64)
        g.disconnect()
        for _ in range(200):
            if _mapped("ninep-guest-ram") == own:
                break
            await asyncio.sleep(0.01)
        assert _mapped("ninep-guest-ram") == own
    finally:
        gc.enable()


async def test_a_replaced_kick_fd_is_no_longer_watched(server, guest):
    """Bug: replacing the kick fd of a running ring closed the old fd before taking it out
    of the event loop (the attribute was cleared first, so the reader was never removed).
    The stale epoll entry later made a SET_VRING_ADDR fail with EEXIST, which dropped the
    connection, and the loop kept a reader on a closed fd number that the next socket or
    eventfd could reuse.  Now the old fd is unwatched, then closed."""
    g = guest()
    await g.connect(server.path)
    d = g.driver
    await g.ninep.version()
    old_kick, new_kick = d.kick_fd, eventfd()
    assert await g.frontend.set_vring_kick(0, new_kick) == 0
    _, req = g.ninep.submit(p.Tversion(8192, p.VERSION_9P2000L), reply_size=64, kick=False)
    os.eventfd_write(old_kick, 1)  # the replaced fd: nobody listens to it any more
    await asyncio.sleep(0.05)
    assert not req.future.done()
    os.eventfd_write(new_kick, 1)
    assert await d.wait(req) == 21
    # Stopping and restarting the ring with the first fd again (QEMU resends its
    # notifier after a stop) works: no stale registration is in the way.
    base = await g.shutdown()
    fe = g.frontend
    assert await fe.set_vring_base(0, base, ACKED) == 0
    assert await fe.set_vring_kick(0, old_kick) == 0
    assert await fe.set_vring_call(0, d.call_fd) == 0
    assert await fe.set_vring_enable(0, True) == 0
    assert (await g.ninep.version()).msize == 512000
    os.close(new_kick)
