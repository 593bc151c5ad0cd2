"""Fuzzing the vhost-user back end: malformed descriptor chains and control messages.

The server is :func:`serve_vhost_user` in this process, on a real Unix socket,
with a real :class:`LocalBackend` on a scratch export; the front end is
:mod:`ninep.testing.vhost_frontend` with memfd guest RAM, so every byte goes
through the same socket, SCM_RIGHTS and shared mappings QEMU would use.

Two kinds of case alternate, in phases (one front end at a time):

* **Chains.**  Batches of generated descriptor chains go on the ring, one kick
  per batch: valid 9P requests (probes that must be answered, fuzzed frames
  from :mod:`.engine`), well-formed odd chains (zero-length, region-spanning,
  1024-entry tables, 4 GiB requests, a head published twice) and malformed
  ones (loops, out-of-range heads/nexts/addresses, overflowing lengths, nested
  or misplaced indirect tables, readable after writable), some mutated at
  random.  An oracle (:func:`judge`) reads each chain back from guest memory
  and says what the virtio rules make of it: *broken* (never returned, one
  signal on the error eventfd) or *returned* (exactly one used element per
  publication, used.len within its writable bytes, and a well-formed 9P reply
  when it has one).  Nothing outside the returned chains' writable buffers and
  the used ring may change.  Ring episodes now and then: avail.idx jumping by
  more than the ring, used rings outside memory or in a read-only region,
  used rings over the avail ring or the descriptor table, a disconnect with
  requests in flight.
* **Control messages.**  Bursts on fresh connections: every request code and
  unknown ones, wrong sizes and payloads, fds where none belong (pipes, files,
  sockets, sealed or read-only memfds) or missing where needed, bad memory
  tables, ring sizes and addresses, messages before SET_OWNER, torn or
  truncated messages.  Each message must get the reply it asks for or the
  connection must close; a sync probe ends every burst.

After every phase: no exception logged by the server, no hang (every wait has
a timeout), the process's fd count and guest-RAM mappings back to their
baseline, and a good session still works.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
import random
import socket
import struct
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ninep.backends.local import LocalBackend
from ninep.protocol import ninep as p
from ninep.server.session import SessionConfig
from ninep.testing.fake_virtqueue import DriverQueue, GuestRam
from ninep.testing.vhost_frontend import ACKED, PLAIN, VhostUserFrontend, VhostUserGuest
from ninep.transport.vhost.memory import MemoryRegion
from ninep.transport.vhost.messages import (CONFIG_HEADER, FLAG_NEED_REPLY, FLAG_REPLY,
                                            FLAG_VERSION, HEADER, MAX_FDS, MAX_PAYLOAD,
                                            MEMORY_HEADER, U64, VRING_ADDR, VRING_NOFD_MASK,
                                            VRING_STATE, Request, request_name)
from ninep.transport.vhost.virtqueue import (DESC, MAX_CHAIN, VIRTQ_DESC_F_INDIRECT,
                                             VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, ring_sizes)
from ninep.transport.vhost_user import DEVICE_FEATURES, serve_vhost_user

from security.harness import Canary, fd_count, rss_kib

from .engine import ERROR_TYPES, ResourceTotals, build_export, decode_reply, error_errno, \
    random_frames, without_mknod_capability

MIB = 1 << 20
U64_MAX = (1 << 64) - 1
MSIZE = 8192
RING_NUM = 256
#: Chains per kick (well under CHAINS_PER_PASS * passes, and under RING_NUM).
BATCH_CHAINS = 40
WAIT_TIMEOUT = 10.0
#: Guest RAM: R0 and R1 adjacent in guest-physical space (far apart for the front end),
#: a hole, then R2 with the rings and the indirect tables.
R0 = MemoryRegion(gpa=0, size=4 * MIB, uva=0x7F0000000000, mmap_offset=0)
R1 = MemoryRegion(gpa=4 * MIB, size=4 * MIB, uva=0x7E0000000000, mmap_offset=4 * MIB)
R2 = MemoryRegion(gpa=16 * MIB, size=2 * MIB, uva=0x7D0000000000, mmap_offset=8 * MIB)
LAYOUT = (R0, R1, R2)
RAM_SIZE = 10 * MIB
RINGS_AT = (R2.gpa, R2.gpa + 4096, R2.gpa + 8192)  # desc, avail, used
DATA_ZONE = (3 * MIB + MIB // 4, 4 * MIB + 3 * MIB // 4)  # straddles the R0/R1 boundary
TABLE_ZONE = (R2.gpa + 12288, R2.gpa + 12288 + 768 * 1024)
PROTECTED = (R2.gpa, TABLE_ZONE[1])  # rings + tables: no returned chain may write here
#: (zones are (start, end); ranges elsewhere are (gpa, length))
#: Addresses a mutation may put in a descriptor: in range, at edges, in the hole, wrapping.
ODD_ADDRS = (0, R0.size - 8, R1.gpa + R1.size - 8, R1.gpa + R1.size, 9 * MIB, R2.gpa - 1,
             R2.gpa + R2.size - 8, R2.gpa + R2.size, RAM_SIZE, 1 << 32, 1 << 40, U64_MAX - 7,
             U64_MAX, U64_MAX - 4095)
ODD_LENGTHS = (0, 1, 7, 15, 16, 17, 4096, R0.size, R0.size + R1.size, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFF0, 0xFFFFFFFF)

#: Chain kinds the oracle must find broken (the named classes of the hardening issue),
#: with the rule each breaks (as :func:`judge` names it).
MALFORMED_KINDS = {
    "loop": "too-long", "indirect-loop": "too-long", "too-long": "too-long",
    "indirect-too-long": "indirect-bad-size", "head-out-of-range": "head-out-of-range",
    "next-out-of-range": "next-out-of-range", "indirect-next-out-of-range": "next-out-of-range",
    "out-of-range": "out-of-range", "address-wraps": "out-of-range",
    "length-overflow": "out-of-range", "total-overflow": "total-overflow",
    "nested-indirect": "nested-indirect", "indirect-in-chain": "nested-indirect",
    "indirect-with-next": "indirect-with-next", "indirect-bad-size": "indirect-bad-size",
    "indirect-table-outside": "indirect-table-outside",
    "indirect-table-spans-regions": "indirect-table-outside",
    "readable-after-writable": "readable-after-writable",
}
#: Chains that are odd but valid: the oracle must find them returned.
ODD_VALID_KINDS = ("zero-length", "no-writable", "no-readable", "spans-regions", "max-indirect",
                   "oversized-request", "duplicate-head")
EPISODES = ("avail-jump", "used-outside-memory", "used-in-read-only-region", "used-over-avail",
            "used-over-desc", "disconnect-in-flight")


# --- results --------------------------------------------------------------------------------


@dataclass
class VhostFuzzStats(ResourceTotals):
    """Totals of a run; ``summary()`` is what scripts/fuzz-long prints."""

    cases: int = 0
    chains: int = 0
    messages: int = 0
    batches: int = 0
    bursts: int = 0
    connections: int = 0
    kinds: Counter = field(default_factory=Counter)  # chain kind -> generated
    outcomes: Counter = field(default_factory=Counter)  # (kind, "broken"/"reply"/"empty")
    replies: Counter = field(default_factory=Counter)  # 9P reply type -> count
    errors: Counter = field(default_factory=Counter)  # error reply errno / control failure kind
    episodes: Counter = field(default_factory=Counter)
    control: Counter = field(default_factory=Counter)  # "ack-ok", "ack-fail", "reply", "dropped"...
    refused: Counter = field(default_factory=Counter)  # control request -> failures answered
    server_log: Counter = field(default_factory=Counter)  # level -> records (expected ones)

    def summary(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        outcome = Counter()
        for (_, result), n in self.outcomes.items():
            outcome[result] += n
        why_broken = Counter({k[7:]: v for k, v in self.errors.items() if k.startswith("broken:")})
        errnos = Counter({k: v for k, v in self.errors.items() if not k.startswith("broken:")})

        def top(c: Counter, most: int | None = None) -> str:
            items = c.most_common(most)
            rest = sum(c.values()) - sum(v for _, v in items)
            return (", ".join(f"{k} {v}" for k, v in items) or "none") + \
                (f", others {rest}" if rest else "")

        return (f"cases {self.cases}: {self.chains} descriptor chains in {self.batches} kicks, "
                f"{self.messages} control messages in {self.bursts} bursts; {self.seconds:.1f} s "
                f"({rate:.0f} cases/s), {self.connections} ring connections\n"
                f"chains: {outcome['broken']} dropped as broken, {outcome['reply']} answered, "
                f"{outcome['empty']} returned with used.len 0\n"
                f"chain kinds: {top(self.kinds)}\n"
                f"why broken: {top(why_broken)}\n"
                f"9P replies: {top(self.replies)}\nerror replies by errno: {top(errnos)}\n"
                f"control outcomes: {top(self.control)}\n"
                f"control refusals: {top(self.refused, 12)}\n"
                f"ring episodes: {top(self.episodes)}\n"
                f"server log records: {top(self.server_log)}\n"
                f"fds before/after: {self.fds_before}/{self.fds_after}; RSS before/after: "
                f"{self.rss_before_kib}/{self.rss_after_kib} KiB")


class VhostFuzzFailure(AssertionError):
    """A check failed; says the seed-independent facts needed to reproduce it."""


# --- the oracle -----------------------------------------------------------------------------

Range = tuple[int, int]  # gpa, length


@dataclass(slots=True)
class Verdict:
    """What the virtio rules make of one chain, from the driver's side."""

    broken: str | None = None
    readable: list[Range] = field(default_factory=list)
    writable: list[Range] = field(default_factory=list)
    structure: list[Range] = field(default_factory=list)  # table bytes the walk reads

    @property
    def capacity(self) -> int:
        return sum(n for _, n in self.writable)


def covered(addr: int, length: int, regions: tuple[MemoryRegion, ...] = LAYOUT) -> bool:
    """Whether guest RAM holds every byte of ``[addr, addr+length)`` (regions may abut)."""
    end = addr + length
    for r in sorted(regions, key=lambda r: r.gpa):
        if r.gpa <= addr < r.gpa + r.size:
            addr = r.gpa + r.size
            if addr >= end:
                return True
    return False


def in_one_region(addr: int, length: int, regions: tuple[MemoryRegion, ...] = LAYOUT) -> bool:
    return any(r.gpa <= addr and addr + length <= r.gpa + r.size for r in regions)


def judge(read: Callable[[int, int], bytes], head: int, num: int = RING_NUM,
          desc_gpa: int = RINGS_AT[0]) -> Verdict:
    """Follow a chain as it sits in guest memory and say whether a device must refuse it.

    The rules: head and every next inside their table; at most
    min(ring size, MAX_CHAIN) descriptors (so a loop is caught); an indirect
    table is a non-empty multiple of 16 bytes, at most MAX_CHAIN entries, inside
    one region, in a head descriptor without NEXT, and holds no indirect
    descriptor; every non-empty buffer is guest RAM; writable buffers come last;
    each direction totals less than 4 GiB.
    """
    v = Verdict()

    def refuse(why: str) -> Verdict:
        v.broken = why
        return v

    if head >= num:
        return refuse("head-out-of-range")
    v.structure.append((desc_gpa + 16 * head, 16))
    addr, length, flags, nxt = DESC.unpack(read(desc_gpa + 16 * head, 16))
    entries = num
    table: bytes | None = None  # an indirect table, read once
    if flags & VIRTQ_DESC_F_INDIRECT:
        if flags & VIRTQ_DESC_F_NEXT:
            return refuse("indirect-with-next")
        if length == 0 or length % 16 or length // 16 > MAX_CHAIN:
            return refuse("indirect-bad-size")
        if not in_one_region(addr, length):
            return refuse("indirect-table-outside")
        v.structure.append((addr, length))
        table, entries = read(addr, length), length // 16
        addr, length, flags, nxt = DESC.unpack_from(table, 0)
    budget = min(entries, MAX_CHAIN)
    totals = {True: 0, False: 0}
    while True:
        budget -= 1
        if budget < 0:
            return refuse("too-long")
        if flags & VIRTQ_DESC_F_INDIRECT:
            return refuse("nested-indirect")
        if length and not covered(addr, length):
            return refuse("out-of-range")
        writable = bool(flags & VIRTQ_DESC_F_WRITE)
        if not writable and v.writable:
            return refuse("readable-after-writable")
        (v.writable if writable else v.readable).append((addr, length))
        totals[writable] += length
        if not flags & VIRTQ_DESC_F_NEXT:
            break
        if nxt >= entries:
            return refuse("next-out-of-range")
        if table is None:
            v.structure.append((desc_gpa + 16 * nxt, 16))
            addr, length, flags, nxt = DESC.unpack(read(desc_gpa + 16 * nxt, 16))
        else:
            addr, length, flags, nxt = DESC.unpack_from(table, 16 * nxt)
    if max(totals.values()) > 0xFFFFFFFF:
        return refuse("total-overflow")
    return v


def overlaps(a: Range, b: Range) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1] and a[1] > 0 and b[1] > 0


def reply_problem(request: bytes, reply: bytes) -> str | None:
    """Why *reply* is not a well-formed answer to *request*, or None if it is."""
    if len(reply) < p.HEADER_SIZE or struct.unpack_from("<I", reply)[0] != len(reply):
        return f"reply {reply[:16].hex()} does not say its own length {len(reply)}"
    try:
        rtag, msg = decode_reply(reply)
    except p.ProtocolError as exc:
        return f"malformed reply {reply[:32].hex()}: {exc}"
    ecode = error_errno(msg)
    if len(request) >= p.HEADER_SIZE:
        _, ttype, ttag = p.HEADER.unpack_from(request)
        if rtag != ttag or type(msg).TYPE not in (ttype + 1, *ERROR_TYPES):
            return f"{type(msg).__name__} tag {rtag} answers type {ttype} tag {ttag}"
    elif rtag != p.NOTAG or ecode is None:
        return f"a runt request got {type(msg).__name__} tag {rtag}"
    if ecode == errno.EIO:
        return f"{type(msg).__name__}(EIO): an internal error"
    return None


# --- the server's log -----------------------------------------------------------------------


class ServerLog(logging.Handler):
    """Counts the server's records and keeps those that carry an exception (the findings).

    While installed, the "ninep" and "asyncio" loggers do not propagate: a fuzz
    run logs an error for every broken chain, which nobody needs on stderr.
    """

    def __init__(self, stats: VhostFuzzStats) -> None:
        super().__init__(logging.DEBUG)
        self.stats = stats
        self.findings: list[str] = []
        self.recent: collections.deque[str] = collections.deque(maxlen=12)

    def emit(self, record: logging.LogRecord) -> None:
        self.stats.server_log[record.levelname] += 1
        self.recent.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])
        if record.exc_info or record.name == "asyncio":
            self.findings.append(self.format(record))

    @contextlib.contextmanager
    def installed(self) -> Iterator[ServerLog]:
        loggers = [logging.getLogger(n) for n in ("ninep", "asyncio")]
        saved = [(lg, lg.propagate, lg.level) for lg in loggers]
        loop = asyncio.get_running_loop()
        old_handler = loop.get_exception_handler()
        loop.set_exception_handler(lambda _l, ctx: self.findings.append(
            f"loop: {ctx.get('message')} {ctx.get('exception')!r}"))
        for lg in loggers:
            lg.addHandler(self)
            lg.propagate = False
            lg.setLevel(logging.WARNING)
        try:
            yield self
        finally:
            for lg, propagate, level in saved:
                lg.removeHandler(self)
                lg.propagate = propagate
                lg.setLevel(level)
            loop.set_exception_handler(old_handler)

    def check(self, where: str) -> None:
        if self.findings:
            raise VhostFuzzFailure(f"{where}: the server logged an exception:\n"
                                   + "\n".join(self.findings[:3]))


# --- process state ---------------------------------------------------------------------------


def mapped_bytes(marker: str = "ninep-") -> int:
    """Bytes of this process's mappings of memfds named *marker*… (guest RAM, fuzz regions)."""
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            if marker in line:
                lo, hi = line.split()[0].split("-")
                total += int(hi, 16) - int(lo, 16)
    return total


@dataclass
class Baseline:
    fds: int
    mapped: int

    @classmethod
    def now(cls) -> Baseline:
        return cls(fd_count(), mapped_bytes())

    async def restored(self, where: str, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait (bounded) until the server released what the last connection held."""
        deadline = time.monotonic() + timeout
        while (fd_count(), mapped_bytes()) != (self.fds, self.mapped):
            if time.monotonic() > deadline:
                fds = {fd: _fd_target(fd) for fd in os.listdir("/proc/self/fd")}
                raise VhostFuzzFailure(
                    f"{where}: fds {fd_count()} (baseline {self.fds}), guest RAM mapped "
                    f"{mapped_bytes()} bytes (baseline {self.mapped}); open fds: {fds}")
            await asyncio.sleep(0.002)


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


# --- the chain front end ---------------------------------------------------------------------


class RecordingDriverQueue(DriverQueue):
    """A DriverQueue that records used elements instead of completing its own requests
    (the fuzz writes raw descriptors and keeps its own books)."""

    def __init__(self, ram: GuestRam) -> None:
        super().__init__(ram, RING_NUM, event_idx=True, at=RINGS_AT)
        self.returned: list[tuple[int, int]] = []

    def _complete(self, head: int, length: int) -> None:
        self.returned.append((head, length))

    def reset_rings(self) -> None:
        """Zero the rings and start over at index 0 (after an episode scribbled on them)."""
        desc, avail, used = ring_sizes(self.num, True)
        for gpa, n in ((self.desc_gpa, desc), (self.avail_gpa, avail), (self.used_gpa, used)):
            self.ram.fill(gpa, n)
        self.avail_idx = self.last_used = self._kick_checked = 0
        self.returned.clear()


class Full(Exception):
    """The batch's scratch memory or descriptor indices ran out."""


@dataclass(slots=True)
class Chain:
    kind: str
    head: int
    request: bytes | None = None  # the 9P request bytes, when the chain carries one
    probe: bool = False  # a plain request that must be answered
    publish: int = 1  # times its head goes on the avail ring
    verdict: Verdict = field(default_factory=Verdict)
    clean: bool = True  # no buffer shared with another chain: its reply can be checked


class BatchBuilder:
    """Lays out one batch of chains: scratch buffers, indirect tables, table indices."""

    def __init__(self, ram: GuestRam, rng: random.Random) -> None:
        self.ram = ram
        self.rng = rng
        self._data = DATA_ZONE[0]
        self._table = TABLE_ZONE[0]
        self.free = list(range(RING_NUM))
        rng.shuffle(self.free)

    # --- allocation ----------------------------------------------------------------------

    def buffer(self, size: int, content: bytes | None = None) -> int:
        start = -(-self._data // 8) * 8
        if start + size > DATA_ZONE[1]:
            raise Full
        self._data = start + size
        if content is not None:
            self.ram.write(start, content)
        elif size:
            self.ram.fill(start, size, 0xA5)  # stale bytes a bogus length would expose
        return start

    def table(self, entries: int) -> int:
        start = -(-self._table // 16) * 16
        if start + 16 * entries > TABLE_ZONE[1]:
            raise Full
        self._table = start + 16 * entries
        return start

    def skip_to(self, gpa: int) -> None:
        """Place the next buffer at *gpa* (Full if the batch already went past it)."""
        if self._data > gpa:
            raise Full
        self._data = gpa

    def indices(self, n: int) -> list[int]:
        if len(self.free) < n:
            raise Full
        return [self.free.pop() for _ in range(n)]

    # --- writing ---------------------------------------------------------------------------

    def put(self, index: int, addr: int, length: int, flags: int, nxt: int = 0,
            table: int = RINGS_AT[0]) -> None:
        self.ram.write(table + 16 * index, DESC.pack(addr & U64_MAX, length & 0xFFFFFFFF,
                                                     flags & 0xFFFF, nxt & 0xFFFF))

    def link(self, segments: list[tuple[int, int, int]], indirect: bool) -> int:
        """Chain ``(addr, len, flags)`` segments in order (NEXT added); returns the head."""
        n = len(segments)
        table, slots = (self.table(n), list(range(n))) if indirect else \
            (RINGS_AT[0], self.indices(n))
        for i, (addr, length, flags) in enumerate(segments):
            more = i < n - 1
            self.put(slots[i], addr, length, flags | (VIRTQ_DESC_F_NEXT if more else 0),
                     slots[i + 1] if more else 0, table)
        if not indirect:
            return slots[0]
        head = self.indices(1)[0]
        self.put(head, table, 16 * n, VIRTQ_DESC_F_INDIRECT)
        return head

    def request_segments(self, frame: bytes, reply: int) -> list[tuple[int, int, int]]:
        """*frame* in one to three readable pieces, then *reply* writable bytes in pieces."""
        rng = self.rng
        cuts = sorted(rng.sample(range(1, len(frame)),
                                 max(0, min(len(frame) - 1, rng.choice((0, 0, 1, 2))))))
        pieces = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)])]
        segs = [(self.buffer(len(x), x), len(x), 0) for x in pieces]
        sizes = [reply] if rng.random() < 0.6 or reply < 12 else [11, reply - 11]
        segs += [(self.buffer(n), n, VIRTQ_DESC_F_WRITE) for n in sizes]
        return segs


# --- chain generators -----------------------------------------------------------------------

PROBE_FIDS = (0, 1)


def probe_message(rng: random.Random) -> Any:
    """A plain request the server must answer (Rlerror is an answer)."""
    return rng.choice([
        p.Tattach(rng.choice(PROBE_FIDS), p.NOFID, "root", "", 0),
        p.Tgetattr(rng.choice(PROBE_FIDS), p.GETATTR_BASIC), p.Tgetattr(0, 0x3FFF),
        p.Twalk(0, 1, []), p.Tclunk(1), p.Tstatfs(0),
    ])


class ChainGenerator:
    """Builds the chains of a batch; each kind is one method ``k_<kind>``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.tag = 0xF000
        self.frames: list[bytes] = []
        valid = {"probe": 10, "frame": 14, "mutant": 14}
        odd = {k: 1.5 for k in ODD_VALID_KINDS} | {"oversized-request": 0.3, "max-indirect": 0.5}
        bad = {k: 2 for k in MALFORMED_KINDS} | {"total-overflow": 0.5, "indirect-too-long": 0.5}
        weights = valid | odd | bad
        self.kinds = list(weights)
        self.weights = [weights[k] for k in self.kinds]

    def pick(self) -> str:
        return self.rng.choices(self.kinds, self.weights)[0]

    def build(self, b: BatchBuilder, kind: str) -> Chain:
        return getattr(self, "k_" + kind.replace("-", "_"))(b)

    # --- requests ----------------------------------------------------------------------------

    def _frame(self) -> bytes:
        if not self.frames:
            self.frames = random_frames(self.rng, 32)
        return self.frames.pop()

    def _next_tag(self) -> int:
        self.tag = 0xF000 + (self.tag + 1) % 0xFFE
        return self.tag

    def _probe_frame(self) -> bytes:
        return p.encode(probe_message(self.rng), self._next_tag())

    def request_chain(self, b: BatchBuilder, frame: bytes, kind: str, probe: bool = False,
                 reply: int | None = None) -> Chain:
        if reply is None:
            reply = 256 if probe else self.rng.choice((0, 7, 11, 64, 256, 4096, MSIZE))
        head = b.link(b.request_segments(frame, reply), indirect=self.rng.random() < 0.5)
        return Chain(kind, head, frame, probe)

    def k_probe(self, b: BatchBuilder) -> Chain:
        return self.request_chain(b, self._probe_frame(), "probe", probe=True)

    def k_frame(self, b: BatchBuilder) -> Chain:
        return self.request_chain(b, self._frame(), "frame")

    def k_mutant(self, b: BatchBuilder) -> Chain:
        """A valid chain with one to three fields of its descriptors changed at random."""
        rng = self.rng
        chain = self.request_chain(b, self._frame(), "mutant")
        chain.request = None
        spots = [(RINGS_AT[0], chain.head)]  # (table, index) of each descriptor
        addr, length, flags, nxt = DESC.unpack(b.ram.read(RINGS_AT[0] + 16 * chain.head, 16))
        if flags & VIRTQ_DESC_F_INDIRECT:
            spots += [(addr, i) for i in range(length // 16)]
        while flags & VIRTQ_DESC_F_NEXT:
            spots.append((RINGS_AT[0], nxt))
            flags, nxt = DESC.unpack(b.ram.read(RINGS_AT[0] + 16 * nxt, 16))[2:]
        for _ in range(rng.choice((1, 1, 2, 3))):
            base, index = rng.choice(spots)
            at = base + 16 * index
            addr, length, flags, nxt = DESC.unpack(b.ram.read(at, 16))
            what = rng.randrange(4)
            if what == 0:
                addr = rng.choice(ODD_ADDRS) if rng.random() < 0.7 else \
                    rng.randrange(DATA_ZONE[0], DATA_ZONE[1])
            elif what == 1:
                length = rng.choice(ODD_LENGTHS) if rng.random() < 0.8 else rng.getrandbits(32)
            elif what == 2:
                flags ^= rng.choice((VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT,
                                     rng.getrandbits(16)))
            else:
                nxt = rng.choice((0, index, index + 1, RING_NUM - 1, RING_NUM, 0xFFFF,
                                  rng.getrandbits(16)))
            b.ram.write(at, DESC.pack(addr, length, flags, nxt))
        return chain

    # --- odd but valid ---------------------------------------------------------------------

    def k_zero_length(self, b: BatchBuilder) -> Chain:
        """Zero-length descriptors (even at addresses outside RAM): nothing to read or write."""
        rng = self.rng
        segs = [(rng.choice((0, RAM_SIZE, U64_MAX)), 0, 0) for _ in range(rng.randrange(3))]
        segs += [(rng.choice((0, 9 * MIB)), 0, VIRTQ_DESC_F_WRITE) for _ in range(rng.randrange(3))]
        if not segs or rng.random() < 0.3:  # a real request around zero-length pieces
            frame = self._probe_frame()
            segs = [(b.buffer(len(frame), frame), len(frame), 0), (RAM_SIZE, 0, 0)] + \
                [(0, 0, VIRTQ_DESC_F_WRITE), (b.buffer(64), 64, VIRTQ_DESC_F_WRITE)]
            return Chain("zero-length", b.link(segs, rng.random() < 0.5), frame)
        return Chain("zero-length", b.link(segs, rng.random() < 0.5))

    def k_no_writable(self, b: BatchBuilder) -> Chain:
        frame = self._probe_frame()
        return Chain("no-writable", b.link([(b.buffer(len(frame), frame), len(frame), 0)],
                                           self.rng.random() < 0.5), frame)

    def k_no_readable(self, b: BatchBuilder) -> Chain:
        return Chain("no-readable", b.link([(b.buffer(64), 64, VIRTQ_DESC_F_WRITE)],
                                           self.rng.random() < 0.5), b"")

    def k_spans_regions(self, b: BatchBuilder) -> Chain:
        """Request and reply buffers that cross from R0 into R1 (one descriptor, two views)."""
        frame = self._probe_frame()
        b.skip_to(R1.gpa - len(frame) // 2 // 8 * 8)
        out = b.buffer(len(frame), frame)
        reply = b.buffer(256)
        return Chain("spans-regions", b.link([(out, len(frame), 0),
                                              (reply, 256, VIRTQ_DESC_F_WRITE)], False),
                     frame, probe=True)

    def k_max_indirect(self, b: BatchBuilder) -> Chain:
        """An indirect table of exactly MAX_CHAIN entries: the longest chain allowed."""
        frame = self._probe_frame()
        pieces = [(b.buffer(len(frame), frame), len(frame), 0)]
        pieces += [(0, 0, VIRTQ_DESC_F_WRITE)] * (MAX_CHAIN - 2)
        pieces.append((b.buffer(256), 256, VIRTQ_DESC_F_WRITE))
        return Chain("max-indirect", b.link(pieces, True), frame, probe=True)

    def k_oversized_request(self, b: BatchBuilder) -> Chain:
        """~4 GB of readable bytes from 1000 views of the same 4 MiB: more than msize."""
        tail = R1.gpa + R1.size - 16  # outside every zone
        pieces = [(tail, 16, 0)] + [(R0.gpa, R0.size, 0)] * 998 + [(R1.gpa, R1.size - 16, 0)]
        total = sum(n for _, n, _ in pieces)  # the size field agrees: a session would copy it
        b.ram.write(tail, struct.pack("<IBH", total, p.Tgetattr.TYPE, self._next_tag()))
        pieces.append((b.buffer(64), 64, VIRTQ_DESC_F_WRITE))
        return Chain("oversized-request", b.link(pieces, True))

    def k_duplicate_head(self, b: BatchBuilder) -> Chain:
        """One head made available twice: two requests on the same buffers."""
        chain = self.request_chain(b, self._probe_frame(), "duplicate-head")
        chain.publish = 2
        return chain

    # --- malformed ---------------------------------------------------------------------------

    def _scrap(self, b: BatchBuilder, n: int = 8, flags: int = 0) -> tuple[int, int, int]:
        return b.buffer(n), n, flags

    def k_loop(self, b: BatchBuilder) -> Chain:
        idx = b.indices(self.rng.choice((1, 2, 3, 7)))
        for i, index in enumerate(idx):
            self.put_scrap(b, index, VIRTQ_DESC_F_NEXT, idx[(i + 1) % len(idx)])
        return Chain("loop", idx[0])

    def put_scrap(self, b: BatchBuilder, index: int, flags: int, nxt: int = 0,
                  table: int = RINGS_AT[0]) -> None:
        addr, length, _ = self._scrap(b, self.rng.choice((0, 8)))
        b.put(index, addr, length, flags, nxt, table)

    def k_indirect_loop(self, b: BatchBuilder) -> Chain:
        n = self.rng.choice((1, 2, 5))
        table = b.table(n)
        for i in range(n):
            self.put_scrap(b, i, VIRTQ_DESC_F_NEXT, (i + 1) % n, table)
        head = b.indices(1)[0]
        b.put(head, table, 16 * n, VIRTQ_DESC_F_INDIRECT)
        return Chain("indirect-loop", head)

    def k_too_long(self, b: BatchBuilder) -> Chain:
        """A long path through many free descriptors that finally comes back on itself."""
        n = min(len(b.free) - 4, self.rng.choice((16, 64, 128)))
        if n < 2:
            raise Full
        idx = b.indices(n)
        for i, index in enumerate(idx):
            b.put(index, 0, 0, VIRTQ_DESC_F_NEXT, idx[i + 1] if i + 1 < n else idx[n // 2])
        return Chain("too-long", idx[0])

    def k_indirect_too_long(self, b: BatchBuilder) -> Chain:
        n = MAX_CHAIN + self.rng.choice((1, 2, 100))
        table = b.table(n)
        for i in range(n):
            b.put(i, 0, 0, VIRTQ_DESC_F_NEXT if i < n - 1 else 0, i + 1, table)
        head = b.indices(1)[0]
        b.put(head, table, 16 * n, VIRTQ_DESC_F_INDIRECT)
        return Chain("indirect-too-long", head)

    def k_head_out_of_range(self, b: BatchBuilder) -> Chain:
        return Chain("head-out-of-range", self.rng.choice((RING_NUM, RING_NUM + 1, 0xFFFF)))

    def k_next_out_of_range(self, b: BatchBuilder) -> Chain:
        head = b.indices(1)[0]
        self.put_scrap(b, head, VIRTQ_DESC_F_NEXT, self.rng.choice((RING_NUM, 0x8000, 0xFFFF)))
        return Chain("next-out-of-range", head)

    def k_indirect_next_out_of_range(self, b: BatchBuilder) -> Chain:
        n = self.rng.choice((1, 2, 4))
        table = b.table(n)
        for i in range(n):
            nxt = i + 1 if i < n - 1 else n + self.rng.randrange(3)
            self.put_scrap(b, i, VIRTQ_DESC_F_NEXT, nxt, table)
        head = b.indices(1)[0]
        b.put(head, table, 16 * n, VIRTQ_DESC_F_INDIRECT)
        return Chain("indirect-next-out-of-range", head)

    def _one_bad_buffer(self, b: BatchBuilder, kind: str, addr: int, length: int) -> Chain:
        """A request whose reply buffer (or request, or an extra piece) is *addr*+*length*."""
        frame = self._probe_frame()
        segs = [(b.buffer(len(frame), frame), len(frame), 0)]
        where = self.rng.randrange(3)
        bad_flags = VIRTQ_DESC_F_WRITE if where else 0
        if where == 0:
            segs.insert(0, (addr, length, 0))
        segs.append((addr, length, bad_flags) if where == 1
                    else (b.buffer(64), 64, VIRTQ_DESC_F_WRITE))
        if where == 2:
            segs.append((addr, length, VIRTQ_DESC_F_WRITE))
        return Chain(kind, b.link(segs, self.rng.random() < 0.5))

    def k_out_of_range(self, b: BatchBuilder) -> Chain:
        addr, length = self.rng.choice([
            (RAM_SIZE, 8), (9 * MIB, 16), (R1.gpa + R1.size - 4, 8), (R2.gpa - 8, 16),
            (R2.gpa + R2.size - 8, 9), (1 << 40, 1), (R2.gpa + R2.size, 4096)])
        return self._one_bad_buffer(b, "out-of-range", addr, length)

    def k_address_wraps(self, b: BatchBuilder) -> Chain:
        addr = self.rng.choice((U64_MAX, U64_MAX - 7, U64_MAX - 4095))
        return self._one_bad_buffer(b, "address-wraps", addr, self.rng.choice((16, 8192)))

    def k_length_overflow(self, b: BatchBuilder) -> Chain:
        start = self.rng.choice((DATA_ZONE[0], R0.gpa, R2.gpa + R2.size - 4096))
        return self._one_bad_buffer(b, "length-overflow", start,
                                    self.rng.choice((0xFFFFFFFF, 0x80000000, 0xFFFFF000)))

    def k_total_overflow(self, b: BatchBuilder) -> Chain:
        """MAX_CHAIN descriptors each naming all 8 MiB of R0+R1: 8 GiB, past u32."""
        flags = self.rng.choice((0, VIRTQ_DESC_F_WRITE))
        span = R0.size + R1.size
        return Chain("total-overflow", b.link([(R0.gpa, span, flags)] * MAX_CHAIN, True))

    def k_nested_indirect(self, b: BatchBuilder) -> Chain:
        inner = b.table(2)
        self.put_scrap(b, 0, 0, 0, inner)
        self.put_scrap(b, 1, 0, 0, inner)
        outer = b.table(2)
        self.put_scrap(b, 0, VIRTQ_DESC_F_NEXT, 1, outer)
        b.put(1, inner, 32, VIRTQ_DESC_F_INDIRECT | self.rng.choice((0, VIRTQ_DESC_F_WRITE)), 0,
              outer)
        if self.rng.random() < 0.5:  # the nested table first
            b.put(0, inner, 32, VIRTQ_DESC_F_INDIRECT, 0, outer)
        head = b.indices(1)[0]
        b.put(head, outer, 32, VIRTQ_DESC_F_INDIRECT)
        return Chain("nested-indirect", head)

    def k_indirect_in_chain(self, b: BatchBuilder) -> Chain:
        table = b.table(1)
        self.put_scrap(b, 0, 0, 0, table)
        first, second = b.indices(2)
        self.put_scrap(b, first, VIRTQ_DESC_F_NEXT, second)
        b.put(second, table, 16, VIRTQ_DESC_F_INDIRECT)
        return Chain("indirect-in-chain", first)

    def k_indirect_with_next(self, b: BatchBuilder) -> Chain:
        table = b.table(1)
        self.put_scrap(b, 0, 0, 0, table)
        head, other = b.indices(2)
        self.put_scrap(b, other, 0)
        b.put(head, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, other)
        return Chain("indirect-with-next", head)

    def k_indirect_bad_size(self, b: BatchBuilder) -> Chain:
        table = b.table(4)
        head = b.indices(1)[0]
        b.put(head, table, self.rng.choice((0, 8, 17, 40, 63)), VIRTQ_DESC_F_INDIRECT)
        return Chain("indirect-bad-size", head)

    def k_indirect_table_outside(self, b: BatchBuilder) -> Chain:
        head = b.indices(1)[0]
        addr = self.rng.choice((RAM_SIZE, 9 * MIB, R2.gpa + R2.size - 16, U64_MAX - 15))
        b.put(head, addr, 64, VIRTQ_DESC_F_INDIRECT)
        return Chain("indirect-table-outside", head)

    def k_indirect_table_spans_regions(self, b: BatchBuilder) -> Chain:
        """A table across the R0/R1 boundary: contiguous guest memory, but two regions."""
        head = b.indices(1)[0]
        b.put(head, R1.gpa - 32, 64, VIRTQ_DESC_F_INDIRECT)
        return Chain("indirect-table-spans-regions", head)

    def k_readable_after_writable(self, b: BatchBuilder) -> Chain:
        frame = self._probe_frame()
        segs = [(b.buffer(64), 64, VIRTQ_DESC_F_WRITE),
                (b.buffer(len(frame), frame), len(frame), 0)]
        return Chain("readable-after-writable", b.link(segs, self.rng.random() < 0.5))


# --- running chains -------------------------------------------------------------------------


class FrontEndFuzzer:
    """What both front ends share: the server's socket, the seeded generator, the totals,
    and the check that a finished connection left nothing behind."""

    def __init__(self, path: str, rng: random.Random, stats: VhostFuzzStats,
                 server_log: ServerLog) -> None:
        self.path = path
        self.rng = rng
        self.stats = stats
        self.log = server_log
        self.baseline: Baseline | None = None  # set by fuzz_rig once every guest exists

    async def settled(self, where: str) -> None:
        """The server released all the last connection held, and logged no exception."""
        assert self.baseline is not None
        await self.baseline.restored(where)
        self.log.check(where)


class ChainFuzzer(FrontEndFuzzer):
    """One guest (RAM + ring) connected to the server; runs batches and episodes."""

    def __init__(self, path: str, rng: random.Random, stats: VhostFuzzStats,
                 server_log: ServerLog) -> None:
        super().__init__(path, rng, stats, server_log)
        self.ram = GuestRam(RAM_SIZE, LAYOUT)
        self.driver = RecordingDriverQueue(self.ram)
        self.guest = VhostUserGuest(self.ram, self.driver, 2 + len(b"fuzz"), MSIZE)
        self.gen = ChainGenerator(rng)

    def close(self) -> None:
        self.guest.close()

    @property
    def frontend(self) -> VhostUserFrontend:
        assert self.guest.frontend is not None
        return self.guest.frontend

    async def connect(self, fresh: bool = False) -> None:
        if fresh:
            self.driver.reset_rings()
        await asyncio.wait_for(self.guest.connect(self.path, base=self.driver.avail_idx),
                               WAIT_TIMEOUT)
        self.stats.connections += 1
        # Fids 0 and 1 for the probes.
        await self.run_batch([p.Tversion(MSIZE, p.VERSION_9P2000L)])
        await self.run_batch([p.Tattach(0, p.NOFID, "root", "", 0)])

    async def disconnect(self) -> None:
        self.guest.disconnect()
        await self.settled("after a chain-fuzz connection")

    async def good_session(self) -> None:
        """Connect as QEMU does, have plain requests answered, hang up (after bursts of
        hostile control messages: the server still serves a well-behaved front end)."""
        await self.connect()
        await self._probes_answered()
        await self.disconnect()

    # --- one batch --------------------------------------------------------------------------

    def build(self, plain: list[Any] | None = None, kinds: list[str] | None = None) -> list[Chain]:
        """A batch: *plain* requests, chains of the given *kinds*, or a random mix."""
        b = BatchBuilder(self.ram, self.rng)
        chains: list[Chain] = []
        for msg in plain or ():
            frame = p.encode(msg, p.NOTAG if isinstance(msg, p.Tversion) else 0xEFFF)
            chains.append(self.gen.request_chain(b, frame, "probe", probe=True))
        if plain is None and kinds is None:
            kinds = [self.gen.pick() for _ in range(self.rng.randrange(BATCH_CHAINS // 2,
                                                                      BATCH_CHAINS))]
        for kind in kinds or ():
            try:
                chains.append(self.gen.build(b, kind))
            except Full:
                continue  # that kind does not fit what is left of this batch
        table = self.ram.read(RINGS_AT[0], 16 * RING_NUM)

        def read(gpa: int, n: int) -> bytes:
            at = gpa - RINGS_AT[0]
            return table[at:at + n] if 0 <= at and at + n <= len(table) else self.ram.read(gpa, n)

        for chain in chains:
            chain.verdict = judge(read, chain.head)
        self._settle_overlaps(chains)
        return chains

    @staticmethod
    def _settle_overlaps(chains: list[Chain]) -> None:
        """Leave out chains whose replies could land on rings or tables (that would change
        what the server reads later in the batch), and mark the ones sharing buffers."""
        for chain in chains:
            v = chain.verdict
            if v.broken is None and any(overlaps(w, _span(PROTECTED)) for w in v.writable):
                chain.publish = 0
        structure = [s for c in chains if c.publish for s in c.verdict.structure]
        for chain in chains:
            v = chain.verdict
            if chain.publish and v.broken is None and any(overlaps(w, s) for w in v.writable
                                                          for s in structure):
                chain.publish = 0
        live = [c for c in chains if c.publish and c.verdict.broken is None]
        for chain in live:
            mine = chain.verdict.readable + chain.verdict.writable
            chain.clean = chain.publish == 1 and not any(
                overlaps(m, w) for other in live if other is not chain
                for w in other.verdict.writable for m in mine)

    def _snapshot(self) -> tuple[bytes, bytes]:
        return self.ram.read(*_span(DATA_ZONE)), self.ram.read(*_span(PROTECTED))

    async def run_batch(self, plain: list[Any] | None = None,
                        kinds: list[str] | None = None) -> list[Chain]:
        """Build, publish, kick, wait for every expected used element, check everything."""
        d = self.driver
        chains = self.build(plain, kinds)
        d.returned.clear()
        d.used_log.clear()  # (the driver's own record; ours is returned)
        d.read_err()
        for chain in chains:
            for _ in range(chain.publish):
                d.publish(chain.head)
        before = self._snapshot()
        d.kick(force=True)
        expect_used = Counter({c.head: c.publish for c in chains
                               if c.publish and c.verdict.broken is None})
        expect_broken = sum(c.publish for c in chains if c.verdict.broken is not None)
        await self._wait(lambda: (d.avail_event == d.avail_idx
                                  and len(d.returned) >= sum(expect_used.values())),
                         chains, "the batch to be consumed and answered")
        for _ in range(3):
            await asyncio.sleep(0)
        d.collect_used()
        self.log.check("chain batch")
        self._check(chains, expect_used, expect_broken, before)
        self.stats.batches += 1
        return chains

    async def _wait(self, done: Callable[[], bool], chains: list[Chain], what: str) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not done():
            if time.monotonic() > deadline:
                raise VhostFuzzFailure(
                    f"hang: no {what} after {WAIT_TIMEOUT} s; avail {self.driver.avail_idx}, "
                    f"avail_event {self.driver.avail_event}, used {self.driver.used_idx}, "
                    f"returned {self.driver.returned}; chains "
                    + ", ".join(f"{c.kind}@{c.head}:{c.verdict.broken}" for c in chains))
            await asyncio.sleep(0.0005)

    def _check(self, chains: list[Chain], expect_used: Counter, expect_broken: int,
               before: tuple[bytes, bytes]) -> None:
        d = self.driver
        got = Counter(h for h, _ in d.returned)
        where = ", ".join(f"{c.kind}@{c.head}:{c.verdict.broken or 'ok'}x{c.publish}"
                          for c in chains)
        if got != expect_used:
            raise VhostFuzzFailure(f"used heads {dict(got)}, the oracle expects "
                                   f"{dict(expect_used)}; chains {where}")
        signalled = d.read_err()
        if signalled < expect_broken:
            raise VhostFuzzFailure(f"{expect_broken} broken chains but {signalled} error "
                                   f"signals; chains {where}")
        lengths: dict[int, list[int]] = {}
        for head, length in d.returned:
            lengths.setdefault(head, []).append(length)
        for chain in chains:
            if not chain.publish:
                continue
            self.stats.kinds[chain.kind] += 1
            self.stats.chains += 1
            if chain.verdict.broken is not None:
                self.stats.outcomes[chain.kind, "broken"] += chain.publish
                self.stats.errors[f"broken:{chain.verdict.broken}"] += chain.publish
                continue
            for length in lengths[chain.head]:
                self._check_returned(chain, length)
        self._check_memory(chains, before)

    def _check_returned(self, chain: Chain, length: int) -> None:
        v = chain.verdict
        if length > v.capacity:
            raise VhostFuzzFailure(f"{chain.kind} head {chain.head}: used.len {length} > "
                                   f"{v.capacity} writable bytes")
        if length and sum(n for _, n in v.readable) > MSIZE:
            raise VhostFuzzFailure(f"{chain.kind} head {chain.head}: a request longer than the "
                                   f"msize was answered ({length} bytes)")
        if length == 0:
            self.stats.outcomes[chain.kind, "empty"] += 1
            if chain.probe and chain.clean:
                raise VhostFuzzFailure(f"probe {chain.request!r} on head {chain.head} was "
                                       "returned unanswered")
            return
        self.stats.outcomes[chain.kind, "reply"] += 1
        reply = b"".join(self.ram.read(a, n) for a, n in v.writable)[:length]
        if chain.clean and chain.request is not None:
            request = b"".join(self.ram.read(a, n) for a, n in v.readable)
            problem = reply_problem(request, reply)
            if problem:
                raise VhostFuzzFailure(f"{chain.kind} head {chain.head} request "
                                       f"{request[:64].hex()}: {problem}")
            _, msg = decode_reply(reply)
            self.stats.replies[type(msg).__name__] += 1
            ecode = error_errno(msg)
            if ecode is not None:
                self.stats.errors[errno.errorcode.get(ecode, str(ecode))] += 1

    def _check_memory(self, chains: list[Chain], before: tuple[bytes, bytes]) -> None:
        """Only the returned chains' writable buffers and the used ring may have changed."""
        allowed = [w for c in chains if c.publish and c.verdict.broken is None
                   for w in c.verdict.writable]
        used = (self.driver.used_gpa, ring_sizes(RING_NUM, True)[2])
        used_event = (self.driver.avail_gpa + 4 + 2 * RING_NUM, 2)  # the driver's own writes
        for zone, old in zip((DATA_ZONE, PROTECTED), before):
            start, size = _span(zone)
            now = bytearray(self.ram.read(start, size))
            for a, n in allowed + [used, used_event]:
                lo, hi = max(a, start), min(a + n, start + size)
                if lo < hi:
                    now[lo - start:hi - start] = old[lo - start:hi - start]
            if now != old:
                at = next(i for i in range(size) if now[i] != old[i])
                raise VhostFuzzFailure(f"guest memory at {start + at:#x} changed outside every "
                                       "returned chain's writable buffers and the used ring")

    # --- ring episodes ------------------------------------------------------------------------

    async def episode(self, kind: str) -> None:
        self.stats.episodes[kind] += 1
        await getattr(self, "e_" + kind.replace("-", "_"))()

    async def _restart_ring(self, desc: int, avail: int, used: int) -> list[int | None]:
        """Stop the ring (GET_VRING_BASE) and start it again on these addresses."""
        fe, d = self.frontend, self.driver
        base = await asyncio.wait_for(fe.qemu_stop(0), WAIT_TIMEOUT)
        return [await fe.set_vring_num(0, RING_NUM, ACKED),
                await fe.set_vring_base(0, base, ACKED),
                await fe.set_vring_addr(0, desc, used, avail, flags=ACKED),
                await fe.set_vring_kick(0, d.kick_fd), await fe.set_vring_call(0, d.call_fd),
                await fe.set_vring_enable(0, True)]

    async def _probes_answered(self) -> None:
        """The ring works again: plain requests are answered (run_batch checks it)."""
        await self.run_batch([p.Tgetattr(0, p.GETATTR_BASIC), p.Tstatfs(0)])

    async def e_avail_jump(self) -> None:
        """avail.idx moves by more than the ring: the queue stops, nothing is returned."""
        d = self.driver
        jump = self.rng.choice((RING_NUM + 1, RING_NUM * 2, 0x8000, 0xFFFF))
        d._set_u16(d.avail_gpa + 2, d.avail_idx + jump)
        d.returned.clear()
        d.read_err()
        d.kick(force=True)
        await self._wait(lambda: d.read_err() > 0, [], "error signal for the avail jump")
        await asyncio.sleep(0.005)
        d.collect_used()
        if d.returned:
            raise VhostFuzzFailure(f"avail.idx jumped by {jump} yet chains came back: "
                                   f"{d.returned}")
        d._set_u16(d.avail_gpa + 2, d.avail_idx)
        base = await asyncio.wait_for(self.frontend.qemu_stop(0), WAIT_TIMEOUT)
        if base != d.avail_idx:
            raise VhostFuzzFailure(f"GET_VRING_BASE says {base} after the jump, not "
                                   f"{d.avail_idx}")
        await self.disconnect()
        await self.connect()
        await self._probes_answered()

    async def e_used_outside_memory(self) -> None:
        """Used rings outside guest RAM, crossing a region's end or misaligned: refused,
        the ring does not start; then the right addresses bring it back."""
        fe, d = self.frontend, self.driver
        bad = self.rng.choice([0x1000, R0.uva + R0.size - 64, R2.uva + R2.size - 8,
                               d.used_uva + 2, U64_MAX - 3])
        acks = await self._restart_ring(d.desc_uva, d.avail_uva, bad)
        if acks[2] != 1:  # (a refused SET_VRING_ADDR leaves the previous addresses in effect)
            raise VhostFuzzFailure(f"used ring at {bad:#x} accepted: acks {acks}")
        await fe.set_vring_addr(0, d.desc_uva, d.used_uva, d.avail_uva)
        if await fe.set_vring_kick(0, d.kick_fd) != 0:
            raise VhostFuzzFailure("the ring did not start again on good addresses")
        await self._probes_answered()

    async def e_used_in_read_only_region(self) -> None:
        """A region the front end can only give read-only (sealed or O_RDONLY memfd) is
        refused, and a used ring there is outside memory."""
        fe, d = self.frontend, self.driver
        fd, ro = read_only_memfd(self.rng.random() < 0.5)
        region = MemoryRegion(gpa=32 * MIB, size=64 * 1024, uva=0x7C0000000000, mmap_offset=0)
        try:
            ack = await fe.command(Request.ADD_MEM_REG, bytes(8) + region.pack(), [ro], ACKED)
        finally:
            os.close(fd)
            if ro != fd:
                os.close(ro)
        if ack != 1:
            raise VhostFuzzFailure("a read-only region was accepted")
        acks = await self._restart_ring(d.desc_uva, d.avail_uva, region.uva)
        if acks[2] != 1:
            raise VhostFuzzFailure(f"used ring in a read-only region accepted: {acks}")
        await fe.set_vring_addr(0, d.desc_uva, d.used_uva, d.avail_uva)
        await fe.set_vring_kick(0, d.kick_fd)
        await self._probes_answered()

    async def _used_over(self, target_uva: int) -> None:
        """The used ring on top of a driver-written ring: the device scribbles on it.
        Nothing may escape and the device must still stop on request; then start over."""
        d = self.driver
        self.ram.fill(d.desc_gpa, 16 * RING_NUM)  # every descriptor empty: no stray writes
        await self._restart_ring(d.desc_uva, d.avail_uva, target_uva)
        b = BatchBuilder(self.ram, self.rng)
        for _ in range(8):
            chain = self.gen.k_probe(b)
            d.publish(chain.head)
        d.kick(force=True)
        await asyncio.sleep(0.02)
        await asyncio.wait_for(self.frontend.qemu_stop(0), WAIT_TIMEOUT)
        self.log.check("used ring over a driver ring")
        await self.disconnect()
        await self.connect(fresh=True)
        await self._probes_answered()

    async def e_used_over_avail(self) -> None:
        await self._used_over(self.driver.avail_uva)

    async def e_used_over_desc(self) -> None:
        await self._used_over(self.driver.desc_uva)

    async def e_disconnect_in_flight(self) -> None:
        """Chains on the ring and the front end gone before they are answered."""
        chains = self.build()
        for chain in chains:
            for _ in range(chain.publish):
                self.driver.publish(chain.head)
        self.driver.kick(force=True)
        await asyncio.sleep(self.rng.choice((0, 0, 0.001)))
        await self.disconnect()
        await self.connect(fresh=True)
        await self._probes_answered()


def _span(zone: tuple[int, int]) -> tuple[int, int]:
    return zone[0], zone[1] - zone[0]


def read_only_memfd(sealed: bool) -> tuple[int, int]:
    """A 64 KiB memfd and an fd of it that cannot be mapped writable: the memfd itself
    sealed against writes, or an O_RDONLY reopening.  Returns (memfd, that fd)."""
    fd = os.memfd_create("ninep-fuzz-ro", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 64 * 1024)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK)
        return fd, fd
    return fd, os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


# --- control messages ------------------------------------------------------------------------

#: Requests that are answered with a payload of their own, whatever the flags.
OWN_REPLY = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                       Request.GET_VRING_BASE, Request.GET_QUEUE_NUM, Request.GET_CONFIG,
                       Request.GET_MAX_MEM_SLOTS})
#: What the device implements; everything else (and unknown codes) must be refused.
SUPPORTED = [Request.GET_FEATURES, Request.SET_FEATURES, Request.GET_PROTOCOL_FEATURES,
             Request.SET_PROTOCOL_FEATURES, Request.SET_OWNER, Request.RESET_OWNER,
             Request.SET_MEM_TABLE, Request.GET_MAX_MEM_SLOTS, Request.ADD_MEM_REG,
             Request.REM_MEM_REG, Request.GET_QUEUE_NUM, Request.SET_VRING_NUM,
             Request.SET_VRING_ADDR, Request.SET_VRING_BASE, Request.GET_VRING_BASE,
             Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR,
             Request.SET_VRING_ENABLE, Request.GET_CONFIG, Request.SET_CONFIG]
OTHER_CODES = [int(r) for r in Request if r not in SUPPORTED] + [0, 41, 99, 1000, 0xFFFFFFFF]
FD_KINDS = ("eventfd", "eventfd-blocking", "pipe-r", "pipe-w", "memfd", "memfd-sealed",
            "memfd-ro", "devnull", "socket", "file", "ram")
CONTROL_RING = 64
NUMS = (0, 1, 3, 100, CONTROL_RING, CONTROL_RING, 256, 32768, 32769, 65536, 0xFFFFFFFF)


@dataclass(slots=True)
class ControlMessage:
    request: int
    flags: int
    payload: bytes
    fds: list[str]
    size: int | None = None  # a header size that lies (then the connection is closed)
    runt: int | None = None  # send only this many header bytes, then close

    @property
    def expects_reply(self) -> bool:
        return self.request in OWN_REPLY or bool(self.flags & FLAG_NEED_REPLY)

    @property
    def torn(self) -> bool:
        """The front end stops in the middle of this message and hangs up."""
        return self.runt is not None or (self.size is not None and self.size <= MAX_PAYLOAD)

    @property
    def must_drop(self) -> bool:
        """A message no connection survives: larger than any, or with too many fds."""
        return (self.size or 0) > MAX_PAYLOAD or len(self.fds) > MAX_FDS

    def describe(self) -> str:
        return (f"{request_name(self.request)} flags={self.flags:#x} payload="
                f"{self.payload[:48].hex()} fds={self.fds}")


def sync_probe() -> ControlMessage:
    return ControlMessage(Request.GET_FEATURES, PLAIN, b"", [])


class ControlFuzzer(FrontEndFuzzer):
    """Bursts of generated control messages, each on a fresh connection."""

    def __init__(self, path: str, rng: random.Random, stats: VhostFuzzStats,
                 server_log: ServerLog) -> None:
        super().__init__(path, rng, stats, server_log)
        self.ram = GuestRam(2 * MIB)
        self.ring = DriverQueue(self.ram, CONTROL_RING, event_idx=True)

    def close(self) -> None:
        self.ring.close()
        self.ram.close()

    # --- generation ---------------------------------------------------------------------------

    def _region(self) -> MemoryRegion:
        """One of the RAM's regions, or a bad one: empty, too big, wrapping, overlapping..."""
        rng = self.rng
        r = rng.choice(self.ram.regions)
        return rng.choice([
            r, r, r, MemoryRegion(r.gpa, 0, r.uva, 0), MemoryRegion(r.gpa, r.size * 4, r.uva, 0),
            MemoryRegion(U64_MAX - 4095, 8192, r.uva, 0),
            MemoryRegion(r.gpa, r.size, U64_MAX - 100, 0),
            MemoryRegion(r.gpa + 4096, r.size, r.uva + 4096, 0),  # overlaps r
            MemoryRegion(r.gpa, 4096, r.uva, self.ram.size + 4096),
            MemoryRegion(r.gpa, 4096, r.uva, 123), MemoryRegion(r.gpa, 1 << 40, r.uva, 0),
            MemoryRegion(rng.getrandbits(64), rng.getrandbits(32), rng.getrandbits(64),
                         rng.getrandbits(20)),
        ])

    def _ring_addr(self, good: int) -> int:
        last = self.ram.regions[-1]
        return self.rng.choice((good, good, good, 0, 0x1000, good + 2, good + 8, U64_MAX - 3,
                                last.uva + last.size - 16, self.rng.getrandbits(64)))

    def _payload(self, request: int) -> tuple[bytes, list[str]]:
        """A payload of the request's shape, often with odd values, and the fds it carries."""
        rng, d = self.rng, self.ring
        queue = rng.choice((0, 0, 0, 0, 1, 255, 0xFFFFFFFF))
        if request in (Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR):
            value = min(queue, 0x1FF) | (VRING_NOFD_MASK if rng.random() < 0.2 else 0)
            return U64.pack(value), [] if value & VRING_NOFD_MASK else ["eventfd"]
        if request in (Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.SET_VRING_ENABLE,
                       Request.GET_VRING_BASE):
            value = {Request.SET_VRING_ENABLE: (0, 1, 1, 2), Request.SET_VRING_BASE: (0, 5, 65535,
                     65536)}.get(request, NUMS)
            return VRING_STATE.pack(queue, rng.choice(value)), []
        if request == Request.SET_VRING_ADDR:
            return VRING_ADDR.pack(queue, rng.choice((0, 1)), self._ring_addr(d.desc_uva),
                                   self._ring_addr(d.used_uva), self._ring_addr(d.avail_uva),
                                   rng.getrandbits(64)), []
        if request == Request.SET_MEM_TABLE:
            n = rng.choice((0, 1, 2, 2, 2, 3, 8, 9, 0xFFFFFFFF))
            regions = [self._region() for _ in range(min(n, 9))]
            return (MEMORY_HEADER.pack(n, 0) + b"".join(r.pack() for r in regions),
                    ["ram"] * min(n, 9))
        if request in (Request.ADD_MEM_REG, Request.REM_MEM_REG):
            fds = ["ram"] if request == Request.ADD_MEM_REG else []
            return bytes(8) + self._region().pack(), fds
        if request in (Request.GET_CONFIG, Request.SET_CONFIG):
            offset, size = rng.choice((0, 0, 2, 255, 256, 0xFFFFFFFF)), rng.choice((0, 6, 256, 257))
            return CONFIG_HEADER.pack(offset, size, 0) + bytes(min(size, 300)), []
        if request == Request.SET_FEATURES:
            return U64.pack(rng.choice((DEVICE_FEATURES, DEVICE_FEATURES, 0, 1 << 63))), []
        if request == Request.SET_PROTOCOL_FEATURES:
            return U64.pack(rng.choice((0x8209, 0x209, 0, 1 << 1, U64_MAX))), []
        if request in (Request.SET_LOG_BASE, Request.SET_STATUS):
            return U64.pack(rng.getrandbits(64)), []
        return b"", []

    def generate(self) -> ControlMessage:
        rng = self.rng
        request = rng.choice(SUPPORTED) if rng.random() < 0.75 else rng.choice(OTHER_CODES)
        payload, fds = self._payload(request)
        flags = FLAG_VERSION | (FLAG_NEED_REPLY if rng.random() < 0.6 else 0)
        roll = rng.random()
        if roll < 0.05:
            flags = rng.choice((0, 2, 3, FLAG_VERSION | FLAG_REPLY, rng.getrandbits(32)))
        elif roll < 0.2:  # the wrong size: cut, grown or replaced
            payload = rng.choice((payload[:rng.randrange(len(payload) + 1)],
                                  payload + rng.randbytes(rng.randrange(1, 16)),
                                  rng.randbytes(rng.choice((0, 1, 4, 8, 40, 300, 4096)))))
        roll = rng.random()
        if roll < 0.12:  # fds where none belong, missing, or too many
            fds = [rng.choice(FD_KINDS) for _ in range(rng.choice((0, 1, 1, 2, 3, 8, 9, 12)))]
        elif roll < 0.3 and fds:  # the right number, of the wrong kind
            fds = [rng.choice(FD_KINDS) for _ in fds]
        msg = ControlMessage(request, flags, payload, fds)
        roll = rng.random()
        if roll < 0.01:
            msg.runt = rng.randrange(1, HEADER.size)
        elif roll < 0.02:
            msg.size = len(payload) + rng.randrange(1, 64)
        elif roll < 0.025:
            msg.size = rng.choice((MAX_PAYLOAD + 1, 1 << 20, 0xFFFFFFFF))
        return msg

    # --- sending --------------------------------------------------------------------------------

    def _make_fds(self, kinds: list[str]) -> tuple[list[int], list[int]]:
        """The fds to send, and the ones to close once they are sent."""
        send: list[int] = []
        close: list[int] = []
        for kind in kinds:
            if kind == "ram":
                send.append(self.ram.fd)
                continue
            if kind == "eventfd":
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            elif kind == "eventfd-blocking":
                fd = os.eventfd(0, os.EFD_CLOEXEC)
                os.eventfd_write(fd, 0xFFFFFFFFFFFFFFFE)  # full: one more write blocks
            elif kind in ("pipe-r", "pipe-w"):
                r, w = os.pipe2(os.O_CLOEXEC)
                fd, other = (r, w) if kind == "pipe-r" else (w, r)
                os.close(other)  # a read end at EOF, a write end nobody reads
            elif kind == "memfd":
                fd = os.memfd_create("ninep-fuzz-fd", os.MFD_CLOEXEC)
                os.ftruncate(fd, 64 * 1024)
            elif kind in ("memfd-sealed", "memfd-ro"):
                memfd, fd = read_only_memfd(sealed=kind == "memfd-sealed")
                if memfd != fd:
                    close.append(memfd)
            elif kind == "devnull":
                fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            elif kind == "socket":
                a, b = socket.socketpair()
                fd = a.detach()
                b.close()
            else:  # an unnamed regular file
                fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            send.append(fd)
            close.append(fd)
        return send, close

    async def send(self, fe: VhostUserFrontend, msg: ControlMessage) -> None:
        send, close = self._make_fds(msg.fds)
        try:
            if msg.runt is not None:
                head = HEADER.pack(msg.request, msg.flags, len(msg.payload))[:msg.runt]
                await fe._loop.sock_sendall(fe.sock, head)
            else:
                await fe.send(msg.request, msg.payload, send, msg.flags, msg.size)
        finally:
            for fd in close:
                os.close(fd)

    async def reply(self, fe: VhostUserFrontend, msg: ControlMessage) -> bytes | None:
        """The reply *msg* asks for; None if the server hung up instead."""
        try:
            head = await asyncio.wait_for(fe._recv_exact(HEADER.size), WAIT_TIMEOUT)
        except (ConnectionError, OSError):
            return None
        except asyncio.TimeoutError:
            raise VhostFuzzFailure(f"hang: no reply to {msg.describe()} in {WAIT_TIMEOUT} s") \
                from None
        request, flags, size = HEADER.unpack(head)
        if request != msg.request or flags != FLAG_VERSION | FLAG_REPLY or size > MAX_PAYLOAD:
            raise VhostFuzzFailure(f"reply header {head.hex()} to {msg.describe()}")
        try:
            return await asyncio.wait_for(fe._recv_exact(size), WAIT_TIMEOUT) if size else b""
        except (ConnectionError, OSError):
            raise VhostFuzzFailure(f"reply to {msg.describe()} cut short") from None

    def _count_reply(self, msg: ControlMessage, payload: bytes) -> None:
        name = request_name(msg.request)
        if msg.request in OWN_REPLY:
            self.stats.control["reply"] += 1
            if not payload:  # GET_CONFIG's failure
                self.stats.refused[name] += 1
            return
        if len(payload) != 8 or U64.unpack(payload)[0] not in (0, 1):
            raise VhostFuzzFailure(f"REPLY_ACK of {payload.hex()} to {msg.describe()}")
        if U64.unpack(payload)[0] == 0:
            self.stats.control["ack-ok"] += 1
        else:
            self.stats.control["ack-fail"] += 1
            self.stats.refused[name] += 1

    async def _outcome(self, fe: VhostUserFrontend, msg: ControlMessage) -> bool:
        """Check what the server did with *msg*; False once the connection is over."""
        if msg.torn:
            self.stats.control["torn-then-closed"] += 1
            return False
        if msg.must_drop:
            probe = sync_probe()
            await self.send(fe, probe)
            if await self.reply(fe, probe) is not None:
                raise VhostFuzzFailure(f"the connection survived {msg.describe()} "
                                       f"(size {msg.size})")
            self.stats.control["dropped-as-required"] += 1
            return False
        if not msg.expects_reply:
            self.stats.control["no-reply-asked"] += 1
            return True
        payload = await self.reply(fe, msg)
        if payload is None:
            self.stats.control["dropped"] += 1
            self.stats.refused[f"{request_name(msg.request)} (dropped)"] += 1
            return False
        self._count_reply(msg, payload)
        return True

    async def _hang_up(self, fe: VhostUserFrontend) -> None:
        """Close our side and wait for the server to close its own: then it has read all we
        sent, let the connection go, and sent nothing that was not asked for."""
        try:
            fe.sock.shutdown(socket.SHUT_WR)
            while data := await asyncio.wait_for(fe._loop.sock_recv(fe.sock, 4096), WAIT_TIMEOUT):
                raise VhostFuzzFailure(f"{len(data)} bytes nobody asked for: {data[:32].hex()}")
        except asyncio.TimeoutError:
            raise VhostFuzzFailure("hang: the server kept the connection after our EOF") from None
        except OSError:
            pass  # it had hung up already
        finally:
            fe.close()

    async def _prefix(self, fe: VhostUserFrontend, memory: bool) -> None:
        """Configure the device: features, owner, and with *memory* the memory table and
        the ring's size and addresses.  Bursts without it send messages before SET_OWNER."""
        d = self.ring
        await fe.get_features()
        await fe.set_features(DEVICE_FEATURES)
        await fe.set_owner()
        if memory:
            await fe.set_mem_table(self.ram)
            await fe.set_vring_num(0, d.num)
            await fe.set_vring_addr(0, d.desc_uva, d.used_uva, d.avail_uva)

    async def burst(self, messages: int, script: list[ControlMessage] | None = None,
                    prefix: bool | None = None) -> int:
        """One connection, up to *messages* generated messages (or the *script*), after the
        set-up prefix (True: with memory and a ring; None: at random); returns how many
        were sent."""
        fe = await VhostUserFrontend.connect(self.path)
        sent = 0
        if script is not None:
            messages = len(script)
        rng = self.rng
        try:
            if prefix or prefix is None and rng.random() < 0.7:
                await self._prefix(fe, memory=prefix or rng.random() < 0.7)
            while sent < messages:
                msg = script[sent] if script is not None else self.generate()
                await self.send(fe, msg)
                sent += 1
                if not await self._outcome(fe, msg):
                    break
            else:  # still in step: the next reply is the sync probe's
                probe = sync_probe()
                await self.send(fe, probe)
                payload = await self.reply(fe, probe)
                if payload is None:
                    self.stats.control["dropped"] += 1
                elif payload != U64.pack(DEVICE_FEATURES):
                    raise VhostFuzzFailure(f"the sync probe got {payload.hex()}")
        except BaseException:
            fe.close()
            raise
        await self._hang_up(fe)
        self.stats.bursts += 1
        self.stats.messages += sent
        await self.settled("after a control burst")
        return sent


# --- the run ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def vhost_server(base: Path) -> AsyncIterator[str]:
    """serve_vhost_user on a LocalBackend over a fresh export, in this loop; yields the
    socket path.  The canary next to the export must be intact afterwards."""
    base.mkdir(parents=True, exist_ok=True)
    canary = Canary.plant(base)
    export = build_export(base)
    canary.arm()
    backend = LocalBackend(str(export), threads=4)
    sockdir = tempfile.mkdtemp(prefix="ninep-vf-")
    path = os.path.join(sockdir, "vu.sock")
    task = asyncio.ensure_future(serve_vhost_user(
        lambda: backend, socket_path=path, listen_fd=None, tag="fuzz",
        session_config=SessionConfig(msize=MSIZE, max_fids=64, max_inflight=64)))
    try:
        while not os.path.exists(path):  # listening: its fd counts in the baseline
            if task.done():
                task.result()
            await asyncio.sleep(0.001)
        yield path
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.close()
        os.rmdir(sockdir)
        canary.assert_intact()


@dataclass
class Rig:
    """The server, a chain front end and a control front end, sharing stats and checks."""

    chains: ChainFuzzer
    control: ControlFuzzer
    stats: VhostFuzzStats
    baseline: Baseline
    server_log: ServerLog

    async def finish(self) -> None:
        """Everything the server held is released and it logged no exception."""
        await self.baseline.restored("at the end")
        self.server_log.check("at the end")


@contextlib.asynccontextmanager
async def fuzz_rig(base: Path, seed: int) -> AsyncIterator[Rig]:
    """A :class:`Rig` on a fresh server under *base* (without CAP_MKNOD: fuzzed Tmknod)."""
    rng = random.Random(seed)
    stats = VhostFuzzStats(fds_before=fd_count())
    with without_mknod_capability():
        async with vhost_server(base) as path:
            server_log = ServerLog(stats)
            with server_log.installed():
                chains = ChainFuzzer(path, rng, stats, server_log)
                control = ControlFuzzer(path, rng, stats, server_log)
                try:
                    baseline = Baseline.now()
                    chains.baseline = control.baseline = baseline
                    yield Rig(chains, control, stats, baseline, server_log)
                except Exception as exc:
                    raise VhostFuzzFailure(f"{exc!r} (seed {seed})\nthe server's last log "
                                           "records:\n" + "\n".join(server_log.recent)) from exc
                finally:
                    chains.close()
                    control.close()
    stats.fds_after = fd_count()
    stats.rss_after_kib = rss_kib()


async def fuzz_vhost(base: Path, cases: int, seed: int,
                     progress: Callable[[VhostFuzzStats], None] | None = None, *,
                     chain_share: float = 0.6, episode_every: int = 25) -> VhostFuzzStats:
    """Run about *cases* cases (chains + control messages, *chain_share* of them chains),
    alternating phases of up to 2000 chains on one connection and 20 control bursts
    (each on its own connection) followed by a good session.

    Raises :class:`VhostFuzzFailure` on the first failed check.  fds and RSS are
    measured around the whole run (RSS after the first round, once caches are warm).
    """
    chain_quota = int(cases * chain_share)
    start = time.monotonic()
    async with fuzz_rig(base, seed) as rig:
        stats, rng = rig.stats, rig.chains.rng
        while stats.chains + stats.messages < cases:
            if stats.chains < chain_quota:
                await chain_phase(rig.chains, min(chain_quota - stats.chains, 2000),
                                  episode_every)
            if stats.messages < cases - chain_quota:
                for _ in range(20):
                    await rig.control.burst(rng.choice((1, 4, 16, 32, 64)))
                await rig.chains.good_session()
            stats.cases = stats.chains + stats.messages
            if not stats.rss_before_kib:
                stats.rss_before_kib = rss_kib()
            if progress:
                stats.seconds = time.monotonic() - start
                progress(stats)
        await rig.finish()
    stats.cases = stats.chains + stats.messages
    stats.seconds = time.monotonic() - start
    return stats


async def chain_phase(chains: ChainFuzzer, quota: int, episode_every: int = 25) -> None:
    """One connection: batches until *quota* chains went through, episodes in between."""
    rng = chains.rng
    await chains.connect(fresh=rng.random() < 0.2)
    target = chains.stats.chains + quota
    batches = 0
    while chains.stats.chains < target:
        await chains.run_batch()
        batches += 1
        if batches % episode_every == 0:
            await chains.episode(rng.choice(EPISODES))
    await chains.disconnect()


__all__ = ["fuzz_vhost", "fuzz_rig", "chain_phase", "Rig", "VhostFuzzStats",
           "VhostFuzzFailure", "judge", "Verdict", "ChainGenerator", "ChainFuzzer",
           "ControlFuzzer", "ControlMessage", "MALFORMED_KINDS", "ODD_VALID_KINDS", "EPISODES",
           "vhost_server"]
