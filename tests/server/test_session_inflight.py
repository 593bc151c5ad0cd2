"""Requests in flight: completion order, Tflush, disconnects.

A :class:`GatedBackend` holds ``statfs``/``readlink`` until its gate opens,
so "slow" means "blocked until the test says so"; nothing is timed.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

from ninep.backends.local import LocalBackend
from ninep.protocol import ninep as p
from ninep.server.session import Session, SessionConfig
from session_helpers import Direct


async def until(predicate, attempts: int = 1000) -> None:
    """Yield to the loop until *predicate()* holds (bounded, not timed)."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def test_a_slow_request_does_not_block_a_fast_one(serve, gated) -> None:
    client = await (await serve(backend=gated)).connect()
    root = await client.attach()
    _, slow = client.start(p.Tstatfs(root))
    await gated.wait_entered(1)
    for _ in range(3):
        assert (await client.getattr(root)).qid.type == p.QTDIR
    assert not slow.done()
    gated.gate.set()
    assert isinstance(await slow, p.Rstatfs)


async def test_many_requests_in_flight_all_answer(serve, gated) -> None:
    client = await (await serve(backend=gated)).connect()
    root = await client.attach()
    slow = [client.start(p.Tstatfs(root))[1] for _ in range(20)]
    fast = [client.start(p.Tgetattr(root, p.GETATTR_BASIC))[1] for _ in range(20)]
    await asyncio.gather(*fast)
    await gated.wait_entered(20)
    assert not any(f.done() for f in slow)
    gated.gate.set()
    assert all(isinstance(r, p.Rstatfs) for r in await asyncio.gather(*slow))


async def test_flush_of_a_started_request_lets_it_finish_first(serve, gated) -> None:
    client = await (await serve(backend=gated)).connect()
    root = await client.attach()
    tag, slow = client.start(p.Tstatfs(root))
    await gated.wait_entered(1)
    _, flush = client.start(p.Tflush(tag))
    await client.getattr(root)
    assert not flush.done()  # Rflush waits for the started request
    gated.gate.set()
    assert await flush == p.Rflush()
    assert slow.done() and isinstance(slow.result(), p.Rstatfs)  # it answered before Rflush


async def test_flush_of_a_queued_request_cancels_it(gated) -> None:
    """With one request admitted at a time, the second one has not started:
    Tflush cancels it at once, it never reaches the back end, and its tag is
    free again.  (Over a stream the transport stops reading at the cap, so a
    queued request only exists on transports without back-pressure, such as a
    virtqueue: hence a direct session here.)"""
    session = Session(gated, SessionConfig(max_inflight=1))
    direct = Direct(session)
    await direct.ok(p.Tattach(0, p.NOFID, "root", "", 0))
    first = direct.submit(p.encode(p.Tstatfs(0), 1))
    await gated.wait_entered(1)
    queued = direct.submit(p.encode(p.Treadlink(0), 2))
    assert await direct.call(p.Tflush(2), tag=3) == p.Rflush()
    assert not first.reply.done()
    gated.gate.set()
    assert isinstance(p.decode(await first.reply)[1], p.Rstatfs)
    assert gated.entered == 1  # the flushed readlink never reached the back end
    # Dropped (a virtqueue completes the chain with the EINTR written into it).
    assert queued.dropped and not queued.reply.done()
    assert isinstance(await direct.call(p.Tgetattr(0, p.GETATTR_BASIC), tag=2), p.Rgetattr)
    await session.close()


async def test_flush_of_an_unknown_tag_answers_at_once(served) -> None:
    assert await served.rpc(p.Tflush(1234)) == p.Rflush()


async def test_flushed_request_never_answers_after_rflush(serve, gated) -> None:
    """Several flushes in a row: every Rflush comes after its request's reply
    (the client resolves futures in arrival order)."""
    client = await (await serve(backend=gated)).connect()
    root = await client.attach()
    started = [client.start(p.Tstatfs(root)) for _ in range(5)]
    await gated.wait_entered(5)
    flushes = [client.start(p.Tflush(tag))[1] for tag, _ in started]
    gated.gate.set()
    for (_, reply), flush in zip(started, flushes):
        assert await flush == p.Rflush()
        assert reply.done()


async def test_a_tag_in_use_is_refused(serve, gated) -> None:
    client = await (await serve(backend=gated)).connect()
    root = await client.attach()
    tag, slow = client.start(p.Tstatfs(root))
    await gated.wait_entered(1)
    # (The client now waits on the duplicate under this tag, not on `slow`.)
    duplicate = client.start_frame(p.encode(p.Tgetattr(root, 0), tag), tag)
    assert await duplicate == p.Rlerror(errno.EINVAL)
    assert not slow.done()
    gated.gate.set()
    assert (await client.getattr(root)).qid.type == p.QTDIR


async def test_disconnect_with_requests_in_flight_releases_every_fd(
        serve, gated, export: Path, fd_count) -> None:
    (export / "f").write_text("data")
    served = await serve(SessionConfig(max_inflight=3), backend=gated)
    before = fd_count()
    client = await served.connect()
    root = await client.attach()
    for _ in range(4):
        await client.walk_open(root, ["f"])
    dirfid = await client.walk_open(root, [])
    for _ in range(5):  # three start, two wait for admission
        client.start(p.Tstatfs(dirfid))
    await gated.wait_entered(3)
    session, = served.server.sessions
    await client.close()
    await until(lambda: session.closed)
    gated.gate.set()
    await served.server.join_connections()
    assert fd_count() == before
    assert gated.entered == 3  # the queued ones were cancelled, not run


async def test_server_close_releases_every_fd(serve, export: Path, fd_count) -> None:
    (export / "f").write_text("data")
    backend = LocalBackend(str(export))
    before = fd_count()
    served = await serve(backend=backend)
    client = await served.connect()
    root = await client.attach()
    for _ in range(3):
        await client.walk_open(root, ["f"])
    await served.server.close()
    assert served.server.sessions == []
    await client.close()
    assert fd_count() == before  # listener, connection and the open files


async def test_flush_of_a_request_held_by_the_stream_transport(serve, gated) -> None:
    """At max_inflight the stream transport holds further frames back; a Tflush
    still gets through at once, and the request it names is dropped unanswered."""
    client = await (await serve(SessionConfig(max_inflight=1), backend=gated)).connect()
    root = await client.attach()
    _, first = client.start(p.Tstatfs(root))
    await gated.wait_entered(1)
    held_tag, held = client.start(p.Treadlink(root))
    assert await asyncio.wait_for(client.rpc(p.Tflush(held_tag)), 5) == p.Rflush()
    gated.gate.set()
    assert isinstance(await first, p.Rstatfs)
    assert isinstance(await client.getattr(root), p.Rgetattr)
    assert gated.entered == 1 and not held.done()


class _SlowReads(LocalBackend):
    """Reads wait for a gate, so a Tclunk can arrive while one is running."""

    def __init__(self, export: str) -> None:
        super().__init__(export)
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()

    async def read_into(self, node, offset, views):  # type: ignore[override]
        self.reading.set()
        await self.gate.wait()
        return await super().read_into(node, offset, views)


async def test_clunk_waits_for_a_read_on_the_same_fid(export: Path) -> None:
    """The fd must not close (and its number be reused) under a running read."""
    (export / "f").write_bytes(b"payload")
    backend = _SlowReads(str(export))
    direct = Direct(Session(backend))
    await direct.ok(p.Tattach(0, p.NOFID, "root", "", 0))
    await direct.ok(p.Twalk(0, 1, ["f"]))
    await direct.ok(p.Tlopen(1, p.DOTL_RDONLY))
    read = direct.submit(p.encode(p.Tread(1, 0, 100), 5))
    await backend.reading.wait()
    clunk = direct.submit(p.encode(p.Tclunk(1), 6))
    await asyncio.sleep(0.05)
    assert not clunk.reply.done()  # held until the read is through
    backend.gate.set()
    assert p.decode(await read.reply) == (5, p.Rread(b"payload"))
    assert p.decode(await clunk.reply) == (6, p.Rclunk())
    await direct.session.close()
    await backend.close()
