"""The vhost-user wire format, sans-IO: message types, header, payloads, feature bits.

Nothing here touches a socket.  A message is a 12-byte header (request, flags,
payload size; native order, and every supported host is little-endian), a
payload and the fds that came with it (``docs/interop/vhost-user.rst``).  The
``decode_*`` functions check a received payload's shape and raise
:class:`MessageError` for one that does not fit; the ``encode_*`` functions
build what goes back.  Device-specific feature bits belong to the device
module, not here.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field

from .memory import REGION, MemoryRegion


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


HEADER = struct.Struct("<III")  # request, flags, size
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

# Virtio transport feature bits every device built on this layer offers.
VIRTIO_RING_F_INDIRECT_DESC = 1 << 28
VIRTIO_RING_F_EVENT_IDX = 1 << 29
VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
VIRTIO_F_VERSION_1 = 1 << 32
#: The device-independent part of GET_FEATURES' answer; a device adds its own bits.
TRANSPORT_FEATURES = (VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES
                      | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC)

PROTOCOL_F_MQ = 1 << 0
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_CONFIG = 1 << 9
PROTOCOL_F_CONFIGURE_MEM_SLOTS = 1 << 15
#: 0x8209: CONFIG (QEMU requires it of a device with a config space), REPLY_ACK,
#: CONFIGURE_MEM_SLOTS (ADD/REM_MEM_REG) and MQ (GET_QUEUE_NUM, which the spec asks
#: every back end to answer).  The reference trace was taken against a back end
#: offering 0x209, so QEMU used SET_MEM_TABLE there; with mem slots acknowledged it
#: sends ADD_MEM_REG instead.
PROTOCOL_FEATURES = (PROTOCOL_F_MQ | PROTOCOL_F_REPLY_ACK | PROTOCOL_F_CONFIG
                     | PROTOCOL_F_CONFIGURE_MEM_SLOTS)

#: Requests whose reply is a payload of their own (need_reply changes nothing).
HAS_REPLY = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                       Request.GET_VRING_BASE, Request.GET_QUEUE_NUM, Request.GET_CONFIG,
                       Request.GET_MAX_MEM_SLOTS})


class MessageError(Exception):
    """A request that was refused, unknown or malformed; answered with a failure."""


@dataclass(slots=True)
class Message:
    """One received message; it owns its fds until they are taken or closed."""

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

    @property
    def has_reply(self) -> bool:
        """Whether the request is answered with a payload of its own (GET_*)."""
        return self.request in HAS_REPLY

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


@dataclass(frozen=True, slots=True)
class VringAddr:
    """SET_VRING_ADDR: where a ring's three parts are, in the front end's addresses."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True, slots=True)
class ConfigAccess:
    """GET_CONFIG / SET_CONFIG: a byte range of the config space, and SET's data."""

    offset: int
    size: int
    flags: int
    data: bytes


# --- decoding -------------------------------------------------------------------------------


def decode_header(data: bytes) -> tuple[int, int, int]:
    """request, flags, payload size; ``len(data)`` must be ``HEADER.size``."""
    request, flags, size = HEADER.unpack(data)
    return request, flags, size


def _exact(msg: Message, size: int) -> None:
    if len(msg.payload) != size:
        raise MessageError(f"{msg.name} payload is {len(msg.payload)} bytes, not {size}")


def decode_u64(msg: Message) -> int:
    _exact(msg, U64.size)
    return U64.unpack(msg.payload)[0]


def decode_vring_state(msg: Message) -> tuple[int, int]:
    """(queue index, num) of SET_VRING_NUM/BASE/ENABLE and GET_VRING_BASE."""
    _exact(msg, VRING_STATE.size)
    index, num = VRING_STATE.unpack(msg.payload)
    return index, num


def decode_vring_fd(msg: Message) -> tuple[int, bool]:
    """(queue index, whether an fd is sent) of SET_VRING_KICK/CALL/ERR."""
    value = decode_u64(msg)
    return value & VRING_INDEX_MASK, not value & VRING_NOFD_MASK


def decode_vring_addr(msg: Message) -> VringAddr:
    _exact(msg, VRING_ADDR.size)
    return VringAddr(*VRING_ADDR.unpack(msg.payload))


def decode_mem_table(msg: Message) -> list[MemoryRegion]:
    """SET_MEM_TABLE's regions; one fd per region must come with them."""
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
    return [MemoryRegion.unpack(payload, MEMORY_HEADER.size + i * REGION.size)
            for i in range(nregions)]


def decode_mem_region(msg: Message) -> MemoryRegion:
    """ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding, then one region."""
    _exact(msg, 8 + REGION.size)
    return MemoryRegion.unpack(msg.payload, 8)


def decode_config(msg: Message) -> ConfigAccess:
    """GET_CONFIG / SET_CONFIG, whose range must lie within the largest config space."""
    if len(msg.payload) < CONFIG_HEADER.size:
        raise MessageError(f"{msg.name} payload is shorter than its header")
    offset, size, flags = CONFIG_HEADER.unpack_from(msg.payload)
    if len(msg.payload) != CONFIG_HEADER.size + size:
        raise MessageError(f"{msg.name} of {size} bytes in a {len(msg.payload)}-byte payload")
    if offset + size > MAX_CONFIG_SIZE:
        raise MessageError(f"{msg.name} offset={offset} size={size} beyond {MAX_CONFIG_SIZE}")
    return ConfigAccess(offset, size, flags, msg.payload[CONFIG_HEADER.size:])


# --- encoding -------------------------------------------------------------------------------


def encode_reply(request: int, payload: bytes) -> bytes:
    """A whole reply: header with flags VERSION|REPLY, then the payload."""
    return HEADER.pack(request, FLAG_VERSION | FLAG_REPLY, len(payload)) + payload


def encode_u64(value: int) -> bytes:
    return U64.pack(value)


def encode_vring_state(index: int, num: int) -> bytes:
    return VRING_STATE.pack(index, num)


def encode_config(access: ConfigAccess, data: bytes) -> bytes:
    """GET_CONFIG's answer: the request's header echoed, then *data*."""
    return CONFIG_HEADER.pack(access.offset, access.size, access.flags) + data


#: REPLY_ACK payloads.
ACK_SUCCESS = encode_u64(0)
ACK_FAILURE = encode_u64(1)


__all__ = [
    "Request", "request_name", "Message", "MessageError", "VringAddr", "ConfigAccess",
    "HEADER", "FLAG_VERSION", "FLAG_VERSION_MASK", "FLAG_REPLY", "FLAG_NEED_REPLY",
    "VRING_INDEX_MASK", "VRING_NOFD_MASK", "U64", "VRING_STATE", "VRING_ADDR", "CONFIG_HEADER",
    "MEMORY_HEADER", "MAX_PAYLOAD", "MAX_FDS", "MAX_CONFIG_SIZE", "MEM_TABLE_MAX_REGIONS",
    "VIRTIO_RING_F_INDIRECT_DESC", "VIRTIO_RING_F_EVENT_IDX", "VHOST_USER_F_PROTOCOL_FEATURES",
    "VIRTIO_F_VERSION_1", "TRANSPORT_FEATURES", "PROTOCOL_F_MQ", "PROTOCOL_F_REPLY_ACK",
    "PROTOCOL_F_CONFIG", "PROTOCOL_F_CONFIGURE_MEM_SLOTS", "PROTOCOL_FEATURES", "HAS_REPLY",
    "decode_header", "decode_u64", "decode_vring_state", "decode_vring_fd", "decode_vring_addr",
    "decode_mem_table", "decode_mem_region", "decode_config", "encode_reply", "encode_u64",
    "encode_vring_state", "encode_config", "ACK_SUCCESS", "ACK_FAILURE",
]
