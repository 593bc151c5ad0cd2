"""Load generator: N concurrent sessions doing mixed 9P operations against a
real ``ninep`` server process, measuring throughput, latency and server RSS.

Used by ``tests/load/test_load.py`` (a reduced run in CI) and by
``scripts/load-test`` (64 sessions x 10,000 operations).  An *operation* is
one of walk, getattr, read, write, readdir, create or unlink; walk and create
also clunk the fid they made, so each costs two or three RPCs.  Any error
reply or lost connection counts as a protocol error.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ninep.client import Client
from ninep.protocol import ninep as p

from security.harness import ServerProcess, connect, rss_kib

OPS = ("walk", "getattr", "read", "write", "readdir", "create", "unlink")
WEIGHTS = (20, 20, 20, 15, 5, 10, 10)
BLOCK = 4096
FILES_PER_SESSION = 8


@dataclass
class LoadResult:
    sessions: int
    ops_per_session: int
    ops: Counter = field(default_factory=Counter)
    rpcs: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    rss_start_kib: int = 0
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    server_errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        total = sum(self.ops.values())
        return (f"{self.sessions} sessions x {self.ops_per_session} ops = {total} ops "
                f"({self.rpcs} RPCs) in {self.seconds:.1f} s\n"
                f"throughput: {total / self.seconds:.0f} ops/s, "
                f"{self.rpcs / self.seconds:.0f} RPC/s\n"
                f"latency per op: p50 {self.percentile(0.5) * 1e3:.2f} ms, "
                f"p99 {self.percentile(0.99) * 1e3:.2f} ms, "
                f"max {max(self.latencies) * 1e3:.1f} ms\n"
                f"mix: {dict(self.ops)}\n"
                f"protocol errors: {len(self.errors)}; "
                f"server log errors: {len(self.server_errors)}\n"
                f"server RSS: start {self.rss_start_kib} KiB, "
                f"after warm-up {self.rss_warm_kib} KiB, "
                f"end {self.rss_end_kib} KiB")


class Worker:
    """One session's client and the files it plays with (in its own directory)."""

    def __init__(self, client: Client, index: int, seed: int, result: LoadResult) -> None:
        self.client = client
        self.index = index
        self.rng = random.Random(seed)
        self.result = result
        self.names: list[str] = []
        self.created: list[str] = []
        self.counter = 0

    async def setup(self) -> None:
        c = self.client
        self.root = await c.attach()
        await c.mkdir(self.root, f"s{self.index}")
        self.dir = await c.walk(self.root, [f"s{self.index}"])
        self.open_fids = []
        for i in range(FILES_PER_SESSION):
            fid, _ = await c.create(self.dir, f"f{i}")
            await c.write(fid, 0, os.urandom(BLOCK * 4))
            self.names.append(f"f{i}")
            self.open_fids.append(fid)
        self.dir_open = await c.walk_open(self.dir, [])
        self.payload = os.urandom(BLOCK)

    async def rpc(self, msg: Any) -> Any:
        self.result.rpcs += 1
        return await self.client.rpc(msg)

    async def op_walk(self) -> None:
        fid = self.client.new_fid()
        await self.rpc(p.Twalk(self.dir, fid, [self.rng.choice(self.names)]))
        await self.rpc(p.Tclunk(fid))

    async def op_getattr(self) -> None:
        await self.rpc(p.Tgetattr(self.rng.choice(self.open_fids), p.GETATTR_BASIC))

    async def op_read(self) -> None:
        reply = await self.rpc(p.Tread(self.rng.choice(self.open_fids),
                                       self.rng.randrange(4) * BLOCK, BLOCK))
        if len(reply.data) != BLOCK:
            raise OSError(0, f"short read {len(reply.data)}")

    async def op_write(self) -> None:
        reply = await self.rpc(p.Twrite(self.rng.choice(self.open_fids),
                                        self.rng.randrange(4) * BLOCK, self.payload))
        if reply.count != BLOCK:
            raise OSError(0, f"short write {reply.count}")

    async def op_readdir(self) -> None:
        await self.rpc(p.Treaddir(self.dir_open, 0, 8192))

    async def op_create(self) -> None:
        self.counter += 1
        name = f"n{self.counter}"
        fid = self.client.new_fid()
        await self.rpc(p.Twalk(self.dir, fid, []))
        await self.rpc(p.Tlcreate(fid, name, p.DOTL_RDWR, 0o644, 0))
        await self.rpc(p.Tclunk(fid))
        self.created.append(name)

    async def op_unlink(self) -> None:
        if not self.created:
            await self.op_create()
            return
        victim = self.created.pop(self.rng.randrange(len(self.created)))
        await self.rpc(p.Tunlinkat(self.dir, victim, 0))

    async def run(self, ops: int) -> None:
        table: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            name: getattr(self, f"op_{name}") for name in OPS}
        for name in self.rng.choices(OPS, WEIGHTS, k=ops):
            start = time.perf_counter()
            try:
                await table[name]()
            except (OSError, ConnectionError) as exc:
                self.result.errors.append(f"session {self.index} {name}: {exc!r}")
                if isinstance(exc, ConnectionError):
                    return
            self.result.latencies.append(time.perf_counter() - start)
            self.result.ops[name] += 1


async def run_load(socket_path: str, server_pid: int, sessions: int, ops: int,
                   seed: int = 1) -> LoadResult:
    """Connect *sessions* clients, warm up, then run *ops* operations on each concurrently."""
    result = LoadResult(sessions, ops)
    result.rss_start_kib = rss_kib(server_pid)
    clients = [await connect(socket_path, msize=65536, tap=False) for _ in range(sessions)]
    workers = [Worker(c, i, seed * 1000 + i, result) for i, c in enumerate(clients)]
    try:
        await asyncio.gather(*(w.setup() for w in workers))
        warm = LoadResult(sessions, 0)
        for w in workers:
            w.result = warm
        await asyncio.gather(*(w.run(min(200, ops)) for w in workers))
        result.errors += warm.errors
        for w in workers:
            w.result = result
        result.rss_warm_kib = rss_kib(server_pid)
        start = time.monotonic()
        await asyncio.gather(*(w.run(ops) for w in workers))
        result.seconds = time.monotonic() - start
        result.rss_end_kib = rss_kib(server_pid)
    finally:
        for c in clients:
            await c.close()
    return result


async def load_test(sessions: int, ops: int, seed: int = 1, *args: str) -> LoadResult:
    """Start a ``ninep`` server on a scratch export, run the load, stop the server."""
    base = Path(tempfile.mkdtemp(prefix="ninep-load-"))
    export = base / "export"
    export.mkdir()
    server = ServerProcess(export, *args, socket_path=str(base / "9p.sock"))
    try:
        with server:
            result = await run_load(server.socket_path, server.pid, sessions, ops, seed)
            alive = server.alive()
        result.server_errors = [line for line in server.log().splitlines()
                                if "ERROR" in line or "Traceback" in line]
        if not alive:
            result.server_errors.append("the server died")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return result
