"""Proxy-protocol fuzzing of the real ``ninep-proxy-helper`` process.

The helper runs as a subprocess (``-s SOCKET``, several connections at once)
chrooted into a scratch export; a :class:`~security.harness.Canary` tree sits
beside the export and symlinks planted in the export point into it.  A *case*
is one message (sometimes a few pipelined ones) sent on a connection:

* well-formed requests with hostile field values go over one long-lived
  connection, which is reused as long as every message on it was answered;
* anything the helper must reject goes over a fresh connection, which is then
  half-closed (so a header promising more bytes sees EOF) and read to its end.

The oracle is :class:`~ninep.protocol.proxy.RequestDecoder`, run on the bytes
sent: the helper must answer exactly the requests it finds, each with a
well-formed reply of the right kind (an fd exactly when ``V9FS_FD_VALID``
says so), and then drop the connection if the decoder found garbage or an
incomplete request.  Every read has a timeout, so a hang is a failure, not a
stuck run.  Replies are also checked for escapes: no fd, stat or xattr of a
canary entry, no canary bytes.

Some cases attach ``SCM_RIGHTS`` fds to requests that take none (the write end
of a pipe, a directory and a file outside the export, a socket).  The helper
must drop them: once the message was consumed, the pipe's read end sees EOF.

Every :data:`CHECKPOINT_EVERY` cases (and at the end) every connection is
closed and the helper must be back to its baseline: process alive, fd count
and thread count as after start-up, no fd pointing outside the export, only
expected lines in its log (``malformed request``, ``EOF inside a request``…),
the canary unchanged and no probe file created outside the export.  Then the
export is rebuilt (the fuzz renames, removes and chmods what it finds).  The
helper's RSS is compared between the first checkpoint and the end.

Safety: the helper is root with CAP_MKNOD and the fuzz asks for device nodes.
It creates them inside the scratch export only, refuses to open them, and
this harness never opens anything in the export (fds the helper sends back
are only ``fstat``-ed, then closed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import random
import re
import select
import shutil
import socket
import stat
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ninep.protocol import proxy as P

from security.harness import CANARY_CONTENT, CANARY_XATTR, PROBE, Canary, fd_count, rss_kib

from .engine import FuzzFailure, ResourceTotals

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helper"))
from proxy_helper_support import Client, Helper  # noqa: E402

#: Seconds any one read or write may block before the case counts as a hang.
CASE_TIMEOUT = 10.0
#: Cases between two full checks (connections closed, fds/threads/log/canary, export rebuilt).
CHECKPOINT_EVERY = 250
#: Seconds the helper gets to close what a finished connection left.
SETTLE_TIMEOUT = 10.0

KINDS = ("hostile", "escape", "fds", "pipeline", "mutate", "type", "size-lie", "truncate",
         "bad-string", "junk")
#: How often each kind is picked: a little under half of the cases are well-formed.
WEIGHTS = {"hostile": 22, "escape": 14, "fds": 8, "pipeline": 5, "mutate": 17, "type": 7,
           "size-lie": 8, "truncate": 7, "bad-string": 7, "junk": 5}

#: Log lines the helper may write while being fuzzed; anything else is a finding.
ALLOWED_LOG = re.compile(
    r"started, exporting |connection \d+: (malformed request: .*|EOF inside a request "
    r"\(\d+ bytes\)|receive failed: .*|send failed: .*); closing$")

_HEADER = struct.Struct("<II")
_FORMAT_CODES = {"d": struct.Struct("<I"), "q": struct.Struct("<Q")}
_REQUEST_TYPES = sorted(P.REQUEST_CLASSES)
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


# --- the scratch export -----------------------------------------------------------------

#: Regular files of the export; the names the canary files share are there so a
#: host path re-resolved outside the chroot would hit the canary.
EXPORT_FILES = {"file": b"hello, proxy\n", "file.txt": b"inside\n", "secret.txt": b"inside\n",
                "sub/deep.txt": b"inside\n", "dir/file": b"inner\n"}


def populate_export(export: Path, outside: Path) -> None:
    """Fill *export* with every kind of entry, including symlinks that point out."""
    for name, data in EXPORT_FILES.items():
        (export / name).parent.mkdir(parents=True, exist_ok=True)
        (export / name).write_bytes(data)
    (export / "dir" / "sub").mkdir()
    for name in [*EXPORT_FILES, "dir", "dir/sub"]:
        os.setxattr(export / name, b"user.x", b"value of " + name.encode())
    os.symlink("file", export / "link")
    os.symlink("../outside", export / "link_out")
    os.symlink("../outside/secret.txt", export / "link_secret")
    os.symlink(str(outside), export / "abs_out")
    os.symlink(str(outside / "secret.txt"), export / "abs_secret")
    os.symlink("../../../../../../../..", export / "up")
    os.mkfifo(export / "fifo")


def reset_export(export: Path, outside: Path) -> None:
    """Empty *export* in place (the helper is chrooted into this very inode) and refill it."""
    for entry in os.scandir(export):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    os.chown(export, 0, 0)
    os.chmod(export, 0o755)
    for name in os.listxattr(export):
        with contextlib.suppress(OSError):
            os.removexattr(export, name)
    populate_export(export, outside)


# --- message generation -----------------------------------------------------------------

@dataclass
class ProxyCase:
    """What one case sends: bytes, fds to attach to them, and whether to hang up unread."""

    kind: str
    data: bytes
    fds: tuple[str, ...] = ()  # of FD_SOURCES
    hangup: bool = False
    split: tuple[int, ...] = ()  # offsets where the data is cut into separate writes
    #: On the reused connection: read the reply only after the next case ran, so
    #: two connections' requests are in the helper at once.
    overlap: bool = False

    def describe(self) -> str:
        return (f"kind {self.kind}, fds {list(self.fds)}, hangup {self.hangup}, "
                f"split {list(self.split)}, overlap {self.overlap}, "
                f"{len(self.data)} bytes: {self.data[:512].hex()}"
                + ("…" if len(self.data) > 512 else ""))


#: What an attached fd is; "pipe-many" is one pipe's write end 64 times.
FD_SOURCES = ("pipe", "pipe-many", "outside-dir", "outside-file", "socket")
#: Seconds between the pieces of a split write (so the helper reads them separately).
SPLIT_PAUSE = 0.001

OPEN_BITS = [os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_APPEND,
             os.O_NONBLOCK, os.O_DIRECTORY, os.O_NOFOLLOW, os.O_PATH, os.O_NOATIME, os.O_SYNC,
             os.O_DIRECT, getattr(os, "O_TMPFILE", 0o20200000), 0o20000000, 0o100000, os.O_NOCTTY]
MODES = [0o644, 0o755, 0, 0o7777, 0o4755, stat.S_IFREG | 0o644, stat.S_IFIFO | 0o666,
         stat.S_IFSOCK | 0o600, stat.S_IFCHR | 0o666, stat.S_IFBLK | 0o600, stat.S_IFDIR | 0o755,
         stat.S_IFLNK | 0o777, 0xFFFF, _U32]
IDS = [0, 0, 1000, 65534, _U32, _U32 - 1, 0x80000000, 0x7FFFFFFF]
#: mknod devices: null, zero, tty, the console, a disk, a nonexistent major, a huge dev_t.
DEVICES = [os.makedev(1, 3), os.makedev(1, 5), os.makedev(5, 0), os.makedev(5, 1),
           os.makedev(8, 0), os.makedev(253, 0), os.makedev(240, 7), 0, _U32, _U64]
SIZES = [0, 1, 2, 3, 100, 4096, 65535, 65536, 0x7FFFFFFF, 0x80000000, _U32 - 1, _U32]
LENGTHS = [0, 1, 4096, 1 << 40, (1 << 63) - 1, 1 << 63, _U64]
TIMES = [0, 1, P.UTIME_NOW, P.UTIME_OMIT, 999_999_999, 1_000_000_000, _U64, (1 << 63) - 1,
         1 << 63]
XATTR_NAMES = [b"user.x", b"user.new", CANARY_XATTR.encode(), b"security.capability",
               b"trusted.t", b"system.posix_acl_access", b"system.nfs4_acl", b"user.",
               b"", b"user.\0x", b"user.x\0", b"x" * 300, b"user." + b"n" * 250, b"nonsense"]
INTERESTING = [0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               _U32 - 1, _U32]


class ProxyCaseGenerator:
    """Seeded generator of :class:`ProxyCase` values, one method per kind."""

    def __init__(self, rng: random.Random, outside: Path) -> None:
        self.rng = rng
        host = os.fsencode(outside)
        base = os.fsencode(outside.parent)
        probe = PROBE.encode()
        #: Paths that name things in the export, and names that do not exist (yet).
        self.existing_paths = [b"file", b"/file", b"dir", b"/dir/", b"dir/sub", b"dir/file",
                               b"link", b"fifo", b"file.txt", b"sub/deep.txt", b"/", b"."]
        self.new_paths = [b"new", b"dir/new", b"/new2", b"missing/x", b"link/", b"file/x"]
        #: Paths that try to leave the export; creations aim at PROBE names.
        self.escape_paths = [
            b"..", b"../outside", b"../outside/secret.txt", b"/../outside/file.txt",
            b"dir/../../outside/sub/deep.txt", b"/../../../../../.." + host + b"/secret.txt",
            host + b"/secret.txt", host, base, b"link_out/secret.txt", b"abs_out/file.txt",
            b"link_out", b"abs_out", b"link_secret", b"abs_secret", b"up/" + host + b"/sub",
            b"up", b"link_out/sub/deep.txt", b"abs_out/sub", b"../" + probe,
            b"link_out/" + probe, b"abs_out/" + probe, base + b"/" + probe, b"up/tmp/" + probe,
            b"/proc/self/root" + host, b"/proc/1/cwd",
            b"file\0", b"file\0../../outside", b"\0", b"dir/\0x", b"",
            b"n" * 255, b"n" * 256, b"a/" * 2000, b"/" * 4096, b"." * 3,
        ]
        self.targets = [b"file", b"../outside", host, host + b"/secret.txt", b"/",
                        b"../../../../etc/passwd", b"link_out/secret.txt", b"", b"x" * 4095,
                        b"a\0b"]

    # --- field values -------------------------------------------------------------------

    def path(self, escape: bool) -> bytes:
        rng = self.rng
        roll = rng.random()
        if escape or roll < 0.15:
            return rng.choice(self.escape_paths)
        if roll < 0.7:
            return rng.choice(self.existing_paths)
        if roll < 0.95:
            return rng.choice(self.new_paths)
        return bytes(rng.choice(b"ab./\0\xff") for _ in range(rng.randrange(1, 12)))

    def integer(self, cls: type, name: str, code: str, hostile: bool) -> int:
        rng = self.rng
        if name == "flags" and cls in (P.Open, P.Create):
            if hostile and rng.random() < 0.3:
                return rng.choice([rng.getrandbits(32), _U32, 3, os.O_ACCMODE | os.O_CREAT])
            return sum(b for b in OPEN_BITS if rng.random() < 0.15) | rng.choice([0, 0, 1, 2])
        table = {"mode": MODES, "uid": IDS, "gid": IDS, "rdev": DEVICES, "size": SIZES,
                 "length": LENGTHS}.get(name)
        if name.endswith(("_sec", "_nsec")):
            table = TIMES
        if cls is P.Lsetxattr and name == "flags":
            return rng.choice([0, 1, 2, 3, 4, _U32] if hostile else [0, 0, 0, 1, 2])
        if table is not None and (hostile or rng.random() < 0.7):
            return rng.choice(table)
        if not hostile:
            return {"mode": 0o644, "uid": 0, "gid": 0, "rdev": 0, "size": 4096,
                    "length": 10}.get(name, 0)
        bits = 32 if code == "d" else 64
        return rng.choice([rng.choice(INTERESTING), rng.getrandbits(bits)])

    def string(self, cls: type, name: str, escape: bool) -> bytes:
        rng = self.rng
        if name == "name":
            return b"user.x" if rng.random() < 0.4 else rng.choice(XATTR_NAMES)
        if name == "value":
            return rng.randbytes(rng.choice([0, 1, 5, 100, 4000, 60000]))
        if name == "target":
            return rng.choice(self.targets)
        return self.path(escape)

    # --- frames -------------------------------------------------------------------------

    def request(self, type_: int | None = None, hostile: bool = False,
                escape: bool = False) -> tuple[bytes, list[int]]:
        """A well-formed request frame and the offsets of its ``s`` length fields."""
        rng = self.rng
        if type_ is None:
            type_ = rng.choice(_REQUEST_TYPES)
        cls = P.REQUEST_CLASSES[type_]
        layout = list(zip((f.name for f in dataclasses.fields(cls)), cls.FORMAT))
        values = {name: (self.string(cls, name, escape)[:0xFFFF] if code == "s"
                         else self.integer(cls, name, code, hostile))
                  for name, code in layout}
        if cls is P.Lsetxattr and not hostile:  # size = len(value), as a real client sends
            values["size"] = len(values["value"])
        payload = bytearray()
        strings = []
        for name, code in layout:
            value = values[name]
            if code == "s":
                strings.append(P.PROXY_HDR_SZ + len(payload))
                payload += struct.pack("<H", len(value)) + value
            else:
                payload += _FORMAT_CODES[code].pack(value & (_U32 if code == "d" else _U64))
        return _HEADER.pack(type_, len(payload)) + bytes(payload), strings

    def frame(self) -> bytes:
        return self.request(hostile=self.rng.random() < 0.5)[0]

    # --- the kinds ------------------------------------------------------------------------

    def case(self, kind: str | None = None) -> ProxyCase:
        rng = self.rng
        if kind is None:
            kind = rng.choices(KINDS, [WEIGHTS[k] for k in KINDS])[0]
        case = getattr(self, "gen_" + kind.replace("-", "_"))()
        if kind not in ("hostile", "escape", "fds") and rng.random() < 0.08:
            case.hangup = True
        case.overlap = not case.fds and rng.random() < 0.2
        if len(case.data) > 1 and rng.random() < 0.02:
            case.split = tuple(sorted({rng.randrange(1, len(case.data))
                                       for _ in range(rng.randrange(1, 4))}))
        return case

    def gen_hostile(self) -> ProxyCase:
        return ProxyCase("hostile", self.request(hostile=True)[0])

    def gen_escape(self) -> ProxyCase:
        return ProxyCase("escape", self.request(hostile=self.rng.random() < 0.3, escape=True)[0])

    def gen_fds(self) -> ProxyCase:
        rng = self.rng
        sources = tuple(rng.choice(FD_SOURCES) for _ in range(rng.choice([1, 1, 2, 3])))
        if rng.random() < 0.6:  # a valid request that takes no fd
            data = self.request(hostile=rng.random() < 0.5)[0]
        else:
            data = self.case(rng.choice(["mutate", "size-lie", "truncate", "junk"])).data or b"x"
        return ProxyCase("fds", data, sources)

    def gen_pipeline(self) -> ProxyCase:
        rng = self.rng
        frames = [self.frame() for _ in range(rng.randrange(2, 5))]
        if rng.random() < 0.5:  # then garbage: answered up to it, then dropped
            frames.append(self.case(rng.choice(["mutate", "type", "size-lie", "truncate"])).data)
        return ProxyCase("pipeline", b"".join(frames))

    def gen_mutate(self) -> ProxyCase:
        rng = self.rng
        buf = bytearray(self.frame())
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            op = rng.randrange(7)
            n = len(buf)
            if op == 0:  # flip a bit
                pos = rng.randrange(n * 8)
                buf[pos // 8] ^= 1 << pos % 8
            elif op == 1:  # an interesting byte
                buf[rng.randrange(n)] = rng.choice([0, 0xFF, 0x7F, 0x80, ord("/"), ord(".")])
            elif op == 2:  # insert bytes
                pos = rng.randrange(n + 1)
                buf[pos:pos] = rng.randbytes(rng.randrange(1, 9))
            elif op == 3:  # delete bytes
                pos = rng.randrange(n)
                del buf[pos:pos + rng.randrange(1, 9)]
            elif op == 4:  # splice in part of another frame
                other = self.frame()
                pos = rng.randrange(n + 1)
                buf[pos:] = other[rng.randrange(len(other)):]
            elif op == 5:  # duplicate a chunk
                pos = rng.randrange(n)
                buf[pos:pos] = buf[pos:pos + rng.randrange(1, 16)]
            else:  # an interesting u32 somewhere
                pos = rng.randrange(max(n - 3, 1))
                buf[pos:pos + 4] = struct.pack("<I", rng.choice(INTERESTING))
            if not buf:
                buf = bytearray(b"\0")
        if rng.random() < 0.5 and len(buf) >= P.PROXY_HDR_SZ:  # keep the header honest
            buf[4:8] = struct.pack("<I", len(buf) - P.PROXY_HDR_SZ)
        return ProxyCase("mutate", bytes(buf))

    def gen_type(self) -> ProxyCase:
        rng = self.rng
        frame = bytearray(self.frame())
        if rng.random() < 0.3:  # another request's type: a payload read as the wrong layout
            new_type = rng.choice(_REQUEST_TYPES)
        else:
            new_type = rng.choice([P.T_SUCCESS, P.T_ERROR, 22, 23, 99, 255, 256, 0x80000000,
                                   _U32, rng.getrandbits(32)])
        frame[0:4] = struct.pack("<I", new_type)
        return ProxyCase("type", bytes(frame))

    def gen_size_lie(self) -> ProxyCase:
        rng = self.rng
        frame = bytearray(self.frame())
        actual = len(frame) - P.PROXY_HDR_SZ
        lie = rng.choice(["bigger", "smaller", "huge", "zero"])
        if lie == "bigger":  # wait for bytes that never come (EOF after the half-close)
            size = min(actual + rng.choice([1, 2, 8, 100, 65536]), P.PROXY_MAX_IO_SZ)
        elif lie == "smaller":
            size = rng.randrange(actual) if actual else 0
        elif lie == "huge":  # refused from the header alone
            size = rng.choice([P.PROXY_MAX_IO_SZ + 1, 1 << 20, 0x7FFFFFFF, 0x80000000, _U32])
        else:
            size = 0
        frame[4:8] = struct.pack("<I", size)
        return ProxyCase("size-lie", bytes(frame))

    def gen_truncate(self) -> ProxyCase:
        rng = self.rng
        frame = self.frame()
        cut = rng.randrange(1, len(frame))
        data = bytearray(frame[:cut])
        if rng.random() < 0.5 and cut >= P.PROXY_HDR_SZ:  # a short payload, honestly sized
            data[4:8] = struct.pack("<I", cut - P.PROXY_HDR_SZ)
        return ProxyCase("truncate", bytes(data))

    def gen_bad_string(self) -> ProxyCase:
        rng = self.rng
        frame, strings = self.request(type_=rng.choice(_REQUEST_TYPES),
                                      hostile=rng.random() < 0.3)
        buf = bytearray(frame)
        pos = rng.choice(strings)
        (length,) = struct.unpack_from("<H", buf, pos)
        rest = len(buf) - pos - 2
        new = rng.choice([length + 1, length + 2, max(length - 1, 0), 0, 0xFFFF, 0x8000,
                          rest, rest + 1, rng.getrandbits(16)]) & 0xFFFF
        if new == length:
            new = (length + 1) & 0xFFFF
        struct.pack_into("<H", buf, pos, new)
        return ProxyCase("bad-string", bytes(buf))

    def gen_junk(self) -> ProxyCase:
        rng = self.rng
        if rng.random() < 0.5:
            return ProxyCase("junk", rng.randbytes(rng.randrange(0, 64)))
        payload = rng.randbytes(rng.choice([0, 1, 7, 40, 300]))
        type_ = rng.choice([rng.choice(_REQUEST_TYPES), rng.getrandbits(32)])
        return ProxyCase("junk", _HEADER.pack(type_, len(payload)) + payload)


# --- the oracle ---------------------------------------------------------------------------

def predict(data: bytes) -> tuple[list[P.Request], bool]:
    """The requests the helper must answer in *data*, and whether it must then drop the
    connection (garbage, or a request cut short by the half-close)."""
    dec = P.RequestDecoder()
    dec.feed(data)
    requests: list[P.Request] = []
    try:
        requests.extend(dec)
    except P.ProxyProtocolError:
        return requests, True
    return requests, dec.pending > 0


@dataclass
class ProxyFuzzStats(ResourceTotals):
    cases: int = 0
    messages: int = 0        #: frames sent (well-formed requests + malformed ones)
    malformed: int = 0       #: cases the helper had to reject
    kinds: Counter = field(default_factory=Counter)
    replies: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    drops: int = 0           #: connections the helper closed on bad input
    hangups: int = 0         #: connections we closed without reading
    connections: int = 0     #: connections opened
    fds_passed: int = 0      #: SCM_RIGHTS fds attached to requests
    fds_received: int = 0    #: fds the helper sent back (T_OPEN/T_CREATE)
    overlaps: int = 0        #: replies read only after the next case ran
    checkpoints: int = 0
    threads_before: int = 0
    threads_after: int = 0

    def summary(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        return (f"proxy helper: cases {self.cases}, messages {self.messages} "
                f"({self.malformed} cases malformed) in {self.seconds:.1f} s "
                f"({rate:.0f} cases/s)\n"
                f"kinds: {_listing(sorted(self.kinds.items()))}\n"
                f"replies: {_listing(self.replies.most_common())}\n"
                f"errors by errno: {_listing(self.errors.most_common())}\n"
                f"connections {self.connections}, dropped by the helper {self.drops}, "
                f"hung up by us {self.hangups}; fds passed {self.fds_passed}, "
                f"fds received {self.fds_received}; overlapping requests {self.overlaps}; "
                f"checkpoints {self.checkpoints}\n"
                f"helper fds before/after: {self.fds_before}/{self.fds_after}; threads "
                f"before/after: {self.threads_before}/{self.threads_after}; RSS before/after: "
                f"{self.rss_before_kib}/{self.rss_after_kib} KiB")


def _listing(items: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {count}" for name, count in items)


def _pieces(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Threads for pid {pid}")


class _Passed:
    """The fds attached to one case; tells whether the helper let go of them."""

    def __init__(self, sources: Sequence[str], outside: Path) -> None:
        self.send: list[int] = []
        self._pipe_reads: list[int] = []
        self._keep: list[int] = []
        for source in sources:
            if source in ("pipe", "pipe-many"):
                r, w = os.pipe2(os.O_CLOEXEC)
                self._pipe_reads.append(r)
                self.send.append(w)
                if source == "pipe-many":
                    self.send += [os.dup(w) for _ in range(63)]
            elif source == "outside-dir":
                self.send.append(os.open(outside, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            elif source == "outside-file":
                self.send.append(os.open(outside / "secret.txt", os.O_RDONLY | os.O_CLOEXEC))
            else:
                a, b = socket.socketpair()
                self.send.append(a.detach())
                self._keep.append(b.detach())
        self.count = len(self.send)

    def released(self, timeout: float) -> bool:
        """Close our copies; then whether the helper let go of its copies of the pipes'
        write ends too (their read ends at EOF within *timeout*)."""
        self._close(self.send + self._keep)
        deadline = time.monotonic() + timeout
        try:
            for r in self._pipe_reads:
                left = max(deadline - time.monotonic(), 0)
                if not select.select([r], [], [], left)[0] or os.read(r, 1) != b"":
                    return False
            return True
        finally:
            self.discard()

    def discard(self) -> None:
        """Close every fd of this case that is still open."""
        self._close(self.send + self._keep + self._pipe_reads)

    def _close(self, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        self.send, self._keep, self._pipe_reads = (
            [fd for fd in group if fd not in fds]
            for group in (self.send, self._keep, self._pipe_reads))


# --- the target ---------------------------------------------------------------------------

class ProxyFuzzTarget:
    """A helper process on a scratch export with a canary beside it; runs cases."""

    def __init__(self, base: Path, stats: ProxyFuzzStats) -> None:
        self.stats = stats
        base.mkdir(parents=True, exist_ok=True)
        self.canary = Canary.plant(base)
        self.outside = self.canary.root
        self.export = base / "export"
        self.export.mkdir()
        populate_export(self.export, self.outside)
        self.canary.arm()
        self.helper = Helper(self.export, "socket")
        self._persistent: Client | None = None
        self._overlapping: P.Request | None = None  # sent on _persistent, reply not read yet
        self._log_offset = 0
        self._recent: list[ProxyCase] = []  # for the failure message
        self.answer_good_request()  # also waits until the helper is set up
        self.fds_baseline, self.threads_baseline = self.settle()

    def close(self) -> None:
        if self._persistent is not None:
            self._persistent.close()
            self._persistent = None
        self.helper.stop()

    # --- one case -----------------------------------------------------------------------

    def run(self, case: ProxyCase) -> None:
        self._recent = (self._recent + [case])[-5:]
        expected, drop = predict(case.data)
        stats = self.stats
        stats.cases += 1
        stats.kinds[case.kind] += 1
        stats.messages += len(expected) + drop
        stats.malformed += drop
        fresh = drop or len(expected) != 1 or case.hangup
        if not fresh:
            self._finish_overlap()  # one request at a time on the reused connection
        try:
            client = self._fresh() if fresh else self._reused()
        except OSError as e:
            raise self.failure(f"cannot connect: {e}") from None
        passed = _Passed(case.fds, self.outside) if case.fds and case.data else None
        try:
            self._send(client, case, passed, fresh, expected)
            if case.hangup:
                stats.hangups += 1
            elif not fresh and case.overlap and passed is None:
                self._overlapping = expected[0]
                stats.overlaps += 1
            else:
                for req in expected:
                    self._check_reply(req, *self._receive(client, req))
                if fresh:
                    self._expect_close(client, drop)
        except BaseException:
            if passed is not None:
                passed.discard()
            raise
        finally:
            if fresh:
                client.close()
        if fresh:
            self._finish_overlap()
        if passed is not None:
            stats.fds_passed += passed.count
            if not passed.released(SETTLE_TIMEOUT):
                raise self.failure("an fd passed with SCM_RIGHTS is still held")
        if self.helper.proc.poll() is not None:
            raise self.failure(f"the helper exited with {self.helper.proc.returncode}")

    def _finish_overlap(self) -> None:
        """Read and check the reply left waiting on the reused connection, if any."""
        req, self._overlapping = self._overlapping, None
        if req is not None:
            assert self._persistent is not None
            self._check_reply(req, *self._receive(self._persistent, req))

    def _fresh(self) -> Client:
        client = self.helper.connect()
        client.sock.settimeout(CASE_TIMEOUT)
        self.stats.connections += 1
        return client

    def _reused(self) -> Client:
        if self._persistent is None:
            self._persistent = self._fresh()
        return self._persistent

    def _send(self, client: Client, case: ProxyCase, passed: _Passed | None, fresh: bool,
              expected: list[P.Request]) -> None:
        try:
            for i, piece in enumerate(_pieces(case.data, case.split)):
                if i:
                    time.sleep(SPLIT_PAUSE)
                if passed is not None and i == 0:
                    sent = socket.send_fds(client.sock, [piece], passed.send)
                    client.sock.sendall(piece[sent:])
                else:
                    client.sock.sendall(piece)
            if fresh and not case.hangup:
                client.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it dropped us already; what it answered before must still be there
        except socket.timeout:
            raise self.failure("hang: the helper stopped reading") from None
        except OSError as e:
            raise self.failure(f"send failed: {e}") from None
        for req in expected:
            client.dec.expect(req)

    def _receive(self, client: Client, req: P.Request) -> tuple[P.Reply, int | None]:
        try:
            return client.receive()
        except (EOFError, ConnectionResetError):
            raise self.failure(f"dropped the connection without answering {req}") from None
        except socket.timeout:
            raise self.failure(f"hang: no reply to {req} in {CASE_TIMEOUT} s") from None
        except (P.ProxyProtocolError, AssertionError) as e:
            raise self.failure(f"bad reply to {req}: {e}") from None

    def _expect_close(self, client: Client, drop: bool) -> None:
        """After the half-close the helper must answer nothing more and close."""
        try:
            data, fds, _, _ = socket.recv_fds(client.sock, 65536, 4)
        except ConnectionResetError:
            data, fds = b"", []
        except socket.timeout:
            raise self.failure(f"hang: connection still open {CASE_TIMEOUT} s after "
                               "the half-close") from None
        for fd in fds:
            os.close(fd)
        if data or fds:
            raise self.failure(f"{len(data)} bytes and {len(fds)} fds nobody asked for: "
                               f"{data[:64].hex()}")
        self.stats.drops += drop

    # --- reply checks --------------------------------------------------------------------

    def _check_reply(self, req: P.Request, reply: P.Reply, fd: int | None) -> None:
        stats = self.stats
        status = getattr(reply, "status", 0)
        if status < 0:
            stats.replies[f"{type(reply).__name__}(error)"] += 1
            stats.errors[errno.errorcode.get(-status, str(-status))] += 1
            return
        stats.replies[type(reply).__name__] += 1
        if isinstance(reply, P.FdReply):
            if fd is None:  # not V9FS_FD_VALID, not an error
                raise self.failure(f"{req} -> {reply}: neither an fd nor -errno")
            stats.fds_received += 1
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                raise self.failure(f"{req} opened a device node")
            self._not_canary(req, st.st_ino)
        elif isinstance(reply, P.ProxyStat):
            self._not_canary(req, reply.st_ino)
        elif isinstance(reply, (P.ReadlinkReply, P.XattrReply)):
            value = reply.target if isinstance(reply, P.ReadlinkReply) else reply.value
            limit = req.size - 1 if isinstance(req, P.Readlink) else req.size
            if CANARY_CONTENT in value or len(value) > limit:
                raise self.failure(f"{req} -> {reply!r}")

    def _not_canary(self, req: P.Request, ino: int) -> None:
        if ino in self.canary.inodes:
            raise self.failure(f"{req} reached inode {ino} outside the export")

    # --- checkpoints ---------------------------------------------------------------------

    def settle(self) -> tuple[int, int]:
        """Close our connections, wait until every connection thread of the helper has
        ended, and return its ``(fd count, thread count)`` then."""
        self._finish_overlap()
        if self._persistent is not None:
            self._assert_nothing_unsolicited(self._persistent)
            self._persistent.close()
            self._persistent = None
        pid = self.helper.pid
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (threads := thread_count(pid)) > 1:
            if time.monotonic() > deadline:
                raise self.failure(f"{threads - 1} connection threads still running "
                                   f"{SETTLE_TIMEOUT} s after their connections closed")
            time.sleep(0.005)
        return fd_count(pid), threads

    def checkpoint(self) -> None:
        """Every check that needs the helper idle; then a fresh export."""
        fds, threads = self.settle()
        if (fds, threads) != (self.fds_baseline, self.threads_baseline):
            raise self.failure(f"helper fds/threads {fds}/{threads}, baseline "
                               f"{self.fds_baseline}/{self.threads_baseline}: "
                               f"{self._fd_targets()}")
        if self.helper.proc.poll() is not None:
            raise self.failure(f"the helper exited with {self.helper.proc.returncode}")
        outside = str(self.outside)
        leaked = [t for t in self._fd_targets() if t.startswith(outside)]
        if leaked:
            raise self.failure(f"the helper holds fds outside the export: {leaked}")
        self._check_log()
        try:
            self.canary.assert_intact()
        except AssertionError as e:
            raise self.failure(str(e)) from None
        reset_export(self.export, self.outside)
        self.answer_good_request()
        self.stats.checkpoints += 1

    def answer_good_request(self) -> None:
        """The helper answers an lstat of a file in the export on a new connection."""
        probe = self._fresh()
        try:
            reply, _ = probe.call(P.Lstat(b"/file"))
            assert isinstance(reply, P.ProxyStat), reply
        except (OSError, EOFError, AssertionError, P.ProxyProtocolError) as e:
            raise self.failure(f"the helper no longer answers a good request: {e!r}") from None
        finally:
            probe.close()

    def _assert_nothing_unsolicited(self, client: Client) -> None:
        if not select.select([client.sock], [], [], 0)[0]:
            return
        try:
            extra = client.sock.recv(64)
        except OSError as e:
            extra = repr(e).encode()
        raise self.failure(f"the reused connection was closed or got unsolicited bytes: "
                           f"{extra!r}")

    def _fd_targets(self) -> list[str]:
        targets = []
        for fd in os.listdir(f"/proc/{self.helper.pid}/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/{self.helper.pid}/fd/{fd}"))
        return targets

    def _check_log(self) -> None:
        with open(self.helper.stderr_path, "rb") as f:
            f.seek(self._log_offset)
            text = f.read()
        self._log_offset += len(text)
        for line in text.decode(errors="replace").splitlines():
            if not ALLOWED_LOG.search(line):
                raise self.failure(f"unexpected helper log line: {line}")

    def failure(self, message: str) -> FuzzFailure:
        """A :class:`FuzzFailure` with the recent cases and the helper's last log lines."""
        log = self.helper.stderr().splitlines()[-5:]
        cases = "\n  ".join(c.describe() for c in self._recent)
        return FuzzFailure(f"{message}\nhelper log tail:\n  " + "\n  ".join(log)
                           + f"\nlast cases (newest last):\n  {cases}",
                           [c.data for c in self._recent])


def fuzz_proxy(base: Path, cases: int, seed: int,
               progress: Callable[[ProxyFuzzStats], None] | None = None, *,
               kinds: Sequence[str] | None = None,
               checkpoint_every: int = CHECKPOINT_EVERY) -> ProxyFuzzStats:
    """Run *cases* seeded cases against a fresh helper under *base*; returns the totals.

    Raises :class:`FuzzFailure` on the first failed check.  *kinds* restricts
    the generated kinds (default: all, weighted by :data:`WEIGHTS`).
    *progress* is called after every checkpoint.
    """
    rng = random.Random(seed)
    stats = ProxyFuzzStats()
    target = ProxyFuzzTarget(base, stats)
    gen = ProxyCaseGenerator(rng, target.outside)
    stats.fds_before = target.fds_baseline
    stats.threads_before = target.threads_baseline
    start = time.monotonic()
    try:
        for i in range(cases):
            target.run(gen.case(rng.choice(kinds) if kinds else None))
            if (i + 1) % checkpoint_every == 0 or i + 1 == cases:
                target.checkpoint()
                if stats.checkpoints == 1:
                    stats.rss_before_kib = rss_kib(target.helper.pid)
                stats.seconds = time.monotonic() - start
                if progress:
                    progress(stats)
        stats.fds_after, stats.threads_after = target.settle()
        stats.rss_after_kib = rss_kib(target.helper.pid)
    finally:
        target.close()
    stats.seconds = time.monotonic() - start
    return stats


def iter_kind(seed: int, kind: str, outside: Path, count: int) -> Iterator[ProxyCase]:
    """*count* cases of one kind (for tests that look at what a kind generates)."""
    gen = ProxyCaseGenerator(random.Random(seed), outside)
    for _ in range(count):
        yield gen.case(kind)
