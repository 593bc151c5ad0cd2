"""A virtio device as a vhost-user back end serves it, whatever the device is.

:class:`VhostUserDevice` runs the control plane for one front end: feature and
protocol-feature negotiation, the guest memory table, each queue's size,
addresses, base and kick/call/err eventfds, enabling and stopping rings, and
the config space.  What makes it a particular device is only what it is given:
its own feature bits, its config space and one request handler per queue,
which gets each chain's readable views and a sink over its writable ones (see
:class:`~ninep.transport.vhost.virtqueue.SplitVirtqueue`).

Message handling rules (``docs/interop/vhost-user.rst``): replies carry flags
``VERSION|REPLY``; a request with ``need_reply`` that has no reply of its own
gets a u64 0 (success) or 1 (failure).  A refused, unknown or malformed
message is logged and answered with a failure when a reply is expected; the
device never crashes on one.  If a message that must have a reply of its own
cannot be answered, the connection is dropped.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

from ...fdnames import fd_path
from .channel import ConnectionDropped, VhostUserChannel
from .memory import GuestMemory, GuestMemoryError
from .messages import (FLAG_VERSION, FLAG_VERSION_MASK, MAX_CONFIG_SIZE, PROTOCOL_F_CONFIG,
                       PROTOCOL_FEATURES, TRANSPORT_FEATURES, VHOST_USER_F_PROTOCOL_FEATURES,
                       VIRTIO_RING_F_EVENT_IDX, Message, MessageError, Request, decode_config,
                       decode_mem_region, decode_mem_table, decode_u64, decode_vring_addr,
                       decode_vring_fd, decode_vring_state, encode_config, encode_u64,
                       encode_vring_state)
from .virtqueue import RequestHandler, SplitVirtqueue, VirtqueueError

log = logging.getLogger("ninep.vhost")

#: A message handler: a reply payload for GET_* requests, None for the rest.
_Handler = Callable[[Message], "bytes | None | Awaitable[bytes | None]"]


def fd_kind(fd: int) -> str:
    """What an fd refers to, as /proc names it ("anon_inode:[eventfd]", "pipe:[…]", a path)."""
    try:
        return os.readlink(fd_path(fd))
    except OSError as exc:
        return f"unknown ({exc.strerror})"


def is_eventfd(fd: int) -> bool:
    return fd_kind(fd) == "anon_inode:[eventfd]"


class VhostUserDevice:
    """One front end's view of a device: features, guest memory, config space, virtqueues.

    *handlers* has one request handler per queue.  *device_features* are the
    device type's own feature bits; the transport's (VERSION_1, EVENT_IDX,
    INDIRECT_DESC, PROTOCOL_FEATURES) are always offered beside them.
    *config_space* is what GET_CONFIG reads (zeros beyond it); SET_CONFIG goes
    to *write_config* and is refused without one.  *max_request* bounds a
    request's readable bytes on every queue, and *poll_ns* is each queue's polling
    window after its last reply (see :class:`SplitVirtqueue`).  The
    CONFIG protocol feature is offered by default only to a device with a
    config space.  The device closes every fd it is given.
    """

    def __init__(self, handlers: Sequence[RequestHandler], *, name: str = "vhost-user",
                 device_features: int = 0, config_space: bytes = b"",
                 write_config: Callable[[int, bytes], None] | None = None,
                 protocol_features: int | None = None, drain_timeout: float = 10.0,
                 max_request: Callable[[], int] | None = None, poll_ns: int = 0) -> None:
        if not handlers:
            raise ValueError("a device needs at least one queue")
        if len(config_space) > MAX_CONFIG_SIZE:
            raise ValueError(f"config space of {len(config_space)} bytes exceeds {MAX_CONFIG_SIZE}")
        if protocol_features is None:
            protocol_features = PROTOCOL_FEATURES if config_space else \
                PROTOCOL_FEATURES & ~PROTOCOL_F_CONFIG
        if protocol_features & ~PROTOCOL_FEATURES:
            raise ValueError(f"protocol features {protocol_features & ~PROTOCOL_FEATURES:#x} "
                             "are not implemented")
        self.name = name
        self.config_space = config_space
        self.write_config = write_config
        self.features = TRANSPORT_FEATURES | device_features
        self.protocol_features = protocol_features
        self.acked_features = 0
        self.acked_protocol_features = 0
        self.owned = False
        self.drain_timeout = drain_timeout
        self.max_request = max_request
        self.poll_ns = poll_ns
        self.memory = GuestMemory()
        self.queues = [self.new_queue(i, handler) for i, handler in enumerate(handlers)]
        self.message_counts: dict[str, int] = {}
        self._handlers: dict[int, _Handler] = {
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

    def new_queue(self, index: int, handler: RequestHandler) -> SplitVirtqueue:
        """The queue object for ring *index* (the one place a queue is made)."""
        return SplitVirtqueue(index, handler, max_request=self.max_request, poll_ns=self.poll_ns)

    # --- connection ------------------------------------------------------------------

    async def run(self, sock: socket.socket,
                  on_disconnect: Callable[[], Awaitable[None]] | None = None) -> None:
        """Serve *sock* to its end, then release everything the front end gave.

        The rings stop first; *on_disconnect* (the handlers' own clean-up, such
        as cancelling requests that have not started) runs next; then
        :meth:`close` waits, bounded, for what is still in flight and unmaps
        guest memory.
        """
        try:
            await self.serve(sock)
        finally:
            self.stop_processing()
            try:
                if on_disconnect is not None:
                    await on_disconnect()
            finally:
                await self.close()
            log.info("%s: front end gone; message counts: %s", self.name, self.message_counts)

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
        try:
            if handler is None:
                raise MessageError(f"unsupported message {name}")
            result = handler(msg)
            if asyncio.iscoroutine(result):
                result = await result
        except (MessageError, VirtqueueError, GuestMemoryError) as exc:
            log.error("%s (flags=%#x size=%d fds=%d) refused: %s", name, msg.flags,
                      len(msg.payload), len(msg.fds), exc)
            await self._reply_failure(msg, channel)
            return
        except (ConnectionDropped, OSError):
            raise
        except Exception:
            log.exception("%s failed", name)
            await self._reply_failure(msg, channel)
            return
        if msg.has_reply:
            assert isinstance(result, bytes)
            await channel.send_reply(msg.request, result)
        elif msg.need_reply:
            await channel.send_ack(msg.request, True)

    async def _reply_failure(self, msg: Message, channel: VhostUserChannel) -> None:
        if msg.request == Request.GET_CONFIG:
            await channel.send_reply(msg.request, b"")  # size 0 tells QEMU it failed
        elif msg.has_reply:
            raise ConnectionDropped(f"cannot answer {msg.name}")
        elif msg.need_reply:
            await channel.send_ack(msg.request, False)

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

    def _queue(self, index: int, msg: Message) -> SplitVirtqueue:
        if index >= len(self.queues):
            raise MessageError(f"{msg.name} for queue {index}; the device has {len(self.queues)}")
        return self.queues[index]

    def _state(self, msg: Message) -> tuple[SplitVirtqueue, int]:
        index, num = decode_vring_state(msg)
        return self._queue(index, msg), num

    def _vring_fd(self, msg: Message) -> tuple[SplitVirtqueue, int | None]:
        index, has_fd = decode_vring_fd(msg)
        q = self._queue(index, msg)
        if not has_fd:
            if msg.fds:
                raise MessageError(f"{msg.name} says no fd but carries {len(msg.fds)}")
            return q, None
        if len(msg.fds) == 1 and not is_eventfd(msg.fds[0]):
            # A pipe at EOF would spin the kick reader, a full one block a call.
            raise MessageError(f"{msg.name} fd is {fd_kind(msg.fds[0])}, not an eventfd")
        return q, msg.take_fd()

    # --- features ------------------------------------------------------------------------

    def _get_features(self, msg: Message) -> bytes:
        return encode_u64(self.features)

    def _set_features(self, msg: Message) -> None:
        value = decode_u64(msg)
        if value & ~self.features:
            raise MessageError(f"features {value & ~self.features:#x} were never offered")
        self.acked_features = value
        for q in self.queues:
            q.set_event_idx(bool(value & VIRTIO_RING_F_EVENT_IDX))
            if not value & VHOST_USER_F_PROTOCOL_FEATURES:
                q.set_enabled(True)  # without protocol features rings start enabled

    def _get_protocol_features(self, msg: Message) -> bytes:
        return encode_u64(self.protocol_features)

    def _set_protocol_features(self, msg: Message) -> None:
        value = decode_u64(msg)
        if value & ~self.protocol_features:
            raise MessageError(f"protocol features {value & ~self.protocol_features:#x} "
                               "were never offered")
        self.acked_protocol_features = value

    def _set_owner(self, msg: Message) -> None:
        self.owned = True

    def _reset_owner(self, msg: Message) -> None:
        # Deprecated; the spec recommends treating it as "disable all rings".
        for q in self.queues:
            q.set_enabled(False)

    def _get_queue_num(self, msg: Message) -> bytes:
        return encode_u64(len(self.queues))

    # --- memory --------------------------------------------------------------------------

    def _set_mem_table(self, msg: Message) -> None:
        regions = decode_mem_table(msg)
        memory = GuestMemory()
        try:
            for i, region in enumerate(regions):
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
        return encode_u64(GuestMemory.MAX_REGIONS)

    def _add_mem_reg(self, msg: Message) -> None:
        region = decode_mem_region(msg)
        fd = msg.take_fd()
        try:
            self.memory.add(region, fd)
        finally:
            os.close(fd)
        for q in self.queues:
            q.set_memory(self.memory)

    def _rem_mem_reg(self, msg: Message) -> None:
        region = decode_mem_region(msg)
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
        return encode_vring_state(q.index, last_avail)

    def _set_vring_addr(self, msg: Message) -> None:
        addr = decode_vring_addr(msg)
        self._queue(addr.index, msg).set_addresses(addr.desc, addr.avail, addr.used)

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
        access = decode_config(msg)
        data = self.config_space[access.offset:access.offset + access.size]
        return encode_config(access, data + bytes(access.size - len(data)))

    def _set_config(self, msg: Message) -> None:
        access = decode_config(msg)
        if self.write_config is None:
            raise MessageError(f"the {self.name} config space is read-only")
        self.write_config(access.offset, access.data)


__all__ = ["VhostUserDevice", "fd_kind", "is_eventfd"]
