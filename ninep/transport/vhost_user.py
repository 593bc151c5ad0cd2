"""vhost-user back end for a virtio-9p device: the control plane and the server loop.

QEMU (the *front end*) connects to our Unix socket and drives the device with
vhost-user messages: feature negotiation, the memory table (one fd per RAM
region), the rings' size/addresses/base and their kick/call/err eventfds.
The data plane is :class:`~ninep.transport.virtqueue.SplitVirtqueue`; each
chain it pops goes to the request handler (``Session.submit``).

One front end at a time: :func:`serve_vhost_user` serves a connection to its
end, releases everything it held (fids through ``Session.close``, eventfds,
guest memory) and accepts the next one, since QEMU reconnects after a restart
and resumes the ring from what GET_VRING_BASE returned.

Message handling rules (``docs/interop/vhost-user.rst``): replies carry flags
``VERSION|REPLY``; a request with ``need_reply`` that has no reply of its own
gets a u64 0 (success) or 1 (failure).  A refused, unknown or malformed
message is logged and answered with a failure when a reply is expected; the
server never crashes on one.  If a message that must have a reply of its own
cannot be answered, the connection is dropped.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..backends.base import Backend
from ..server.session import Session, SessionConfig
from .memory import REGION, GuestMemory, GuestMemoryError, MemoryRegion
from .virtqueue import RequestHandler, SplitVirtqueue, VirtqueueError

log = logging.getLogger("ninep.vhost")


class Request(enum.IntEnum):
    """Front-end message types."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


def request_name(code: int) -> str:
    try:
        return Request(code).name
    except ValueError:
        return f"UNKNOWN({code})"


# Header: request, flags, size (native order; every supported host is little-endian).
HEADER = struct.Struct("<III")
FLAG_VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
VRING_INDEX_MASK = 0xFF
VRING_NOFD_MASK = 0x100
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log
CONFIG_HEADER = struct.Struct("<III")  # offset, size, flags
MEMORY_HEADER = struct.Struct("<II")  # nregions, padding
#: The largest payload any supported message has (GET_CONFIG: 12 + 256).
MAX_PAYLOAD = 4096
#: Most fds one message may carry (SET_MEM_TABLE's 8 regions).
MAX_FDS = 8
MAX_CONFIG_SIZE = 256
MEM_TABLE_MAX_REGIONS = 8

# Virtio / vhost-user feature bits.
VIRTIO_9P_MOUNT_TAG = 1 << 0
VIRTIO_RING_F_INDIRECT_DESC = 1 << 28
VIRTIO_RING_F_EVENT_IDX = 1 << 29
VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
VIRTIO_F_VERSION_1 = 1 << 32
#: What the device offers: 0x170000001, as the reference trace shows.
DEVICE_FEATURES = (VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | VIRTIO_RING_F_EVENT_IDX
                   | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_9P_MOUNT_TAG)

PROTOCOL_F_MQ = 1 << 0
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_CONFIG = 1 << 9
PROTOCOL_F_CONFIGURE_MEM_SLOTS = 1 << 15
#: 0x8209: CONFIG (QEMU requires it), REPLY_ACK, CONFIGURE_MEM_SLOTS (ADD/REM_MEM_REG)
#: and MQ (GET_QUEUE_NUM, which the spec asks every back end to answer).  The
#: reference trace was taken against a back end offering 0x209, so QEMU used
#: SET_MEM_TABLE there; with mem slots acknowledged it sends ADD_MEM_REG instead.
PROTOCOL_FEATURES = (PROTOCOL_F_MQ | PROTOCOL_F_REPLY_ACK | PROTOCOL_F_CONFIG
                     | PROTOCOL_F_CONFIGURE_MEM_SLOTS)

#: Requests whose reply is a payload of their own (need_reply changes nothing).
_HAS_REPLY = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                        Request.GET_VRING_BASE, Request.GET_QUEUE_NUM, Request.GET_CONFIG,
                        Request.GET_MAX_MEM_SLOTS})

MAX_TAG_BYTES = MAX_CONFIG_SIZE - 2


def virtio_9p_config(tag: str) -> bytes:
    """The virtio-9p config space: LE u16 tag length, then the tag (no NUL).

    Raises ValueError (one line naming --tag) for a tag QEMU could not carry.
    """
    raw = tag.encode("utf-8", "surrogateescape")
    if not raw:
        raise ValueError("--tag must not be empty")
    if len(raw) > MAX_TAG_BYTES:
        raise ValueError(f"--tag is {len(raw)} bytes; a virtio-9p mount tag is at most "
                         f"{MAX_TAG_BYTES} bytes")
    if b"\0" in raw:
        raise ValueError("--tag must not contain a NUL byte")
    return struct.pack("<H", len(raw)) + raw


def fd_kind(fd: int) -> str:
    """What an fd refers to, as /proc names it ("anon_inode:[eventfd]", "pipe:[…]", a path)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"unknown ({exc.strerror})"


def is_eventfd(fd: int) -> bool:
    return fd_kind(fd) == "anon_inode:[eventfd]"


class MessageError(Exception):
    """A request that was refused, unknown or malformed; answered with a failure."""


class ConnectionDropped(Exception):
    """The connection cannot continue (a reply that cannot be given, a torn message)."""


@dataclass(slots=True)
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return request_name(self.request)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def take_fd(self) -> int:
        """The one fd this message must carry (the caller owns it afterwards)."""
        if len(self.fds) != 1:
            raise MessageError(f"{self.name} needs exactly one fd, got {len(self.fds)}")
        return self.fds.pop()

    def close_fds(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


class VhostUserChannel:
    """Reads and writes vhost-user messages on a non-blocking Unix stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._loop = asyncio.get_running_loop()

    async def _wait_readable(self) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = self.sock.fileno()

        def readable() -> None:
            if not fut.done():
                fut.set_result(None)

        self._loop.add_reader(fd, readable)
        try:
            await fut
        finally:
            self._loop.remove_reader(fd)

    async def _recv(self, n: int, fds: list[int]) -> bytes:
        """Exactly *n* bytes (b"" at a clean EOF before any), collecting passed fds."""
        chunks: list[bytes] = []
        got = 0
        while got < n:
            try:
                data, ancdata, msg_flags, _ = self.sock.recvmsg(
                    n - got, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable()
                continue
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(cdata) - len(cdata) % 4
                    fds.extend(struct.unpack(f"<{usable // 4}i", cdata[:usable]))
            if msg_flags & socket.MSG_CTRUNC:
                raise ConnectionDropped("more fds than any message carries")
            if not data:
                if got:
                    raise ConnectionDropped("connection closed in the middle of a message")
                return b""
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    async def read_message(self) -> Message | None:
        """The next message, or None when the front end has gone."""
        fds: list[int] = []
        try:
            head = await self._recv(HEADER.size, fds)
            if not head:
                return None
            request, flags, size = HEADER.unpack(head)
            if size > MAX_PAYLOAD:
                raise ConnectionDropped(f"{request_name(request)} with a {size}-byte payload")
            payload = await self._recv(size, fds) if size else b""
            if size and not payload:
                raise ConnectionDropped("connection closed in the middle of a message")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Message(request, flags, payload, fds)

    async def send_reply(self, request: int, payload: bytes) -> None:
        data = HEADER.pack(request, FLAG_VERSION | FLAG_REPLY, len(payload)) + payload
        await self._loop.sock_sendall(self.sock, data)


class VhostUserDevice:
    """One front end's view of the device: features, guest memory, virtqueues.

    *handler* gets each request's readable views and a reply sink
    (``Session.submit``); *max_request* bounds a request's length (see
    :class:`SplitVirtqueue`).  The device closes every fd it is given.
    """

    def __init__(self, config_space: bytes, handler: RequestHandler, *, num_queues: int = 1,
                 features: int = DEVICE_FEATURES, protocol_features: int = PROTOCOL_FEATURES,
                 drain_timeout: float = 10.0,
                 max_request: Callable[[], int] | None = None) -> None:
        if len(config_space) > MAX_CONFIG_SIZE:
            raise ValueError(f"config space of {len(config_space)} bytes exceeds {MAX_CONFIG_SIZE}")
        self.config_space = config_space
        self.features = features
        self.protocol_features = protocol_features
        self.acked_features = 0
        self.acked_protocol_features = 0
        self.owned = False
        self.drain_timeout = drain_timeout
        self.memory = GuestMemory()
        self.queues = [SplitVirtqueue(i, handler, max_request=max_request)
                       for i in range(num_queues)]
        self.message_counts: dict[str, int] = {}
        self._handlers: dict[int, Callable[[Message], Any]] = {
            Request.GET_FEATURES: self._get_features,
            Request.SET_FEATURES: self._set_features,
            Request.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            Request.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            Request.SET_OWNER: self._set_owner,
            Request.RESET_OWNER: self._reset_owner,
            Request.SET_MEM_TABLE: self._set_mem_table,
            Request.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            Request.ADD_MEM_REG: self._add_mem_reg,
            Request.REM_MEM_REG: self._rem_mem_reg,
            Request.GET_QUEUE_NUM: self._get_queue_num,
            Request.SET_VRING_NUM: self._set_vring_num,
            Request.SET_VRING_ADDR: self._set_vring_addr,
            Request.SET_VRING_BASE: self._set_vring_base,
            Request.GET_VRING_BASE: self._get_vring_base,
            Request.SET_VRING_KICK: self._set_vring_kick,
            Request.SET_VRING_CALL: self._set_vring_call,
            Request.SET_VRING_ERR: self._set_vring_err,
            Request.SET_VRING_ENABLE: self._set_vring_enable,
            Request.GET_CONFIG: self._get_config,
            Request.SET_CONFIG: self._set_config,
        }

    # --- connection ------------------------------------------------------------------

    async def serve(self, sock: socket.socket) -> None:
        """Handle messages until the front end disconnects (or must be dropped)."""
        channel = VhostUserChannel(sock)
        while True:
            try:
                msg = await channel.read_message()
            except ConnectionDropped as exc:
                log.error("dropping the front end: %s", exc)
                return
            except OSError as exc:
                log.error("front-end socket failed: %s", exc)
                return
            if msg is None:
                return
            try:
                await self.handle(msg, channel)
            except ConnectionDropped as exc:
                log.error("dropping the front end: %s", exc)
                return
            except OSError as exc:
                log.error("front-end socket failed: %s", exc)
                return
            finally:
                msg.close_fds()

    async def handle(self, msg: Message, channel: VhostUserChannel) -> None:
        """Run one message and send what the front end expects back."""
        name = msg.name
        self.message_counts[name] = self.message_counts.get(name, 0) + 1
        log.debug("%-22s flags=%#x size=%d fds=%d", name, msg.flags, len(msg.payload),
                  len(msg.fds))
        if msg.flags & FLAG_VERSION_MASK != FLAG_VERSION:
            log.error("%s with unsupported version flags %#x", name, msg.flags)
        handler = self._handlers.get(msg.request)
        has_reply = msg.request in _HAS_REPLY
        try:
            if handler is None:
                raise MessageError(f"unsupported message {name}")
            result = handler(msg)
            if asyncio.iscoroutine(result):
                result = await result
        except (MessageError, VirtqueueError, GuestMemoryError) as exc:
            log.error("%s (flags=%#x size=%d fds=%d) refused: %s", name, msg.flags,
                      len(msg.payload), len(msg.fds), exc)
            await self._reply_failure(msg, channel, has_reply)
            return
        except (ConnectionDropped, OSError):
            raise
        except Exception:
            log.exception("%s failed", name)
            await self._reply_failure(msg, channel, has_reply)
            return
        if has_reply:
            assert isinstance(result, bytes)
            await channel.send_reply(msg.request, result)
        elif msg.need_reply:
            await channel.send_reply(msg.request, U64.pack(0))

    async def _reply_failure(self, msg: Message, channel: VhostUserChannel, has_reply: bool) -> None:
        if msg.request == Request.GET_CONFIG:
            await channel.send_reply(msg.request, b"")  # size 0 tells QEMU it failed
        elif has_reply:
            raise ConnectionDropped(f"cannot answer {msg.name}")
        elif msg.need_reply:
            await channel.send_reply(msg.request, U64.pack(1))

    async def close(self) -> None:
        """Disconnect: stop the rings, wait (bounded) for in-flight requests, unmap memory."""
        self.stop_processing()
        for q in self.queues:
            if not await q.wait_idle(self.drain_timeout):
                log.warning("%s: %d requests still running at disconnect; guest memory stays "
                            "mapped until they finish", q.name, q.inflight)
        for q in self.queues:
            q.close()
        if not self.memory.close():
            # Views of guest RAM that no request uses any more can still sit in reference
            # cycles (an exception's traceback keeps the frames of a failed request); they
            # would keep the mapping and its fd until the cyclic collector runs.
            gc.collect()

    def stop_processing(self) -> None:
        """No new requests from any ring (the first step of a disconnect)."""
        for q in self.queues:
            q.halt()

    # --- payload helpers -----------------------------------------------------------------

    @staticmethod
    def _u64(msg: Message) -> int:
        if len(msg.payload) != U64.size:
            raise MessageError(f"{msg.name} payload is {len(msg.payload)} bytes, not 8")
        return U64.unpack(msg.payload)[0]

    def _state(self, msg: Message) -> tuple[SplitVirtqueue, int]:
        if len(msg.payload) != VRING_STATE.size:
            raise MessageError(f"{msg.name} payload is {len(msg.payload)} bytes, not 8")
        index, num = VRING_STATE.unpack(msg.payload)
        return self._queue(index, msg), num

    def _queue(self, index: int, msg: Message) -> SplitVirtqueue:
        if index >= len(self.queues):
            raise MessageError(f"{msg.name} for queue {index}; the device has {len(self.queues)}")
        return self.queues[index]

    def _vring_fd(self, msg: Message) -> tuple[SplitVirtqueue, int | None]:
        value = self._u64(msg)
        q = self._queue(value & VRING_INDEX_MASK, msg)
        if value & VRING_NOFD_MASK:
            if msg.fds:
                raise MessageError(f"{msg.name} says no fd but carries {len(msg.fds)}")
            return q, None
        if len(msg.fds) == 1 and not is_eventfd(msg.fds[0]):
            # A pipe at EOF would spin the kick reader, a full one block a call.
            raise MessageError(f"{msg.name} fd is {fd_kind(msg.fds[0])}, not an eventfd")
        return q, msg.take_fd()

    # --- features ------------------------------------------------------------------------

    def _get_features(self, msg: Message) -> bytes:
        return U64.pack(self.features)

    def _set_features(self, msg: Message) -> None:
        value = self._u64(msg)
        if value & ~self.features:
            raise MessageError(f"features {value & ~self.features:#x} were never offered")
        self.acked_features = value
        for q in self.queues:
            q.set_event_idx(bool(value & VIRTIO_RING_F_EVENT_IDX))
            if not value & VHOST_USER_F_PROTOCOL_FEATURES:
                q.set_enabled(True)  # without protocol features rings start enabled

    def _get_protocol_features(self, msg: Message) -> bytes:
        return U64.pack(self.protocol_features)

    def _set_protocol_features(self, msg: Message) -> None:
        value = self._u64(msg)
        if value & ~self.protocol_features:
            raise MessageError(f"protocol features {value & ~self.protocol_features:#x} "
                               "were never offered")
        self.acked_protocol_features = value

    def _set_owner(self, msg: Message) -> None:
        self.owned = True

    async def _reset_owner(self, msg: Message) -> None:
        # Deprecated; the spec recommends treating it as "disable all rings".
        for q in self.queues:
            q.set_enabled(False)

    def _get_queue_num(self, msg: Message) -> bytes:
        return U64.pack(len(self.queues))

    # --- memory --------------------------------------------------------------------------

    def _set_mem_table(self, msg: Message) -> None:
        payload = msg.payload
        if len(payload) < MEMORY_HEADER.size:
            raise MessageError("SET_MEM_TABLE payload is shorter than its header")
        nregions, _ = MEMORY_HEADER.unpack_from(payload)
        if not 0 < nregions <= MEM_TABLE_MAX_REGIONS:
            raise MessageError(f"SET_MEM_TABLE with {nregions} regions")
        if len(payload) < MEMORY_HEADER.size + nregions * REGION.size:
            raise MessageError(f"SET_MEM_TABLE payload of {len(payload)} bytes cannot hold "
                               f"{nregions} regions")
        if len(msg.fds) != nregions:
            raise MessageError(f"SET_MEM_TABLE has {nregions} regions but {len(msg.fds)} fds")
        memory = GuestMemory()
        try:
            for i in range(nregions):
                region = MemoryRegion.unpack(payload, MEMORY_HEADER.size + i * REGION.size)
                memory.add(region, msg.fds[i])
                log.debug("region %d: gpa=%#x size=%#x uva=%#x off=%#x", i, region.gpa,
                          region.size, region.uva, region.mmap_offset)
        except GuestMemoryError:
            memory.close()
            raise
        old, self.memory = self.memory, memory
        for q in self.queues:
            q.set_memory(memory)
        old.close()

    def _get_max_mem_slots(self, msg: Message) -> bytes:
        return U64.pack(GuestMemory.MAX_REGIONS)

    def _single_region(self, msg: Message) -> MemoryRegion:
        if len(msg.payload) != 8 + REGION.size:
            raise MessageError(f"{msg.name} payload is {len(msg.payload)} bytes, not 40")
        return MemoryRegion.unpack(msg.payload, 8)

    def _add_mem_reg(self, msg: Message) -> None:
        region = self._single_region(msg)
        fd = msg.take_fd()
        try:
            self.memory.add(region, fd)
        finally:
            os.close(fd)
        for q in self.queues:
            q.set_memory(self.memory)

    def _rem_mem_reg(self, msg: Message) -> None:
        region = self._single_region(msg)
        msg.close_fds()  # allowed for compatibility; never used
        # Rings stop using the region before it goes (in-flight requests keep their views).
        if not self.memory.remove(region):
            raise MessageError(f"no region gpa={region.gpa:#x} size={region.size:#x} "
                               f"uva={region.uva:#x} to remove")
        for q in self.queues:
            q.set_memory(self.memory)

    # --- rings ------------------------------------------------------------------------------

    def _set_vring_num(self, msg: Message) -> None:
        q, num = self._state(msg)
        q.set_num(num)

    def _set_vring_base(self, msg: Message) -> None:
        q, num = self._state(msg)
        q.set_base(num)

    async def _get_vring_base(self, msg: Message) -> bytes:
        q, _ = self._state(msg)
        last_avail = await q.stop(self.drain_timeout)
        return VRING_STATE.pack(q.index, last_avail)

    def _set_vring_addr(self, msg: Message) -> None:
        if len(msg.payload) != VRING_ADDR.size:
            raise MessageError(f"SET_VRING_ADDR payload is {len(msg.payload)} bytes, not 40")
        index, flags, desc, used, avail, _log = VRING_ADDR.unpack(msg.payload)
        q = self._queue(index, msg)
        q.set_addresses(desc, avail, used)

    def _set_vring_kick(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        if fd is None:
            raise MessageError("polling a ring without a kick fd is not supported")
        q.set_kick_fd(fd)

    def _set_vring_call(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        q.set_call_fd(fd)

    def _set_vring_err(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        q.set_err_fd(fd)

    def _set_vring_enable(self, msg: Message) -> None:
        q, num = self._state(msg)
        if num not in (0, 1):
            raise MessageError(f"SET_VRING_ENABLE with {num}")
        q.set_enabled(bool(num))

    # --- config space -------------------------------------------------------------------

    def _get_config(self, msg: Message) -> bytes:
        if len(msg.payload) < CONFIG_HEADER.size:
            raise MessageError("GET_CONFIG payload is shorter than its header")
        offset, size, flags = CONFIG_HEADER.unpack_from(msg.payload)
        if len(msg.payload) != CONFIG_HEADER.size + size:
            raise MessageError(f"GET_CONFIG of {size} bytes in a {len(msg.payload)}-byte payload")
        if offset + size > MAX_CONFIG_SIZE:
            raise MessageError(f"GET_CONFIG offset={offset} size={size} beyond {MAX_CONFIG_SIZE}")
        data = self.config_space[offset:offset + size]
        data += bytes(size - len(data))
        return CONFIG_HEADER.pack(offset, size, flags) + data

    def _set_config(self, msg: Message) -> None:
        raise MessageError("the 9p config space (the mount tag) is read-only")


# --- the server -------------------------------------------------------------------------


def open_listener(socket_path: str | None, listen_fd: int | None) -> tuple[socket.socket, bool]:
    """The listening socket, and whether we created it (and so unlink it at the end)."""
    if (socket_path is None) == (listen_fd is None):
        raise ValueError("give exactly one of --socket-path and --fd")
    if listen_fd is not None:
        try:
            sock = socket.socket(fileno=listen_fd)
        except OSError as exc:
            raise ValueError(f"--fd {listen_fd}: {exc.strerror}") from None
        if (sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            sock.detach()
            raise ValueError(f"--fd {listen_fd} is not a listening Unix stream socket")
        sock.setblocking(False)
        return sock, False
    assert socket_path is not None
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ValueError(f"--socket-path {socket_path} exists and is not a socket")
        os.unlink(socket_path)  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(socket_path)
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock, True


async def serve_front_end(conn: socket.socket, backend: Backend, config_space: bytes,
                          session_config: SessionConfig | None = None, *,
                          device_options: dict[str, Any] | None = None) -> VhostUserDevice:
    """Serve one connected front end until it goes, then release all it held."""
    session = Session(backend, session_config)
    # A request may be no longer than the msize, as on a stream (Tversion may lower it).
    options: dict[str, Any] = {"max_request": lambda: session.msize, **(device_options or {})}
    device = VhostUserDevice(config_space, session.submit, **options)
    try:
        await device.serve(conn)
    finally:
        device.stop_processing()
        try:
            await session.close()  # cancels what has not started, clunks every fid
        finally:
            await device.close()  # waits for the rest, then unmaps guest memory
        log.info("front end gone; message counts: %s", device.message_counts)
    return device


class Listener(NamedTuple):
    """An open vhost-user listening socket."""

    sock: socket.socket
    #: The inode of the socket file we created (unlinked at the end), else None.
    created_inode: int | None


def listen(socket_path: str | None, listen_fd: int | None) -> Listener:
    """Open the listener now, so that it exists before the process is confined."""
    sock, created = open_listener(socket_path, listen_fd)
    return Listener(sock, os.stat(socket_path).st_ino if created and socket_path else None)


async def serve_vhost_user(backend_factory: Callable[[], Backend], *, socket_path: str | None,
                           listen_fd: int | None, tag: str,
                           session_config: SessionConfig | None = None,
                           protocol_features: int = PROTOCOL_FEATURES,
                           listening: Listener | None = None) -> None:
    """Serve the virtio-9p device to one front end after another, until cancelled.

    ``--socket-path`` creates and listens on a Unix socket (a stale socket there
    is replaced); ``--fd`` takes one a manager already listens on; *listening*
    is one :func:`listen` opened already.  Each front end gets a fresh Session
    on ``backend_factory()``; the caller owns the back end's lifetime.
    *protocol_features* may offer a subset of ``PROTOCOL_FEATURES``.
    """
    if protocol_features & ~PROTOCOL_FEATURES:
        raise ValueError(f"protocol features {protocol_features:#x} are not implemented")
    config_space = virtio_9p_config(tag)
    listener, ours = listening or listen(socket_path, listen_fd)
    loop = asyncio.get_running_loop()
    log.info("vhost-user: listening on %s (tag %r)",
             socket_path if socket_path is not None else f"fd {listen_fd}", tag)
    try:
        while True:
            conn, _ = await loop.sock_accept(listener)
            log.info("vhost-user: front end connected")
            try:
                await serve_front_end(conn, backend_factory(), config_space, session_config,
                                      device_options={"protocol_features": protocol_features})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("vhost-user: the connection failed")
            finally:
                conn.close()
    finally:
        listener.close()
        if ours is not None and socket_path is not None:
            try:
                if os.stat(socket_path).st_ino == ours:
                    os.unlink(socket_path)
            except OSError:
                pass


__all__ = [
    "Request", "Message", "MessageError", "ConnectionDropped", "VhostUserChannel",
    "VhostUserDevice", "virtio_9p_config", "open_listener", "serve_front_end",
    "serve_vhost_user", "DEVICE_FEATURES", "PROTOCOL_FEATURES", "PROTOCOL_F_MQ",
    "PROTOCOL_F_REPLY_ACK", "PROTOCOL_F_CONFIG", "PROTOCOL_F_CONFIGURE_MEM_SLOTS",
    "VIRTIO_9P_MOUNT_TAG", "VIRTIO_RING_F_INDIRECT_DESC", "VIRTIO_RING_F_EVENT_IDX",
    "VHOST_USER_F_PROTOCOL_FEATURES", "VIRTIO_F_VERSION_1", "FLAG_VERSION", "FLAG_REPLY",
    "FLAG_NEED_REPLY", "VRING_NOFD_MASK", "HEADER", "U64", "VRING_STATE", "VRING_ADDR",
    "CONFIG_HEADER", "MEMORY_HEADER", "MAX_TAG_BYTES",
]
