"""The vhost-user back end, in process, on a real Unix socket, driven by the Python
front end the way QEMU 10.2 drives it (docs: /work/shared/reference trace)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

import pytest

from ninep.backends.local import LocalBackend
from ninep.protocol import ninep as p
from ninep.server.session import SessionConfig
from ninep.testing.fake_virtqueue import split_sizes
from ninep.testing.vhost_frontend import ACKED, PLAIN, VhostUserFrontend, VhostUserGuest
from ninep.transport.vhost.memory import MemoryRegion
from ninep.transport.vhost.messages import (CONFIG_HEADER, MEMORY_HEADER, PROTOCOL_FEATURES, U64,
                                            VIRTIO_RING_F_EVENT_IDX, VRING_STATE, Request)
from ninep.transport.vhost.virtqueue import VIRTQ_DESC_F_NEXT
from ninep.transport.vhost_user import DEVICE_FEATURES, serve_vhost_user, virtio_9p_config

KIB = 1024

#: The control messages of the reference trace (vhost-user-9p-qemu-10.2-trace.log):
#: (name, flags, payload size).  The 9P traffic sits between start-up and stop.
TRACE_STARTUP = [
    ("GET_FEATURES", 0x1, 0), ("GET_PROTOCOL_FEATURES", 0x1, 0),
    ("SET_PROTOCOL_FEATURES", 0x1, 8), ("GET_QUEUE_NUM", 0x1, 0), ("SET_OWNER", 0x1, 0),
    ("GET_FEATURES", 0x1, 0), ("SET_VRING_CALL", 0x9, 8), ("SET_VRING_ERR", 0x9, 8),
    ("GET_CONFIG", 0x1, 18), ("GET_CONFIG", 0x1, 18), ("GET_CONFIG", 0x1, 18),
    ("GET_CONFIG", 0x1, 18), ("GET_CONFIG", 0x1, 18), ("SET_FEATURES", 0x1, 8),
    ("SET_MEM_TABLE", 0x9, 40), ("SET_VRING_NUM", 0x1, 8), ("SET_VRING_BASE", 0x1, 8),
    ("SET_VRING_ADDR", 0x1, 40), ("SET_VRING_KICK", 0x9, 8), ("SET_VRING_CALL", 0x9, 8),
    ("SET_VRING_ENABLE", 0x9, 8), ("SET_VRING_CALL", 0x9, 8),
]
TRACE_STOP = [("SET_VRING_ENABLE", 0x9, 8), ("GET_VRING_BASE", 0x1, 8)]
#: The 9P requests of the trace, with their reply sizes where they do not depend on the export.
TRACE_9P = [("Tversion", 21), ("Tattach", 20), ("Tgetattr", 160), ("Tattach", 20),
            ("Tgetattr", 160), ("Twalk", 9), ("Tlopen", 24), ("Tgetattr", 160),
            ("Treaddir", None), ("Tclunk", 7), ("Tclunk", 7), ("Tclunk", 7)]
#: QEMU's guest RAM and ring addresses in the trace (uva != gpa).
TRACE_REGION = MemoryRegion(gpa=0, size=0x20000000, uva=0x7FF7CBFFF000, mmap_offset=0)
TRACE_RINGS = (0x2C7E000, 0x2C7E800, 0x2C7E940)  # gpa of desc, avail, used

TRACE_FILE = Path(__file__).resolve().parents[3] / "shared/reference/vhost-user-9p-qemu-10.2-trace.log"


def test_the_replayed_sequence_is_the_reference_trace():
    """Keep the constants above honest against the trace file where it is available."""
    for candidate in (TRACE_FILE, Path("/work/shared/reference") / TRACE_FILE.name):
        if candidate.exists():
            text = candidate.read_text()
            break
    else:
        pytest.skip("reference trace not available")
    control = [(m[1], int(m[2], 16), int(m[3]))
               for m in re.finditer(r"\] (\w+)\s+flags=(0x[0-9a-f]+) size=(\d+)", text)]
    assert control == TRACE_STARTUP + TRACE_STOP
    ninep = [(m[1], int(m[2])) for m in re.finditer(r"9P (\w+) -> (\d+) bytes", text)]
    assert [n for n, _ in ninep] == [n for n, _ in TRACE_9P]
    assert all(size is None or size == got for (_, size), (_, got) in zip(TRACE_9P, ninep))
    assert "out=1 in=17 indirect=True 9P Treaddir" in text
    assert "-> 0x170000001" in text and "-> 0x209" in text and "last_avail=12" in text


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def export(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    return d


class Server:
    """serve_vhost_user in this process, on a socket in tmp_path."""

    def __init__(self, path: str, backend: LocalBackend, task: asyncio.Task) -> None:
        self.path = path
        self.backend = backend
        self.task = task


async def start_server(tmp_path, export, tag="vu9p", backend=None, msize=1 << 20,
                       name="vu.sock") -> Server:
    config = SessionConfig(msize=msize)
    backend = backend or LocalBackend(str(export), load=config.load)
    await backend.start()
    path = str(tmp_path / name)
    task = asyncio.ensure_future(serve_vhost_user(
        lambda: backend, socket_path=path, listen_fd=None, tag=tag, session_config=config))
    return Server(path, backend, task)


@pytest.fixture
async def server(tmp_path, export):
    srv = await start_server(tmp_path, export)
    yield srv
    srv.task.cancel()
    await asyncio.gather(srv.task, return_exceptions=True)
    await srv.backend.close()
    assert not os.path.exists(srv.path)  # the socket we created is removed


@pytest.fixture
def guest():
    guests: list[VhostUserGuest] = []

    def make(**kwargs) -> VhostUserGuest:
        g = VhostUserGuest.create(**kwargs)
        guests.append(g)
        return g

    yield make
    for g in guests:
        g.close()


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


# --- the reference trace --------------------------------------------------------------------


async def test_replay_of_the_qemu_trace(server, export, guest):
    for name in ("etc", "hello.txt", "data.bin"):
        (export / name).write_bytes(b"x") if "." in name else (export / name).mkdir()
    g = guest(layout=[TRACE_REGION], ram_size=TRACE_REGION.size, rings_at=TRACE_RINGS)
    early, spare = eventfd(), eventfd()
    await g.connect(server.path, early_call_fd=early, spare_call_fd=spare)
    fe, d, n = g.frontend, g.driver, g.ninep
    assert (d.desc_uva, d.used_uva, d.avail_uva) == (0x7FF7CEC7D000, 0x7FF7CEC7D940, 0x7FF7CEC7D800)
    assert g.config == b"\x04\x00vu9p"
    assert [s[:3] for s in fe.sent] == TRACE_STARTUP

    # The 9P conversation of the trace, each request one indirect descriptor.
    sizes = []

    async def rpc(msg, **kw):
        tag, req = n.submit(msg, **kw)
        assert len(req.out_buffers) == 1 and req.table is not None
        reply = await n.result(tag, req)
        sizes.append(d.used_log[-1])
        return reply

    rv = await rpc(p.Tversion(512000, p.VERSION_9P2000L), reply_size=512000)
    assert rv == p.Rversion(512000, p.VERSION_9P2000L)
    assert isinstance(await rpc(p.Tattach(0, p.NOFID, "root", "", 0)), p.Rattach)
    assert (await rpc(p.Tgetattr(0, p.GETATTR_BASIC))).qid.type == p.QTDIR
    assert isinstance(await rpc(p.Tattach(1, p.NOFID, "root", "", 0)), p.Rattach)
    assert isinstance(await rpc(p.Tgetattr(1, p.GETATTR_BASIC)), p.Rgetattr)
    assert await rpc(p.Twalk(1, 2, [])) == p.Rwalk([])
    assert isinstance(await rpc(p.Tlopen(2, p.DOTL_RDONLY | p.DOTL_DIRECTORY)), p.Rlopen)
    assert isinstance(await rpc(p.Tgetattr(2, p.GETATTR_BASIC)), p.Rgetattr)
    tag, req = n.submit(p.Treaddir(2, 0, 16 * 4096), in_sizes=[11] + [4096] * 16)
    assert len(req.out_buffers) == 1 and len(req.in_buffers) == 17  # 1 out + 17 in
    reply = await n.result(tag, req)
    sizes.append(d.used_log[-1])
    names = {e[3] for e in p.decode_dirents(reply.data)}
    assert names >= {"etc", "hello.txt", "data.bin"}
    for fid in (2, 1, 0):
        assert await rpc(p.Tclunk(fid)) == p.Rclunk()

    assert all(head == 0 for head, _ in sizes)  # as in the trace: head=0 every time
    expected = [size for _, size in TRACE_9P]
    assert [ln for _, ln in sizes][:8] == expected[:8] and [ln for _, ln in sizes][9:] == expected[9:]
    assert d.stats.calls >= 12 and count(early) == 0 and count(spare) == 0
    assert await g.shutdown() == 12  # last_avail=12, as in the trace
    assert [s[:3] for s in fe.sent[len(TRACE_STARTUP):]] == TRACE_STOP
    os.close(early)
    os.close(spare)


# --- control plane ------------------------------------------------------------------------


async def test_offered_features_queue_num_and_slots(server):
    fe = await VhostUserFrontend.connect(server.path)
    assert await fe.get_features() == DEVICE_FEATURES == 0x170000001
    assert await fe.get_protocol_features() == PROTOCOL_FEATURES == 0x8209
    assert await fe.get_queue_num() == 1
    assert await fe.get_max_mem_slots() == 32
    assert await fe.set_owner(flags=ACKED) == 0
    fe.close()


async def test_get_config_layout_and_sizes(tmp_path, export):
    tag = "t" * 250
    srv = await start_server(tmp_path, export, tag=tag)
    try:
        fe = await VhostUserFrontend.connect(srv.path)
        assert await fe.get_config(0, 252) == b"\xfa\x00" + b"t" * 250
        assert await fe.get_config(2, 4) == b"tttt"
        # Asking for more than the space has (but within 256 bytes): zero-padded.
        assert await fe.get_config(250, 6) == b"tt\x00\x00\x00\x00"
        assert await fe.get_config(0, 256) == b"\xfa\x00" + b"t" * 250 + bytes(4)
        # Beyond the 256-byte limit, or a size that disagrees with the payload: a size-0 reply.
        assert await fe.get_config(0, 257) == b""
        await fe.send(Request.GET_CONFIG, CONFIG_HEADER.pack(0, 6, 0) + bytes(2))
        assert await fe.recv_reply(Request.GET_CONFIG) == b""
        assert await fe.get_features() == DEVICE_FEATURES  # still talking
        fe.close()
    finally:
        srv.task.cancel()
        await asyncio.gather(srv.task, return_exceptions=True)


def test_tag_limits():
    assert virtio_9p_config("vu9p") == b"\x04\x00vu9p"
    assert len(virtio_9p_config("a" * 254)) == 256
    for bad in ("a" * 255, "é" * 128, ""):
        with pytest.raises(ValueError, match="--tag") as info:
            virtio_9p_config(bad)
        assert "\n" not in str(info.value)


async def test_long_tag_fails_before_listening(tmp_path):
    path = tmp_path / "never.sock"
    with pytest.raises(ValueError, match="--tag"):
        await serve_vhost_user(lambda: None, socket_path=str(path), listen_fd=None,
                               tag="x" * 255, session_config=None)
    assert not path.exists()


async def test_refused_unknown_and_malformed_messages_get_failure_replies(server, guest):
    fe = await VhostUserFrontend.connect(server.path)
    efd = eventfd()
    try:
        assert await fe.command(Request.SET_CONFIG, CONFIG_HEADER.pack(0, 2, 0) + b"\x01\x00",
                                flags=ACKED) == 1
        assert await fe.command(99, b"\0" * 8, flags=ACKED) == 1  # unknown, need_reply
        await fe.send(98, b"\0" * 3)  # unknown, no need_reply: logged, no reply
        assert await fe.command(Request.SET_LOG_BASE, U64.pack(0), flags=ACKED) == 1
        assert await fe.command(Request.SET_VRING_NUM, b"\0" * 4, flags=ACKED) == 1  # bad size
        assert await fe.set_vring_num(0, 100, flags=ACKED) == 1  # not a power of two
        assert await fe.set_vring_num(7, 128, flags=ACKED) == 1  # no such queue
        assert await fe.command(Request.SET_VRING_KICK, U64.pack(0), flags=ACKED) == 1  # no fd
        assert await fe.set_vring_kick(0, None) == 1  # polling is not offered
        assert await fe.command(Request.SET_VRING_CALL, U64.pack(0), [efd, efd], ACKED) == 1
        assert await fe.set_features(DEVICE_FEATURES | 1 << 40, flags=ACKED) == 1  # never offered
        assert await fe.set_protocol_features(1 << 1, flags=ACKED) == 1  # never offered
        g = guest()
        regions = MEMORY_HEADER.pack(2, 0) + b"".join(r.pack() for r in g.ram.regions)
        assert await fe.command(Request.SET_MEM_TABLE, regions, [g.ram.fd], ACKED) == 1  # 1 fd
        assert await fe.command(Request.SET_MEM_TABLE, regions[:40], [g.ram.fd] * 2, ACKED) == 1
        bogus = MemoryRegion(gpa=0, size=1 << 40, uva=0x1000, mmap_offset=0)  # beyond the memfd
        assert await fe.set_mem_table(g.ram, [bogus]) == 1
        assert await fe.set_vring_enable(0, True) == 0
        assert await fe.command(Request.SET_VRING_ENABLE, VRING_STATE.pack(0, 2), flags=ACKED) == 1
        assert await fe.rem_mem_reg(g.ram.regions[0]) == 1  # nothing to remove
        # After all that, the connection still works.
        assert await fe.get_features() == DEVICE_FEATURES
    finally:
        os.close(efd)
        fe.close()


@pytest.mark.parametrize("how", ["oversized", "torn", "get_vring_base_bad_size", "bad_get_size"])
async def test_a_broken_connection_is_dropped_and_the_next_front_end_served(server, guest, how):
    fe = await VhostUserFrontend.connect(server.path)
    if how == "oversized":
        await fe.send(Request.SET_FEATURES, b"", size=1 << 20)
    elif how == "torn":
        await fe.send(Request.SET_FEATURES, b"\0\0", size=8)
        fe.sock.shutdown(socket.SHUT_WR)
    elif how == "get_vring_base_bad_size":
        await fe.send(Request.GET_VRING_BASE, b"\0" * 4)
    else:
        await fe.send(Request.GET_QUEUE_NUM, b"\0" * 8, flags=PLAIN)
        assert await fe.recv_reply(Request.GET_QUEUE_NUM) == U64.pack(1)  # payload ignored
        await fe.send(Request.GET_VRING_BASE, VRING_STATE.pack(9, 0))  # no such queue
    data = await asyncio.wait_for(fe._loop.sock_recv(fe.sock, 100), 5)
    assert data == b""  # the back end hung up
    fe.close()
    g = guest()
    await g.connect(server.path)
    assert (await g.ninep.version()).msize == 512000


async def test_fds_on_messages_that_take_none_are_closed(server):
    fe = await VhostUserFrontend.connect(server.path)
    r, w = os.pipe()
    try:
        assert await fe.command(Request.SET_OWNER, b"", [r], ACKED) == 0
        os.close(r)
        r = -1
        await asyncio.sleep(0.05)
        # The server closed its copy: the pipe has no reader left.
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
    finally:
        if r >= 0:
            os.close(r)
        os.close(w)
        fe.close()


async def test_listen_fd_handed_over(tmp_path, export, guest):
    path = str(tmp_path / "handed.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    backend = LocalBackend(str(export))
    task = asyncio.ensure_future(serve_vhost_user(
        lambda: backend, socket_path=None, listen_fd=listener.detach(), tag="fdtag",
        session_config=None))
    try:
        g = guest(tag="fdtag")
        await g.connect(path)
        assert g.config == b"\x05\x00fdtag"
        assert (await g.ninep.version()).version == p.VERSION_9P2000L
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.close()
    with pytest.raises(ValueError, match="not a listening"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await serve_vhost_user(lambda: backend, socket_path=None, listen_fd=s.fileno(),
                                   tag="x", session_config=None)
        finally:
            s.close()


# --- rings through the control plane ------------------------------------------------------


async def test_used_ring_outside_memory_is_refused_and_signalled(server, guest):
    g = guest()
    fe = await VhostUserFrontend.connect(server.path)
    d = g.driver
    d.start()
    assert await fe.set_vring_err(0, d.err_fd) == 0
    await fe.set_features(DEVICE_FEATURES)
    assert await fe.set_mem_table(g.ram) == 0
    await fe.set_vring_num(0, d.num)
    await fe.set_vring_base(0, 0)
    outside = g.ram.regions[-1].uva + g.ram.regions[-1].size + 4096
    assert await fe.set_vring_addr(0, d.desc_uva, outside, d.avail_uva, flags=ACKED) == 1
    await asyncio.sleep(0.02)
    assert count(d.err_fd) == 1
    # As QEMU sends it (no need_reply): refused silently but signalled, and the ring
    # does not start on the kick that follows.
    await fe.set_vring_addr(0, d.desc_uva, 0x10, d.avail_uva)
    assert await fe.set_vring_kick(0, d.kick_fd) == 1
    assert count(d.err_fd) >= 1
    await fe.set_vring_addr(0, d.desc_uva, d.used_uva, d.avail_uva)
    assert await fe.set_vring_kick(0, d.kick_fd) == 0
    assert await fe.set_vring_call(0, d.call_fd) == 0
    assert await fe.set_vring_enable(0, True) == 0
    g.frontend = fe
    assert (await g.ninep.version()).msize == 512000


async def test_bad_chain_through_the_socket_server_then_good_requests(server, guest):
    g = guest()
    await g.connect(server.path)
    d = g.driver
    await g.ninep.version()
    head = d.free_heads.pop()
    buf = g.ram.alloc(16)
    d.write_desc(head, buf, 16, VIRTQ_DESC_F_NEXT, head)  # a descriptor pointing at itself
    d.publish(head)
    d.kick(force=True)
    await asyncio.sleep(0.05)
    assert count(d.err_fd) == 1
    seen = len(d.used_log)
    root = await g.ninep.attach()
    assert (await g.ninep.getattr(root)).qid.type == p.QTDIR
    assert len(d.used_log) == seen + 2 and all(h != head for h, _ in d.used_log[seen:])
    d.free_heads.append(head)


@pytest.mark.parametrize("event_idx", [True, False])
async def test_large_reads_writes_and_a_readdir_over_many_segments(server, export, guest,
                                                                   event_idx):
    payload = os.urandom(512 * KIB)
    (export / "big").write_bytes(payload)
    (export / "dir").mkdir()
    names = {f"{i:05d}-" + "n" * 60 for i in range(400)}
    for name in names:
        (export / "dir" / name).touch()
    g = guest(event_idx=event_idx, msize=1 << 20, ram_size=128 << 20)
    await g.connect(server.path)
    n, d = g.ninep, g.driver
    assert (await n.version()).msize == 1 << 20
    root = await n.attach()
    f = await n.walk(root, ["big"])
    await n.lopen(f)
    assert await n.read(f, 0, 512 * KIB) == payload
    assert await n.read(f, 100, 512 * KIB) == payload[100:]
    w = await n.walk(root, [])
    await n.lcreate(w, "written", p.DOTL_RDWR)
    assert await n.write(w, 0, payload) == 512 * KIB
    assert (export / "written").read_bytes() == payload
    dfid = await n.walk(root, ["dir"])
    await n.lopen(dfid)
    entries = await n.readdir(dfid, 0, 16 * 4096, pages=16)
    assert len(entries) > 300  # one reply scattered over 1 + 16 segments
    rest = await n.readdir_all(dfid)
    assert {e[3] for e in entries} | set(rest) >= names
    if event_idx:
        assert d.avail_event == d.avail_idx
    else:
        assert d.avail_event == 0
    assert d.stats.calls > 0
    last = d.avail_idx
    assert await g.shutdown() == last


class GatedBackend(LocalBackend):
    """Holds every read until *n* of them are in the back end at once."""

    def __init__(self, export: str, n: int) -> None:
        super().__init__(export)
        self.barrier = asyncio.Barrier(n)

    async def read_into(self, node, offset, views):
        await asyncio.wait_for(self.barrier.wait(), 10)
        return await super().read_into(node, offset, views)


async def test_64_requests_in_flight_at_once(tmp_path, export, guest):
    for i in range(64):
        (export / f"file{i}").write_bytes(bytes([i]) * 20000)
    srv = await start_server(tmp_path, export, backend=GatedBackend(str(export), 64))
    try:
        g = guest()
        await g.connect(srv.path)
        n = g.ninep
        await n.version()
        root = await n.attach()
        fids = []
        for i in range(64):
            fids.append(await n.walk(root, [f"file{i}"]))
            await n.lopen(fids[-1])
        # All 64 Treads are on the ring before any completes; the barrier only opens
        # when the server runs all of them concurrently.
        pending = [n.submit(p.Tread(fid, 0, 20000), in_sizes=split_sizes(20011, 11))
                   for fid in fids]
        replies = await asyncio.gather(*(n.result(tag, req) for tag, req in pending))
        assert [r.data for r in replies] == [bytes([i]) * 20000 for i in range(64)]
        assert len(g.driver.used_log) == 64 * 2 + 2 + 64
    finally:
        srv.task.cancel()
        await asyncio.gather(srv.task, return_exceptions=True)


async def test_memory_by_add_and_remove_mem_reg(server, guest):
    g = guest()
    fe = await VhostUserFrontend.connect(server.path)
    d = g.driver
    d.start()
    await fe.set_features(DEVICE_FEATURES)
    assert await fe.get_max_mem_slots() == 32
    for region in g.ram.regions:
        assert await fe.add_mem_reg(g.ram, region) == 0
    assert await fe.add_mem_reg(g.ram, g.ram.regions[0]) == 1  # overlaps
    await fe.set_vring_num(0, d.num)
    await fe.set_vring_base(0, 0)
    await fe.set_vring_addr(0, d.desc_uva, d.used_uva, d.avail_uva)
    assert await fe.set_vring_err(0, d.err_fd) == 0
    assert await fe.set_vring_kick(0, d.kick_fd) == 0
    assert await fe.set_vring_call(0, d.call_fd) == 0
    assert await fe.set_vring_enable(0, True) == 0
    g.frontend = fe
    await g.ninep.version()
    # Removing the region the rings live in stops the ring, and the fd that QEMU
    # (incorrectly) sends along is closed, not used.
    r, w = os.pipe()
    assert await fe.command(Request.REM_MEM_REG, bytes(8) + g.ram.regions[0].pack(), [r],
                            ACKED) == 0
    os.close(r)
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")
    os.close(w)
    tag, req = g.ninep.submit(p.Tversion(8192, p.VERSION_9P2000L), reply_size=64)
    await asyncio.sleep(0.05)
    assert not req.future.done()
    assert await fe.get_vring_base(0) == 1  # only the first Tversion was taken
    d.forget(req)


# --- disconnects and reconnects -----------------------------------------------------------


def _open_fds_under(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path) + "/"):
                n += 1
        except OSError:
            pass
    return n


def _mapped(name: str) -> int:
    total = 0
    for line in open("/proc/self/maps"):
        if name in line:
            lo, hi = line.split()[0].split("-")
            total += int(hi, 16) - int(lo, 16)
    return total


class SlowBackend(LocalBackend):
    """Reads take a while, so a disconnect finds them in flight."""

    async def read_into(self, node, offset, views):
        await asyncio.sleep(0.3)
        return await super().read_into(node, offset, views)


async def test_disconnect_releases_fids_fds_and_mappings_then_serves_the_next(tmp_path, export,
                                                                              guest):
    for i in range(10):
        (export / f"f{i}").write_bytes(b"z" * 1000)
    srv = await start_server(tmp_path, export, backend=SlowBackend(str(export)))
    try:
        g = guest()
        ram_mapped = _mapped("ninep-guest-ram")
        await g.connect(srv.path)
        assert _mapped("ninep-guest-ram") == 2 * ram_mapped  # the server mapped it too
        n = g.ninep
        await n.version()
        root = await n.attach()
        fids = []
        for i in range(10):
            fids.append(await n.walk(root, [f"f{i}"]))
            await n.lopen(fids[-1])
        assert _open_fds_under(export) >= 10
        reads = [n.submit(p.Tread(fid, 0, 1000), reply_size=2000) for fid in fids]
        await asyncio.sleep(0.05)  # the reads are in the back end now
        g.disconnect()  # QEMU dies: no GET_VRING_BASE
        await asyncio.sleep(0.6)
        assert _open_fds_under(export) == 0  # every fid clunked, every fd closed
        assert _mapped("ninep-guest-ram") == ram_mapped  # guest memory unmapped
        for _, req in reads:
            g.driver.forget(req)
        # QEMU restarts: a new connection, a fresh session.
        g2 = guest()
        await g2.connect(srv.path)
        await g2.ninep.version()
        root = await g2.ninep.attach()
        f = await g2.ninep.walk(root, ["f3"])
        await g2.ninep.lopen(f)
        assert await g2.ninep.read(f, 0, 10) == b"z" * 10
    finally:
        srv.task.cancel()
        await asyncio.gather(srv.task, return_exceptions=True)


async def test_reconnect_resumes_from_get_vring_base(server, export, guest):
    (export / "a").write_bytes(b"first")
    g = guest(num=16)
    await g.connect(server.path)
    n = g.ninep
    await n.version()
    root = await n.attach()
    for _ in range(20):  # wrap the 16-entry ring
        await n.getattr(root)
    base = await g.shutdown()
    assert base == 22 == g.driver.avail_idx
    g.disconnect()
    # The same guest RAM and rings, a new connection that resumes at base.
    await g.connect(server.path, base=base)
    assert g.driver.used_idx == 22
    await n.version()
    root = await n.attach()
    f = await n.walk(root, ["a"])
    await n.lopen(f)
    assert await n.read(f, 0, 100) == b"first"
    assert g.driver.used_idx == 27
    assert await g.shutdown() == 27


async def test_one_front_end_at_a_time(server, guest):
    g = guest()
    await g.connect(server.path)
    await g.ninep.version()
    second = await VhostUserFrontend.connect(server.path)  # waits in the backlog
    await second.send(Request.GET_FEATURES)
    with pytest.raises(asyncio.TimeoutError):
        await second.recv_reply(Request.GET_FEATURES, timeout=0.2)
    g.disconnect()
    assert U64.unpack(await second.recv_reply(Request.GET_FEATURES))[0] == DEVICE_FEATURES
    second.close()


async def test_call_suppression_with_event_idx_through_the_server(server, guest):
    g = guest(event_idx=True)
    await g.connect(server.path)
    d = g.driver
    await g.ninep.version()
    calls = d.stats.calls
    # Kicks are suppressed as the device asks: two requests, one kick.
    t1, r1 = g.ninep.submit(p.Tversion(8192, p.VERSION_9P2000L), reply_size=64)
    t2, r2 = g.ninep.submit(p.Tversion(8192, p.VERSION_9P2000L), tag=p.NOTAG, reply_size=64)
    assert d.stats.kicks_suppressed == 1
    await g.ninep.result(t1, r1)
    await g.ninep.result(t2, r2)
    assert d.avail_event == d.avail_idx
    assert d.stats.calls > calls
    assert VIRTIO_RING_F_EVENT_IDX & DEVICE_FEATURES


async def test_new_mem_table_while_running_remaps_and_releases_the_old_one(tmp_path, export,
                                                                           guest):
    (export / "f").write_bytes(b"0123456789" * 100)
    srv = await start_server(tmp_path, export, backend=SlowBackend(str(export)))
    try:
        g = guest()
        own = _mapped("ninep-guest-ram")
        await g.connect(srv.path)
        n = g.ninep
        await n.version()
        root = await n.attach()
        f = await n.walk(root, ["f"])
        await n.lopen(f)
        # A read is in the back end (holding views of the old mapping) when the table changes.
        tag, req = n.submit(p.Tread(f, 0, 1000), in_sizes=split_sizes(1011, 11))
        await asyncio.sleep(0.05)
        assert await g.frontend.set_mem_table(g.ram) == 0
        reply = await n.result(tag, req)
        assert reply.data == b"0123456789" * 100  # landed in guest memory all the same
        assert await n.read(f, 5, 5) == b"56789"  # the rings work on the new mapping
        await asyncio.sleep(0.05)
        assert _mapped("ninep-guest-ram") == 2 * own  # the old mapping is gone
    finally:
        srv.task.cancel()
        await asyncio.gather(srv.task, return_exceptions=True)


async def test_configure_mem_slots_is_offered(tmp_path, export, guest):
    backend = LocalBackend(str(export))
    path = str(tmp_path / "slots.sock")
    task = asyncio.ensure_future(serve_vhost_user(
        lambda: backend, socket_path=path, listen_fd=None, tag="vu9p", session_config=None))
    try:
        g = guest()
        fe = await VhostUserFrontend.connect(path)
        assert await fe.get_protocol_features() == 0x8209
        assert await fe.set_protocol_features(0x8209, flags=ACKED) == 0
        assert await fe.get_max_mem_slots() == 32
        fe.close()
        # And QEMU's sequence still works on this server.
        await g.connect(path)
        assert (await g.ninep.version()).msize == 512000
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(ValueError, match="not implemented"):
        await serve_vhost_user(lambda: backend, socket_path=path, listen_fd=None, tag="x",
                               session_config=None, protocol_features=1 << 1)
