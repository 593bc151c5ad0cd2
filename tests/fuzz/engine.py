"""9P frame fuzzing straight into :class:`Session`, with an in-memory reply sink.

A *case* is a short conversation: a prelude that sets up fids (attach, walks,
an open file, an open directory), then generated and mutated frames, sent one
at a time or in a burst.  After every case the session is closed and the
checks run:

* no exception escaped ``submit`` or any task, and nothing was logged as an
  internal error (the dispatcher's catch-all turns bugs into EIO silently);
* every request got exactly one well-formed reply (or none, if flushed), with
  its tag, of its type or an error reply, no larger than msize;
* no case hangs (each drain has a timeout);
* every fid was released: no live back-end node, the process's fd count back
  to its baseline; and the canary tree next to the export is unchanged.

Frames come from field-aware generators (fids from a small pool, names from
a hostile list, interesting integers) and byte-level mutations, in one
dialect per run (9P2000.L, 9P2000.u or 9P2000: its message table, prelude
and error reply); a fuzzed Tversion may switch the session to another, so
replies are checked in whichever dialect they decode in.  The same
generators feed the Hypothesis strategies in ``test_session_fuzz.py`` and the
seeded loop used by CI and ``scripts/fuzz-long``.

Safety: the fuzz runs as root on a real directory, and a mutated Tmknod can
ask for any block device.  CAP_MKNOD is dropped from the thread that starts
the back end's workers (they inherit it), so only FIFOs and sockets can be
made; opening host devices is covered by ``tests/security``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import shutil
import stat
import struct
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ninep import syscalls
from ninep.backends.local import LocalBackend
from ninep.protocol import dotu as u
from ninep.protocol import ninep as p
from ninep.server.session import Session, SessionConfig

from security.harness import Canary, RecordingSink, fd_count, rss_kib

MSIZE = 8192
DRAIN_TIMEOUT = 10.0
DIALECTS: dict[str, p.MessageSet] = {m.version: m for m in (p.DOTL, u.DOTU, u.PLAIN)}


def t_types(messages: p.MessageSet) -> list[int]:
    """The request types of a dialect."""
    return sorted(t for t in messages.table if t % 2 == 0)


T_TYPES = t_types(p.DOTL)
FID_FIELDS = frozenset({"fid", "newfid", "dfid", "afid", "olddirfid", "newdirfid", "dirfid"})
NAME_FIELDS = frozenset({"name", "oldname", "newname", "symtgt"})
NAMES = ["file", "dir", "sub", "new", "new2", "link", "link_out", "fifo", "sock", "..", ".", "",
         "a/b", "../outside", "/", "/etc", "x\0y", "outside", "n" * 255, "n" * 256, "\udcff\udcfe",
         ".virtfs_metadata", "user.x", "security.capability", "trusted.t", "user.virtfs.uid"]
INTERESTING = [0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFE, 0xFFFFFFFF, 2**63 - 1, 2**63, 2**64 - 1]
#: Topen/Tcreate mode bytes (9P2000/9P2000.u).
OMODES = [u.OREAD, u.OWRITE, u.ORDWR, u.OEXEC, u.ORDWR | u.OTRUNC, u.OREAD | u.ORCLOSE,
          u.OWRITE | u.OAPPEND, 0xFF]
#: Tcreate perm: every kind of file, and nonsense combinations.
PERMS = [0o644, 0o755, u.DMDIR | 0o755, u.DMSYMLINK | 0o777, u.DMLINK, u.DMDEVICE | 0o600,
         u.DMNAMEDPIPE | 0o644, u.DMSOCKET | 0o600, u.DMDIR | u.DMSYMLINK | 0o777,
         u.DMAPPEND | u.DMEXCL | 0o644, u.DMSETUID | u.DMSETGID | u.DMSETVTX | 0o777, 0xFFFFFFFF]
EXTENSIONS = ["", "c 1 3", "b 7 0", "c 1", "x 1 3", "c 99999999999 1", "file", "../outside",
              "/etc/passwd", "0", "2", "4", "7", "9", "4294967295", "-1", "x" * 300, "\0"]
MODES = [0o644, 0o755, 0, 0o7777, stat.S_IFIFO | 0o644, stat.S_IFSOCK | 0o600,
         stat.S_IFREG | 0o644, stat.S_IFCHR | 0o666, stat.S_IFBLK | 0o600, stat.S_IFDIR | 0o755,
         stat.S_IFLNK | 0o777]
DOTL_BITS = [p.DOTL_WRONLY, p.DOTL_RDWR, p.DOTL_NOACCESS, p.DOTL_CREATE, p.DOTL_EXCL,
             p.DOTL_TRUNC, p.DOTL_APPEND, p.DOTL_NONBLOCK, p.DOTL_DIRECTORY, p.DOTL_NOFOLLOW,
             p.DOTL_SYNC, p.DOTL_DIRECT, p.DOTL_NOATIME, p.DOTL_CLOEXEC, p.DOTL_DSYNC]
#: Prelude fids: 0 root, 1 dir, 2 file (open rdwr), 3 dir (open), 4 link, 5 fifo,
#: 6 dir/file (open rdonly), 7 root clone; 8-9 free for new fids.
FID_POOL = 10
PRELUDE_FIDS = 8

log = logging.getLogger("ninep.fuzz")


# --- frame generation --------------------------------------------------------------------

def _widths(cls: type) -> dict[str, int]:
    """Field name -> byte width of each integer field of a message (from its codec)."""
    out = {}
    for sc in cls.SPEC.fmt.defersubcon.subcons:  # type: ignore[attr-defined]
        fmt = getattr(getattr(sc, "subcon", None), "fmtstr", None)
        if sc.name and fmt:
            out[sc.name] = struct.calcsize(fmt)
    return out


WIDTHS = {m.table[t].cls: _widths(m.table[t].cls) for m in DIALECTS.values() for t in t_types(m)}


def gen_int(rng: random.Random, name: str, width: int) -> int:
    """An integer for field *name* of *width* bytes, biased to what matters."""
    mask = (1 << 8 * width) - 1
    roll = rng.random()
    if name in FID_FIELDS:
        if roll < 0.7:
            return rng.randrange(PRELUDE_FIDS)
        if roll < 0.95:
            return rng.randrange(FID_POOL)
        return rng.choice([p.NOFID, rng.getrandbits(32)])
    if name == "mode" and width == 1 and roll < 0.8:
        return rng.choice(OMODES)
    if name == "perm" and roll < 0.8:
        return rng.choice(PERMS)
    if name == "mode" and roll < 0.8:
        return rng.choice(MODES) & mask
    if name == "flags" and roll < 0.7:
        return sum(b for b in DOTL_BITS if rng.random() < 0.2)
    if name == "valid" and roll < 0.8:
        return rng.getrandbits(9)
    if name == "msize" and roll < 0.5:
        return rng.choice([MSIZE, 4096, 4095, 0, 65536, 2**32 - 1])
    if name == "count" and roll < 0.6:
        return rng.choice([0, 1, 100, 4096, MSIZE, MSIZE * 2])
    if name in ("major", "minor") and roll < 0.7:
        return rng.choice([0, 1, 3, 5, 2])
    if roll < 0.6:
        return rng.choice(INTERESTING) & mask
    if roll < 0.8:
        return rng.randrange(16)
    return rng.getrandbits(8 * width)


def gen_name(rng: random.Random) -> str:
    if rng.random() < 0.85:
        return rng.choice(NAMES)
    return "".join(rng.choice("ab./\0") for _ in range(rng.randrange(1, 6)))


#: How often each T-message is picked: session resets rare, I/O and namespace ops common.
_FAVOURED = {p.Tversion.TYPE: 0.1, p.Tattach.TYPE: 0.3, p.Tauth.TYPE: 0.1, p.Twalk.TYPE: 4,
             p.Tread.TYPE: 3, p.Twrite.TYPE: 3, p.Tlopen.TYPE: 2, p.Tlcreate.TYPE: 2,
             p.Treaddir.TYPE: 2, p.Tclunk.TYPE: 1.5, u.Topen.TYPE: 2, u.Tcreate.TYPE: 2,
             u.Twstat.TYPE: 2}
WEIGHTS = {m.version: {t: _FAVOURED.get(t, 1.0) for t in t_types(m)} for m in DIALECTS.values()}


def gen_stat(rng: random.Random, dotu: bool) -> u.Dir | u.DirU:
    """A Twstat stat: mostly "don't touch", with a few fields set."""
    base = u.DONT_TOUCH if dotu else u.DONT_TOUCH_PLAIN
    changes: dict[str, Any] = {}
    for name in rng.sample(base._fields, rng.choice([0, 1, 1, 2, 3])):
        if name in ("name", "uid", "gid", "muid", "extension"):
            changes[name] = gen_name(rng) if name == "name" else rng.choice(["", "0", "100", "x"])
        elif name == "qid":
            changes[name] = p.Qid(0, 0, 0)
        elif name == "mode":
            changes[name] = rng.choice(PERMS)
        else:
            width = {"type": 2, "length": 8}.get(name, 4)
            changes[name] = gen_int(rng, name, width)
    return base._replace(**changes)


def gen_message(rng: random.Random, msgtype: int | None = None,
                messages: p.MessageSet = p.DOTL) -> Any:
    """A well-formed T-message of *messages*' dialect with fuzzed field values."""
    weights = WEIGHTS[messages.version]
    if msgtype is None:
        msgtype = rng.choices(list(weights), list(weights.values()))[0]
    cls = messages.table[msgtype].cls
    widths = WIDTHS[cls]
    values = []
    for name in cls._fields:
        if name in widths:
            values.append(gen_int(rng, name, widths[name]))
        elif name in NAME_FIELDS:
            values.append(gen_name(rng))
        elif name == "extension":
            values.append(rng.choice(EXTENSIONS) if rng.random() < 0.9 else gen_name(rng))
        elif name == "stat":
            values.append(gen_stat(rng, messages is u.DOTU))
        elif name == "wnames":
            values.append([gen_name(rng) for _ in range(rng.choice([0, 1, 1, 2, 3, 16, 17]))])
        elif name == "version":
            values.append(messages.version if rng.random() < 0.5 else
                          rng.choice([p.VERSION_9P2000L, "9P2000", "9P2000.u", "", "9P2000.Lx"]))
        elif name == "data":
            values.append(rng.randbytes(rng.choice([0, 1, 100, 4000, MSIZE])))
        else:  # uname, aname, client_id
            values.append(rng.choice(["", "root", "nobody", "x" * 300]))
    return cls(*values)


def encode_lenient(msg: Any, tag: int) -> bytes:
    """Encode *msg*; a value the codec refuses (e.g. an undecodable name) is replaced."""
    try:
        return p.encode(msg, tag)
    except Exception:  # noqa: BLE001 - construct raises many kinds
        fixed = msg._replace(**{k: "x" for k, v in msg._asdict().items() if isinstance(v, str)})
        if "stat" in msg._fields:
            fixed = fixed._replace(stat=msg.stat._replace(
                **{k: "x" for k, v in msg.stat._asdict().items() if isinstance(v, str)}))
        return p.encode(fixed, tag)


MUTATIONS = ("flip-bit", "set-byte", "truncate", "extend", "u16-length", "type", "size-field",
             "splice", "tag")


def mutate(frame: bytes, kind: str, arg: int, donor: bytes = b"") -> bytes:
    """One deterministic mutation of *frame* driven by *arg* (for Hypothesis too)."""
    buf = bytearray(frame)
    fix_size = arg & 1 == 0 or kind == "size-field"
    n = max(len(buf), 1)
    if kind == "flip-bit" and buf:
        pos = arg % (n * 8)
        buf[pos // 8] ^= 1 << (pos % 8)
    elif kind == "set-byte" and buf:
        buf[arg % n] = (0, 0xFF, 0x7F, 0x80, arg >> 8 & 0xFF)[arg % 5]
    elif kind == "truncate":
        del buf[arg % n:]
    elif kind == "extend":
        buf += bytes((arg * 7 + i) & 0xFF for i in range(arg % 64 + 1))
    elif kind == "u16-length" and len(buf) > 9:
        pos = 7 + arg % (len(buf) - 8)
        buf[pos:pos + 2] = struct.pack("<H", (0, 1, 0xFFFF, 0x8000, 255, 256)[arg % 6])
    elif kind == "type" and len(buf) > 4:
        buf[4] = arg & 0xFF
    elif kind == "size-field" and len(buf) >= 4:
        buf[0:4] = struct.pack("<I", (0, 6, 7, len(buf) - 1, len(buf) + 1, 2**32 - 1)[arg % 6])
        return bytes(buf)
    elif kind == "splice" and donor and len(buf) > 7:
        cut = 7 + arg % (len(buf) - 7)
        buf[cut:] = donor[7 + arg % max(len(donor) - 7, 1):]
    elif kind == "tag" and len(buf) >= 7:
        buf[5:7] = struct.pack("<H", (p.NOTAG, 0, 1, arg & 0xFFFF)[arg % 4])
    if fix_size and len(buf) >= 4:
        buf[0:4] = struct.pack("<I", len(buf))
    return bytes(buf)


def random_frames(rng: random.Random, count: int,
                  messages: p.MessageSet = p.DOTL) -> list[bytes]:
    """*count* frames of *messages*' dialect: valid fuzzed messages, half of them then mutated."""
    frames: list[bytes] = []
    tags = iter(range(1, 0xFFFF))
    for _ in range(count):
        roll = rng.random()
        if roll < 0.03:
            frame = rng.randbytes(rng.randrange(0, 40))
        else:
            tag = next(tags) if rng.random() < 0.9 else rng.choice([p.NOTAG, 1, 2])
            frame = encode_lenient(gen_message(rng, messages=messages), tag)
            if rng.random() < 0.5:
                donor = rng.choice(frames) if frames else b""
                for _ in range(rng.choice([1, 1, 2, 3])):
                    frame = mutate(frame, rng.choice(MUTATIONS), rng.getrandbits(32), donor)
        if rng.random() < 0.05 and frames:  # a flush of something recent
            frame = p.encode(p.Tflush(rng.choice([1, 2, 3, rng.getrandbits(16)])), next(tags))
        frames.append(frame)
    return frames


def prelude(messages: p.MessageSet = p.DOTL) -> list[bytes]:
    """Frames that set up the fid pool (see FID_POOL) in *messages*' dialect."""
    if messages is p.DOTL:
        rdwr, rdonly = p.Tlopen(2, p.DOTL_RDWR), p.Tlopen(3, p.DOTL_RDONLY)
        rdonly2 = p.Tlopen(6, p.DOTL_RDONLY)
    else:
        rdwr, rdonly, rdonly2 = u.Topen(2, u.ORDWR), u.Topen(3, u.OREAD), u.Topen(6, u.OREAD)
    attach = (u.TattachPlain(0, p.NOFID, "root", "") if messages is u.PLAIN else
              p.Tattach(0, p.NOFID, "root", "", 0))
    msgs = [
        p.Tversion(MSIZE, messages.version), attach,
        p.Twalk(0, 1, ["dir"]), p.Twalk(0, 2, ["file"]), rdwr,
        p.Twalk(0, 3, ["dir"]), rdonly, p.Twalk(0, 4, ["link"]),
        p.Twalk(0, 5, ["fifo"]), p.Twalk(0, 6, ["dir", "file"]), rdonly2,
        p.Twalk(0, 7, []),
    ]
    return [p.encode(m, p.NOTAG if isinstance(m, p.Tversion) else 0xFF00 + i)
            for i, m in enumerate(msgs)]


PRELUDE_LENGTH = len(prelude())


# --- the target ---------------------------------------------------------------------------


def decode_reply(reply: bytes) -> tuple[int, Any]:
    """A reply frame in whichever dialect it decodes (a fuzzed Tversion may have
    switched the session); ProtocolError if in none."""
    error: p.ProtocolError | None = None
    for messages in DIALECTS.values():
        try:
            return messages.decode(reply)
        except p.ProtocolError as exc:
            error = error or exc
    assert error is not None
    raise error


def error_errno(msg: Any) -> int | None:
    """The errno of an error reply in any dialect (None: not an error)."""
    if isinstance(msg, p.Rlerror):
        return msg.ecode
    if isinstance(msg, (u.Rerror, u.RerrorPlain)):
        return u.errno_of(msg)
    return None


#: The type code of an error reply: Rlerror, or Rerror in 9P2000(.u).
ERROR_TYPES = (p.Rlerror.TYPE, u.Rerror.TYPE)


class _ErrorLog(logging.Handler):
    """Counts ERROR records (the dispatcher's "internal error" log.exception)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class ResourceTotals:
    """What every fuzz run reports of the process it fuzzed: time, fds, memory."""

    seconds: float = 0.0
    fds_before: int = 0
    fds_after: int = 0
    rss_before_kib: int = 0
    rss_after_kib: int = 0


@dataclass
class FuzzStats(ResourceTotals):
    cases: int = 0
    frames: int = 0
    replies: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    flushed: int = 0

    def summary(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        top_replies = ", ".join(f"{k} {v}" for k, v in self.replies.most_common())
        top_errors = ", ".join(f"{k} {v}" for k, v in self.errors.most_common())
        return (f"cases {self.cases}, frames {self.frames} in {self.seconds:.1f} s "
                f"({rate:.0f} frames/s)\n"
                f"replies: {top_replies}\nerror replies by errno: {top_errors}\nflushed: {self.flushed}\n"
                f"fds before/after: {self.fds_before}/{self.fds_after}; RSS before/after: "
                f"{self.rss_before_kib}/{self.rss_after_kib} KiB")


class FuzzFailure(AssertionError):
    """A check failed; carries the frames of the case for reproduction."""

    def __init__(self, message: str, frames: list[bytes]) -> None:
        super().__init__(f"{message}\nreproduce with these frames:\n" +
                         "\n".join(f.hex() for f in frames))
        self.frames = frames


@contextlib.contextmanager
def without_mknod_capability() -> Iterator[None]:
    """Drop CAP_MKNOD from this thread's effective set (threads it starts inherit that)."""
    eff, perm, inh = syscalls.capget()
    bit = 1 << syscalls.CAP_MKNOD
    if not eff & bit:
        yield
        return
    syscalls.capset(eff & ~bit, perm, inh)
    try:
        yield
    finally:
        syscalls.capset(eff, perm, inh)


def build_export(base: Path) -> Path:
    """A small export with each kind of entry, next to a canary tree."""
    export = base / "export"
    export.mkdir()
    (export / "file").write_bytes(b"fuzz me\n" * 100)
    (export / "dir" / "sub").mkdir(parents=True)
    (export / "dir" / "file").write_bytes(b"inner\n")
    os.symlink("file", export / "link")
    os.symlink("../outside", export / "link_out")
    os.mkfifo(export / "fifo")
    return export


class FuzzTarget:
    """One export + back end; runs cases through fresh Sessions on it."""

    def __init__(self, base: Path, stats: FuzzStats, config: SessionConfig | None = None,
                 messages: p.MessageSet = p.DOTL) -> None:
        self.base = base
        self.stats = stats
        self.messages = messages
        self.config = config or SessionConfig(msize=MSIZE, max_fids=64, max_inflight=32)
        base.mkdir(parents=True, exist_ok=True)
        self.canary = Canary.plant(base)
        self.export = build_export(base)
        self.canary.arm()
        self.backend = LocalBackend(str(self.export), threads=4)

    async def close(self) -> None:
        await self.backend.close()
        self.canary.assert_intact()
        shutil.rmtree(self.base)

    async def _drain(self, frames: list[bytes]) -> None:
        current = asyncio.current_task()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
            if not pending:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise FuzzFailure(f"hang: {len(pending)} requests still running after "
                                  f"{DRAIN_TIMEOUT} s: {pending[:3]}", frames)
            await asyncio.wait(pending, timeout=left)
            for task in pending:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    trace = "".join(traceback.format_exception(exc))
                    raise FuzzFailure(f"a task raised {exc!r}:\n{trace}", frames)

    async def run_case(self, frames: list[bytes], burst: bool) -> None:
        """Send *frames* (after the prelude) to a new Session and check everything."""
        frames = prelude(self.messages) + frames
        session = Session(self.backend, self.config)
        sent: list[tuple[bytes, RecordingSink]] = []
        errors = _ErrorLog()
        logging.getLogger("ninep").addHandler(errors)
        try:
            for i, frame in enumerate(frames):
                sink = RecordingSink(self.config.msize)
                try:
                    session.submit([memoryview(frame)], sink)
                except Exception as exc:  # noqa: BLE001 - that is the finding
                    raise FuzzFailure(f"submit raised {exc!r}", frames) from exc
                sent.append((frame, sink))
                if not burst or i < PRELUDE_LENGTH:
                    await self._drain(frames)
            await self._drain(frames)
            await asyncio.wait_for(session.close(), DRAIN_TIMEOUT)
            await self._drain(frames)
        finally:
            logging.getLogger("ninep").removeHandler(errors)
        if errors.records:
            raise FuzzFailure(f"internal error logged: {errors.records[0].getMessage()} "
                              f"{errors.records[0].exc_info!r}", frames)
        for frame, sink in sent:
            self._check_reply(frame, sink, frames)
        if len(session.fids) or session.inflight:
            raise FuzzFailure(f"closed session kept {len(session.fids)} fids, "
                              f"{session.inflight} requests", frames)
        if self.backend._nodes:
            raise FuzzFailure(f"{len(self.backend._nodes)} back-end nodes never clunked", frames)
        self.stats.cases += 1
        self.stats.frames += len(frames)

    def _check_reply(self, frame: bytes, sink: RecordingSink, frames: list[bytes]) -> None:
        if sink.dropped:
            if sink.frames:
                raise FuzzFailure("a flushed request was also answered", frames)
            self.stats.flushed += 1
            return
        if len(sink.frames) != 1:
            raise FuzzFailure(f"{len(sink.frames)} replies to {frame.hex()}", frames)
        reply = sink.frames[0]
        if len(reply) > self.config.msize:
            raise FuzzFailure(f"reply of {len(reply)} bytes > msize", frames)
        try:
            rtag, msg = decode_reply(reply)
        except p.ProtocolError as exc:
            raise FuzzFailure(f"malformed reply {reply.hex()}: {exc}", frames) from None
        ecode = error_errno(msg)
        if len(frame) >= p.HEADER_SIZE:
            _, ttype, ttag = p.HEADER.unpack_from(frame)
            rtype = type(msg).TYPE
            if rtag != ttag or rtype not in (ttype + 1, *ERROR_TYPES):
                raise FuzzFailure(f"reply {type(msg).__name__} tag {rtag} to type {ttype} "
                                  f"tag {ttag}", frames)
        elif rtag != p.NOTAG or ecode is None:
            raise FuzzFailure("a runt frame was not answered with an error (NOTAG)", frames)
        self.stats.replies[type(msg).__name__] += 1
        if ecode is not None:
            if ecode == errno.EIO:
                raise FuzzFailure(f"EIO (internal error) for {frame.hex()}", frames)
            self.stats.errors[errno.errorcode.get(ecode, str(ecode))] += 1


async def fuzz(base: Path, total_frames: int, seed: int, *, case_frames: int = 40,
               cases_per_export: int = 50,
               progress: Callable[[FuzzStats], None] | None = None,
               messages: p.MessageSet = p.DOTL) -> FuzzStats:
    """Run seeded cases of *messages*' dialect until *total_frames* frames went
    through; returns the totals.

    Raises :class:`FuzzFailure` on the first failed check.  fds and RSS are
    measured around the whole run (RSS after a warm-up export).
    """
    rng = random.Random(seed)
    stats = FuzzStats(fds_before=fd_count())
    start = time.monotonic()
    epoch = 0
    with without_mknod_capability():
        while stats.frames < total_frames:
            target = FuzzTarget(base / f"epoch{epoch}", stats, messages=messages)
            try:
                for _ in range(cases_per_export):
                    if stats.frames >= total_frames:
                        break
                    await target.run_case(random_frames(rng, case_frames, messages),
                                          burst=rng.random() < 0.5)
            finally:
                await target.close()
            epoch += 1
            if epoch == 1:
                stats.rss_before_kib = rss_kib()
            if progress:
                stats.seconds = time.monotonic() - start
                progress(stats)
    stats.seconds = time.monotonic() - start
    stats.fds_after = fd_count()
    stats.rss_after_kib = rss_kib()
    return stats
