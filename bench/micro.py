"""Microbenchmark: ninep server CPU per request, and the codec's cost per message.

    python -m bench.micro [--n 3000] [--reps 3] [--out bench/results/]

**Server CPU per request.** A real ``python -m ninep`` process serves one
export over vhost-user (driven by the fake virtqueue front end of
``ninep.testing``: shared memfd RAM, real split rings and eventfds) and over
its stream transport (a Unix socket, driven by ``ninep.client``). The
bench process is the guest; the server's CPU is read from
``/proc/PID/task/*/schedstat`` (ns, all threads) around each batch of
requests, so the client's own cost is not counted. Requests go one at a
time (QD1), as a guest's single reader issues them.

**Codec.** ns per message for the construct-compiled path (``encode``,
``decode_body``) against the plain ``struct`` paths (``encode_fast``,
``FAST_*``), in process, with ``timeit``.

Each server figure is a median [min–max] over ``--reps`` batches,
interleaved between transports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.report import Summary, markdown_table  # noqa: E402
from bench.cpu import process_cpu_seconds  # noqa: E402
from ninep.client import Client  # noqa: E402
from ninep.protocol import ninep as p  # noqa: E402
from ninep.testing.fake_virtqueue import split_sizes  # noqa: E402
from ninep.testing.process import stop_process  # noqa: E402
from ninep.testing.vhost_frontend import VhostUserGuest  # noqa: E402

KIB = 1024
MSIZE = 1 << 20  # room for a 512 KiB Tread
FILE_MIB = 32


# --- one transport, seen as a few async operations ----------------------------------------

class Ops:
    """The operations measured, over either transport."""

    def __init__(self, name: str, getattr_: Callable[[], Awaitable[object]],
                 walk_clunk: Callable[[], Awaitable[object]],
                 read: Callable[[int, int], Awaitable[bytes]],
                 write: Callable[[int, bytes], Awaitable[int]]) -> None:
        self.name = name
        self.getattr = getattr_
        self.walk_clunk = walk_clunk
        self.read = read
        self.write = write


async def virtqueue_ops(sock: str) -> tuple[Ops, Callable[[], None]]:
    guest = VhostUserGuest.create(ram_size=128 << 20, msize=MSIZE)
    await guest.connect(sock)
    n = guest.ninep
    await n.version()
    root = await n.attach()
    fid = await n.walk(root, ["data"])
    await n.lopen(fid)
    wfid = await n.walk(root, [])
    await n.lcreate(wfid, "vq-written", p.DOTL_WRONLY)
    walk_fid = n.new_fid()

    async def walk_clunk() -> None:
        await n.rpc(p.Twalk(root, walk_fid, ["data"]), reply_size=64)
        await n.rpc(p.Tclunk(walk_fid), reply_size=64)

    async def read(offset: int, count: int) -> bytes:
        # The Linux client's zero-copy layout: an 11-byte header, then pages.
        reply = await n.rpc(p.Tread(fid, offset, count), in_sizes=split_sizes(11 + count, 11),
                            scattered=True)
        return reply.data

    return Ops("virtqueue (vhost-user)", lambda: n.getattr(fid), walk_clunk, read,
               lambda off, data: n.write(wfid, off, data)), guest.close


async def stream_ops(sock: str) -> tuple[Ops, Callable[[], None]]:
    c = await Client.connect_unix(sock, msize=MSIZE)
    root = await c.attach()
    fid = await c.walk_open(root, ["data"])
    wfid, _ = await c.create(root, "stream-written", p.DOTL_WRONLY)
    walk_fid = c.new_fid()

    async def walk_clunk() -> None:
        await c.rpc(p.Twalk(root, walk_fid, ["data"]))
        await c.rpc(p.Tclunk(walk_fid))

    async def close() -> None:
        await c.close()

    return Ops("stream (unix socket)", lambda: c.getattr(fid), walk_clunk,
               lambda off, n: c.read(fid, off, n), lambda off, data: c.write(wfid, off, data)), close


# --- measuring --------------------------------------------------------------------------------

REQUESTS = ("Tgetattr", "Twalk+Tclunk", "Tread 4 KiB", "Tread 512 KiB", "Twrite 512 KiB")
#: Also measurable (bench.sandbox_cost): a small write.
SMALL_WRITE = "Twrite 4 KiB"
#: Requests moving 512 KiB run n/20 times.
BIG = ("Tread 512 KiB", "Twrite 512 KiB")


async def batch(ops: Ops, what: str, n: int, rng: random.Random) -> Callable[[], Awaitable[None]]:
    """The coroutine factory running *n* requests of kind *what*."""
    blocks = FILE_MIB * KIB // 4
    span = FILE_MIB * KIB * KIB // (512 * KIB)
    payload = os.urandom(512 * KIB if what == "Twrite 512 KiB" else 4 * KIB)

    async def run() -> None:
        if what == "Tgetattr":
            for _ in range(n):
                await ops.getattr()
        elif what == "Twalk+Tclunk":
            for _ in range(n):
                await ops.walk_clunk()
        elif what == "Tread 4 KiB":
            for _ in range(n):
                data = await ops.read(rng.randrange(blocks) * 4 * KIB, 4 * KIB)
                assert len(data) == 4 * KIB
        elif what == "Tread 512 KiB":
            for i in range(n):
                data = await ops.read((i % span) * 512 * KIB, 512 * KIB)
                assert len(data) == 512 * KIB
        elif what == SMALL_WRITE:
            for _ in range(n):
                assert await ops.write(rng.randrange(blocks) * 4 * KIB, payload) == 4 * KIB
        else:
            for i in range(n):
                assert await ops.write((i % span) * 512 * KIB, payload) == 512 * KIB
    return run


def _start_server(export: Path, work: Path, label: str, pythonpath: str | None,
                  extra: Sequence[str] = ()) -> tuple[subprocess.Popen, str, str]:
    """A ``python -m ninep`` serving vhost-user and a Unix socket; *pythonpath* picks another
    tree, *extra* adds options."""
    vsock, ssock = str(work / f"{label}-vu.sock"), str(work / f"{label}-st.sock")
    env = dict(os.environ)
    # The server runs in a temporary directory: without PYTHONPATH it would import
    # whichever ninep is installed, not this tree's.
    env["PYTHONPATH"] = pythonpath or str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "ninep", "--export", str(export), "--socket-path", vsock,
                             "--tag", "vu9p", "--listen", f"unix:{ssock}", "--msize", str(MSIZE),
                             "--log-level", "warning", *extra], cwd=work, stdin=subprocess.DEVNULL, env=env)
    return proc, vsock, ssock


async def measure_server(export: Path, work: Path, n: int, reps: int,
                         servers: Sequence[tuple[str, str | None, Sequence[str]]] = (("", None, ()),),
                         log=print, requests: Sequence[str] = REQUESTS
                         ) -> dict[str, dict[str, list[float]]]:
    """``{transport: {request: [server CPU µs per request, one per rep]}}`` (and wall µs).

    With several *servers* (label, PYTHONPATH, extra options), each runs its own process and
    their batches interleave, so that before/after comparisons see the same load.
    """
    procs = []
    closers = []
    results: dict[str, dict[str, list[float]]] = {}
    try:
        transports: list[tuple[Ops, subprocess.Popen]] = []
        for label, pythonpath, extra in servers:
            proc, vsock, ssock = _start_server(export, work, label or "ninep", pythonpath, extra)
            procs.append(proc)
            deadline = time.monotonic() + 30
            while not os.path.exists(ssock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the ninep server did not start")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # the vhost-user listener comes up beside it
            for make, sock in ((virtqueue_ops, vsock), (stream_ops, ssock)):
                ops, close = await make(sock)
                if label:
                    ops.name = f"{label}: {ops.name}"
                transports.append((ops, proc))
                closers.append(close)
        rng = random.Random(5)
        for what in requests:
            count = n if what not in BIG else max(50, n // 20)
            for ops, _ in transports:  # warm-up (thread pool, page cache)
                await (await batch(ops, what, max(5, count // 10), rng))()
            for rep in range(reps):
                for ops, proc in transports if rep % 2 == 0 else transports[::-1]:
                    run = await batch(ops, what, count, rng)
                    c0, t0 = process_cpu_seconds(proc.pid), time.perf_counter()
                    await run()
                    c1, t1 = process_cpu_seconds(proc.pid), time.perf_counter()
                    cell = results.setdefault(ops.name, {})
                    cell.setdefault(what, []).append((c1 - c0) / count * 1e6)
                    cell.setdefault(what + " wall", []).append((t1 - t0) / count * 1e6)
            log(f"  {what}: done")
    finally:
        for close in closers:
            r = close()
            if asyncio.iscoroutine(r):
                await r
        for proc in procs:
            stop_process(proc)
    return results


def host_read_us(path: Path, size: int, reps: int = 200) -> float:
    """µs for one preadv of *size* bytes from the host page cache (the floor for a Tread)."""
    buf = bytearray(size)
    fd = os.open(path, os.O_RDONLY)
    try:
        span = os.fstat(fd).st_size // size
        t0 = time.perf_counter()
        for i in range(reps):
            os.preadv(fd, [buf], (i % span) * size)
        return (time.perf_counter() - t0) / reps * 1e6
    finally:
        os.close(fd)


# --- codec --------------------------------------------------------------------------------------

def codec_cases() -> list[tuple[str, Callable[[], object], Callable[[], object] | None]]:
    """(message, construct path, struct path or None) pairs, each one call."""
    qid = p.Qid(0, 1, 12345)
    rgetattr = p.Rgetattr(p.GETATTR_BASIC, qid, 0o100644, 0, 0, 1, 0, 4096, 4096, 8, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0)
    tgetattr = p.encode(p.Tgetattr(7, p.GETATTR_ALL), 1)[7:]
    twalk = p.encode(p.Twalk(1, 2, ["data"]), 1)[7:]
    tclunk = p.encode(p.Tclunk(2), 1)[7:]
    tread = p.encode(p.Tread(7, 4096, 4096), 1)[7:]
    twrite_head = p.encode(p.Twrite(7, 0, b"x" * 4096), 1)[7:7 + 16]
    rwalk = p.Rwalk([qid])
    u32 = struct.Struct("<I")
    walk_head = struct.Struct("<IIH")

    def twalk_struct() -> tuple[int, int, list[str]]:
        fid, newfid, n = walk_head.unpack_from(twalk)
        names, pos = [], walk_head.size
        for _ in range(n):
            (length,) = struct.unpack_from("<H", twalk, pos)
            names.append(os.fsdecode(twalk[pos + 2:pos + 2 + length]))
            pos += 2 + length
        return fid, newfid, names

    # Once the codec has a struct-plan decode_body, construct's is decode_body_construct.
    slow = getattr(p, "decode_body_construct", None)
    if slow is not None:
        fast_dec = {t: (lambda b, t=t: p.decode_body(t, b)) for t in (p.Tgetattr.TYPE, p.Twalk.TYPE, p.Tclunk.TYPE)}
    else:
        slow = p.decode_body
        fast_dec = {p.Tgetattr.TYPE: lambda b: p.Tgetattr(*struct.unpack("<IQ", b)),
                    p.Twalk.TYPE: lambda b: twalk_struct(),
                    p.Tclunk.TYPE: lambda b: p.Tclunk(*u32.unpack(b))}
    return [
        ("decode Tgetattr", lambda: slow(p.Tgetattr.TYPE, tgetattr),
         lambda: fast_dec[p.Tgetattr.TYPE](tgetattr)),
        ("decode Twalk (1 name)", lambda: slow(p.Twalk.TYPE, twalk), lambda: fast_dec[p.Twalk.TYPE](twalk)),
        ("decode Tclunk", lambda: slow(p.Tclunk.TYPE, tclunk), lambda: fast_dec[p.Tclunk.TYPE](tclunk)),
        ("decode Tread", lambda: slow(p.Tread.TYPE, tread), lambda: p.FAST_FID_OFFSET_COUNT.unpack(tread)),
        ("decode Twrite head", None, lambda: p.FAST_TWRITE_HEAD.unpack(twrite_head)),
        ("encode Rgetattr", lambda: p.encode(rgetattr, 1), lambda: p.encode_fast(rgetattr, 1)),
        ("encode Rwalk (1 qid)", lambda: p.encode(rwalk, 1), lambda: p.encode_fast(rwalk, 1)),
        ("encode Rclunk", lambda: p.encode(p.Rclunk(), 1), lambda: p.encode_fast(p.Rclunk(), 1)),
        ("encode Rwrite", lambda: p.encode(p.Rwrite(4096), 1), lambda: p.encode_fast(p.Rwrite(4096), 1)),
        ("encode Rread header", None, lambda: p.encode_rread_header(1, 4096)),
        ("encode Rlerror", lambda: p.encode(p.Rlerror(2), 1), lambda: p.encode_rlerror(1, 2)),
    ]


def measure_codec(reps: int) -> list[list[str]]:
    def ns(fn: Callable[[], object] | None) -> Summary | None:
        if fn is None:
            return None
        timer = timeit.Timer(fn)
        number, _ = timer.autorange()
        return Summary.of([t / number * 1e9 for t in timer.repeat(repeat=reps, number=number)])

    rows = []
    for name, slow, fast in codec_cases():
        s, f = ns(slow), ns(fast)
        speedup = f"{s.median / f.median:.1f}×" if s and f else "n/a"
        rows.append([name, s.cell("{:.0f}") if s else "–", f.cell("{:.0f}") if f else "–", speedup])
    return rows


# --- main -------------------------------------------------------------------------------------

def render(server: dict[str, dict[str, list[float]]], host_us: dict[int, float], codec: list[list[str]],
           n: int, reps: int) -> str:
    lines = [f"# ninep microbenchmark ({time.strftime('%Y-%m-%d %H:%M')}, n={n}, {reps} reps)", "",
             "Server CPU µs per request (all server threads, client excluded), QD1; "
             "wall µs is the round trip seen by the in-process client. Median [min–max].", ""]
    transports = list(server)
    header = ["request", *(f"{t} CPU µs" for t in transports), *(f"{t} wall µs" for t in transports)]
    rows = []
    for what in REQUESTS:
        cpu = [Summary.of(server[t].get(what, [])) for t in transports]
        wall = [Summary.of(server[t].get(what + " wall", [])) for t in transports]
        rows.append([what, *(c.cell("{:.1f}") if c else "–" for c in cpu),
                     *(w.cell("{:.1f}") if w else "–" for w in wall)])
    lines += [markdown_table(header, rows), ""]
    for size, label in ((4 * KIB, "Tread 4 KiB"), (512 * KIB, "Tread 512 KiB")):
        for t in transports:
            s = Summary.of(server[t].get(label, []))
            if s:
                mib_s = size / (1 << 20) / (s.median / 1e6)
                host = size / (1 << 20) / (host_us[size] / 1e6)
                lines.append(f"- {label} over {t}: server-side {mib_s:.0f} MiB/s per CPU-second vs host "
                             f"page-cache preadv {host:.0f} MiB/s ({100 * mib_s / host:.0f}%)")
    lines += ["", "Codec ns per message (construct compiled vs plain struct), median [min–max]:", "",
              markdown_table(["message", "construct", "struct", "struct speed-up"], codec), ""]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="requests per batch (512 KiB I/O: n/20)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--no-codec", action="store_true")
    ap.add_argument("--ab", metavar="DIR",
                    help="also run the server from another copy of the package (PYTHONPATH=DIR), "
                         "interleaved with this tree's: a before/after comparison under the same load")
    ap.add_argument("--stats", action="store_true",
                    help="also run this tree's server with --stats (counting every request)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ninep-micro-", dir="/tmp"))
    try:
        export = work / "export"
        export.mkdir()
        data = export / "data"
        with open(data, "wb") as f:
            for _ in range(FILE_MIB):
                f.write(os.urandom(1 << 20))
        host_us = {size: host_read_us(data, size) for size in (4 * KIB, 512 * KIB)}
        print("server CPU per request ...")
        servers: list[tuple[str, str | None, Sequence[str]]] = \
            [("before", args.ab, ()), ("after", None, ())] if args.ab else [("", None, ())]
        if args.stats:
            servers.append(("stats", None, ("--stats", f"unix:{work}/stats.sock")))
        server = asyncio.run(measure_server(export, work, args.n, args.reps, servers))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    codec = [] if args.no_codec else measure_codec(args.reps)
    text = render(server, host_us, codec, args.n, args.reps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "micro.md").write_text(text)
    (args.out / "micro.json").write_text(json.dumps({"server": server, "host_read_us": host_us,
                                                     "codec": codec}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
