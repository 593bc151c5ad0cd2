"""A vhost-user front end in Python: what QEMU does to a vhost-user back end, for tests.

It connects to a server's Unix socket, shares memfd-backed guest RAM
(:class:`~ninep.testing.fake_virtqueue.GuestRam`) with SCM_RIGHTS, lays out
real split rings (:class:`~ninep.testing.fake_virtqueue.DriverQueue`) and
sends the message sequence QEMU 10.2 sends to a ``vhost-user-test-device``
with ``virtio-id=9`` (see :meth:`VhostUserFrontend.qemu_start` and
:meth:`VhostUserFrontend.qemu_stop`).  Every message it sends is recorded in
:attr:`VhostUserFrontend.sent` as ``(name, flags, size, nfds)``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from collections.abc import Sequence

from ..transport.vhost.memory import REGION, MemoryRegion
from ..transport.vhost.messages import (CONFIG_HEADER, FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION,
                                        HEADER, MEMORY_HEADER, U64, VIRTIO_RING_F_EVENT_IDX,
                                        VRING_ADDR, VRING_NOFD_MASK, VRING_STATE, Request,
                                        request_name)
from .fake_virtqueue import DriverQueue, GuestRam, VirtioNinePDriver

#: Message flags QEMU uses: plain, or with need_reply (REPLY_ACK negotiated).
PLAIN = FLAG_VERSION
ACKED = FLAG_VERSION | FLAG_NEED_REPLY


#: The protocol features QEMU 10.2.2 acknowledged in the reference trace.
TRACE_PROTOCOL_FEATURES = 0x209

class FrontendError(Exception):
    """The back end answered something a front end would reject."""


class VhostUserFrontend:
    """The front-end (QEMU) side of one vhost-user connection."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.sent: list[tuple[str, int, int, int]] = []
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, path: str, timeout: float = 15.0) -> VhostUserFrontend:
        """Connect, retrying while the server is still starting up (or its backlog is full)."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, path)
                # A full backlog makes connect() fail with EAGAIN, which asyncio takes for
                # "in progress" and then for success: check that there is a peer.
                sock.getpeername()
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise exc
                await asyncio.sleep(0.05)
            except OSError as exc:
                sock.close()
                if exc.errno != errno.ENOTCONN or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def close(self) -> None:
        self.sock.close()

    # --- raw messages ----------------------------------------------------------------

    async def send(self, request: int, payload: bytes = b"", fds: Sequence[int] = (),
                   flags: int = PLAIN, size: int | None = None) -> None:
        """Send one message (``size`` overrides the header's size field, for bad messages)."""
        header = HEADER.pack(request, flags, len(payload) if size is None else size)
        data = header + payload
        self.sent.append((request_name(request), flags, len(payload), len(fds)))
        while True:
            try:
                if fds:
                    n = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    struct.pack(f"{len(fds)}i", *fds))])
                else:
                    n = self.sock.send(data)
                break
            except BlockingIOError:
                await asyncio.sleep(0.001)
        if n < len(data):
            await self._loop.sock_sendall(self.sock, data[n:])

    async def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = await self._loop.sock_recv(self.sock, n - len(buf))
            if not chunk:
                raise ConnectionResetError("the back end closed the connection")
            buf += chunk
        return bytes(buf)

    async def recv_reply(self, request: int, timeout: float = 15.0) -> bytes:
        """The reply to *request*; its header must be exactly what QEMU checks."""
        head = await asyncio.wait_for(self._recv_exact(HEADER.size), timeout)
        req, flags, size = HEADER.unpack(head)
        if req != request:
            raise FrontendError(f"reply to {request_name(req)}, expected {request_name(request)}")
        if flags != FLAG_VERSION | FLAG_REPLY:
            raise FrontendError(f"reply flags {flags:#x}")
        return await asyncio.wait_for(self._recv_exact(size), timeout) if size else b""

    async def call(self, request: int, payload: bytes = b"", fds: Sequence[int] = (),
                   flags: int = PLAIN) -> bytes:
        """A request with a reply of its own (GET_*)."""
        await self.send(request, payload, fds, flags)
        return await self.recv_reply(request)

    async def command(self, request: int, payload: bytes = b"", fds: Sequence[int] = (),
                      flags: int = PLAIN) -> int | None:
        """A request without a reply of its own: the REPLY_ACK u64 if need_reply was set."""
        await self.send(request, payload, fds, flags)
        if not flags & FLAG_NEED_REPLY:
            return None
        reply = await self.recv_reply(request)
        if len(reply) != 8:
            raise FrontendError(f"REPLY_ACK of {len(reply)} bytes")
        return U64.unpack(reply)[0]

    # --- typed messages ------------------------------------------------------------------

    async def get_u64(self, request: Request) -> int:
        reply = await self.call(request)
        if len(reply) != 8:
            raise FrontendError(f"{request.name} reply of {len(reply)} bytes")
        return U64.unpack(reply)[0]

    async def get_features(self) -> int:
        return await self.get_u64(Request.GET_FEATURES)

    async def get_protocol_features(self) -> int:
        return await self.get_u64(Request.GET_PROTOCOL_FEATURES)

    async def get_queue_num(self) -> int:
        return await self.get_u64(Request.GET_QUEUE_NUM)

    async def get_max_mem_slots(self) -> int:
        return await self.get_u64(Request.GET_MAX_MEM_SLOTS)

    async def set_features(self, features: int, flags: int = PLAIN) -> int | None:
        return await self.command(Request.SET_FEATURES, U64.pack(features), flags=flags)

    async def set_protocol_features(self, features: int, flags: int = PLAIN) -> int | None:
        return await self.command(Request.SET_PROTOCOL_FEATURES, U64.pack(features), flags=flags)

    async def set_owner(self, flags: int = PLAIN) -> int | None:
        return await self.command(Request.SET_OWNER, flags=flags)

    async def _vring_fd(self, request: Request, index: int, fd: int | None,
                        flags: int) -> int | None:
        value = index if fd is not None else index | VRING_NOFD_MASK
        return await self.command(request, U64.pack(value), [fd] if fd is not None else [], flags)

    async def set_vring_call(self, index: int, fd: int | None, flags: int = ACKED) -> int | None:
        return await self._vring_fd(Request.SET_VRING_CALL, index, fd, flags)

    async def set_vring_err(self, index: int, fd: int | None, flags: int = ACKED) -> int | None:
        return await self._vring_fd(Request.SET_VRING_ERR, index, fd, flags)

    async def set_vring_kick(self, index: int, fd: int | None, flags: int = ACKED) -> int | None:
        return await self._vring_fd(Request.SET_VRING_KICK, index, fd, flags)

    async def get_config(self, offset: int, size: int, flags: int = 0) -> bytes:
        """GET_CONFIG; returns the config bytes (b"" if the back end failed it)."""
        reply = await self.call(Request.GET_CONFIG,
                                CONFIG_HEADER.pack(offset, size, flags) + bytes(size))
        if not reply:
            return b""
        if len(reply) != CONFIG_HEADER.size + size:
            raise FrontendError(f"GET_CONFIG reply of {len(reply)} bytes for {size}")
        return reply[CONFIG_HEADER.size:]

    async def set_mem_table(self, ram: GuestRam, regions: Sequence[MemoryRegion] | None = None,
                            flags: int = ACKED) -> int | None:
        regions = list(ram.regions if regions is None else regions)
        payload = MEMORY_HEADER.pack(len(regions), 0) + b"".join(r.pack() for r in regions)
        return await self.command(Request.SET_MEM_TABLE, payload, [ram.fd] * len(regions), flags)

    async def add_mem_reg(self, ram: GuestRam, region: MemoryRegion,
                          flags: int = ACKED) -> int | None:
        return await self.command(Request.ADD_MEM_REG, bytes(8) + region.pack(), [ram.fd], flags)

    async def rem_mem_reg(self, region: MemoryRegion, flags: int = ACKED) -> int | None:
        return await self.command(Request.REM_MEM_REG, bytes(8) + region.pack(), [], flags)

    async def set_vring_num(self, index: int, num: int, flags: int = PLAIN) -> int | None:
        return await self.command(Request.SET_VRING_NUM, VRING_STATE.pack(index, num), flags=flags)

    async def set_vring_base(self, index: int, num: int, flags: int = PLAIN) -> int | None:
        return await self.command(Request.SET_VRING_BASE, VRING_STATE.pack(index, num), flags=flags)

    async def set_vring_addr(self, index: int, desc: int, used: int, avail: int, log: int = 0,
                             addr_flags: int = 0, flags: int = PLAIN) -> int | None:
        payload = VRING_ADDR.pack(index, addr_flags, desc, used, avail, log)
        return await self.command(Request.SET_VRING_ADDR, payload, flags=flags)

    async def set_vring_enable(self, index: int, enable: bool, flags: int = ACKED) -> int | None:
        return await self.command(Request.SET_VRING_ENABLE, VRING_STATE.pack(index, int(enable)),
                                  flags=flags)

    async def get_vring_base(self, index: int) -> int:
        reply = await self.call(Request.GET_VRING_BASE, VRING_STATE.pack(index, 0))
        if len(reply) != VRING_STATE.size:
            raise FrontendError(f"GET_VRING_BASE reply of {len(reply)} bytes")
        rindex, num = VRING_STATE.unpack(reply)
        if rindex != index:
            raise FrontendError(f"GET_VRING_BASE for queue {rindex}, asked {index}")
        return num

    # --- QEMU's sequences -------------------------------------------------------------------

    async def qemu_start(self, ram: GuestRam, driver: DriverQueue, config_size: int, *,
                         base: int = 0, features: int | None = None,
                         withhold_features: int = 0,
                         early_call_fd: int | None = None, spare_call_fd: int | None = None,
                         config_reads: int = 5,
                         protocol_supported: int = TRACE_PROTOCOL_FEATURES) -> bytes:
        """The start-up sequence QEMU 10.2.2 sends (reference trace), ending with the ring
        enabled and *driver*'s call fd installed.  Returns the config space it read.

        ``early_call_fd``/``spare_call_fd`` stand in for QEMU's own notifiers that it
        installs before the guest's one; they default to throwaway eventfds.
        ``withhold_features`` are offered bits the front end does not acknowledge.
        ``protocol_supported`` is what this front end understands of the offered
        protocol features; the default is what the traced QEMU acknowledged (0x209).
        """
        acks: list[int | None] = []
        offered = await self.get_features()
        protocol = await self.get_protocol_features() & protocol_supported
        await self.set_protocol_features(protocol)
        queues = await self.get_queue_num()
        if queues < 1:
            raise FrontendError(f"GET_QUEUE_NUM says {queues}")
        await self.set_owner()
        if await self.get_features() != offered:
            raise FrontendError("features changed between two GET_FEATURES")
        own = []
        if early_call_fd is None:
            early_call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            own.append(early_call_fd)
        if spare_call_fd is None:
            spare_call_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            own.append(spare_call_fd)
        try:
            acks.append(await self.set_vring_call(driver.index, early_call_fd))
            acks.append(await self.set_vring_err(driver.index, driver.err_fd))
            config = b""
            for _ in range(config_reads):
                config = await self.get_config(0, config_size)
            await self.set_features((offered if features is None else features)
                                    & ~withhold_features)
            acks.append(await self.set_mem_table(ram))
            await self.set_vring_num(driver.index, driver.num)
            await self.set_vring_base(driver.index, base)
            await self.set_vring_addr(driver.index, driver.desc_uva, driver.used_uva,
                                      driver.avail_uva, log=0x2C7E940)
            acks.append(await self.set_vring_kick(driver.index, driver.kick_fd))
            acks.append(await self.set_vring_call(driver.index, spare_call_fd))
            driver.kick(force=True)  # QEMU kicks once after starting the ring
            acks.append(await self.set_vring_enable(driver.index, True))
            acks.append(await self.set_vring_call(driver.index, driver.call_fd))
        finally:
            for fd in own:
                os.close(fd)
        if any(a != 0 for a in acks):
            raise FrontendError(f"REPLY_ACK failures during start-up: {acks}")
        return config

    async def qemu_stop(self, index: int = 0) -> int:
        """What QEMU sends when the guest powers off: disable, then GET_VRING_BASE."""
        ack = await self.set_vring_enable(index, False)
        if ack != 0:
            raise FrontendError(f"SET_VRING_ENABLE 0 acked {ack}")
        return await self.get_vring_base(index)


class VhostUserGuest:
    """A fake guest behind a front end: shared RAM, one 9P virtqueue, a 9P driver.

    The RAM and rings outlive a connection, as a VM's do when its back end
    restarts: :meth:`reconnect` starts a new connection on the same rings.
    """

    def __init__(self, ram: GuestRam, driver: DriverQueue, config_size: int,
                 msize: int = 512000) -> None:
        self.ram = ram
        self.driver = driver
        self.config_size = config_size
        self.ninep = VirtioNinePDriver(driver, msize)
        self.frontend: VhostUserFrontend | None = None
        self.config = b""

    @classmethod
    def create(cls, tag: str = "vu9p", *, ram_size: int = 64 << 20,
               layout: Sequence[MemoryRegion] | None = None, num: int = 128,
               event_idx: bool = True, msize: int = 512000,
               rings_at: tuple[int, int, int] | None = None) -> VhostUserGuest:
        ram = GuestRam(ram_size, layout)
        driver = DriverQueue(ram, num, event_idx=event_idx, at=rings_at)
        return cls(ram, driver, 2 + len(tag.encode()), msize)

    async def connect(self, path: str, *, base: int = 0, **start: object) -> VhostUserGuest:
        """Connect and run QEMU's start-up sequence (features without EVENT_IDX if the
        driver does not use it)."""
        self.driver.start()
        self.frontend = await VhostUserFrontend.connect(path)
        if not self.driver.event_idx:
            start.setdefault("withhold_features", VIRTIO_RING_F_EVENT_IDX)
        self.config = await self.frontend.qemu_start(self.ram, self.driver, self.config_size,
                                                     base=base, **start)  # type: ignore[arg-type]
        return self

    async def shutdown(self) -> int:
        """Power-off: disable the ring and return GET_VRING_BASE's answer."""
        assert self.frontend is not None
        return await self.frontend.qemu_stop(self.driver.index)

    def disconnect(self) -> None:
        if self.frontend is not None:
            self.frontend.close()
            self.frontend = None

    def close(self) -> None:
        self.disconnect()
        self.driver.close()
        self.ram.close()


__all__ = ["VhostUserFrontend", "VhostUserGuest", "FrontendError", "PLAIN", "ACKED", "REGION"]
