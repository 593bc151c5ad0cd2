"""Live statistics (``--stats``): what is counted, the endpoint, ``ninep stats``.

The end-to-end tests run a real ``python -m ninep`` process, talk 9P to it,
and read its counters the two ways an operator would: the Prometheus text
over HTTP and the ``ninep stats`` table.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import SessionConfig
from ninep.server.stats import Stats
from ninep.statsview import fetch, parse, quantile
from ninep.testing.process import wait_for_path
from ninep.transport.metrics import parse_stats_address

NINEP = [sys.executable, "-m", "ninep"]


def samples(text: str) -> dict[str, float]:
    """``'name{labels}' -> value`` of every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def scrape(address: str) -> dict[str, float]:
    return samples(await asyncio.to_thread(fetch, parse_stats_address(address)))


@pytest.fixture
async def server(export: Path, sockdir: Path) -> AsyncIterator[tuple[Path, str]]:
    """A real server process with ``--stats unix:…``: (9P socket, stats address)."""
    (export / "data").write_bytes(b"0123456789" * 100)
    sock, stats = sockdir / "9p", sockdir / "stats"
    proc = await asyncio.create_subprocess_exec(
        *NINEP, "--export", str(export), "--listen", f"unix:{sock}", "--stats", f"unix:{stats}",
        "--log-level", "warning", stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_for_path(proc, sock)
        await wait_for_path(proc, stats)
        yield sock, f"unix:{stats}"
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr
        assert b"Traceback" not in stderr
        assert not stats.exists()  # the endpoint's socket goes with the server
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_running_server_counts_requests_errors_bytes_fids_and_sessions(
        server: tuple[Path, str]) -> None:
    sock, address = server
    async with await Client.connect_unix(str(sock), msize=65536) as client:
        root = await client.attach()
        for _ in range(7):
            await client.getattr(root)
        for name in ("nope", "nada"):
            with pytest.raises(OSError):
                await client.walk(root, [name])
        fid = await client.walk_open(root, ["data"])
        assert len(await client.read(fid, 0, 300)) == 300
        assert len(await client.read(fid, 900, 300)) == 100
        new, _ = await client.create(root, "new")
        assert await client.write(new, 0, b"x" * 1234) == 1234
        with pytest.raises(OSError):
            await client.read(root, 0, 10)  # not open: EBADF

        during = await scrape(address)
        assert during['ninep_requests_total{op="getattr"}'] == 7
        assert during['ninep_requests_total{op="walk"}'] == 4  # 2 failed; walk_open, create clone
        assert during['ninep_errors_total{op="walk",errno="ENOENT"}'] == 2
        assert during['ninep_errors_total{op="read",errno="EBADF"}'] == 1
        assert during['ninep_requests_total{op="read"}'] == 3
        assert during["ninep_read_bytes_total"] == 400
        assert during["ninep_written_bytes_total"] == 1234
        assert during['ninep_request_duration_seconds_count{op="getattr"}'] == 7
        assert during['ninep_request_duration_seconds_bucket{op="getattr",le="+Inf"}'] == 7
        assert during['ninep_request_duration_seconds_sum{op="getattr"}'] > 0
        assert during["ninep_sessions"] == 1
        assert during["ninep_requests_in_flight"] == 0
        assert during['ninep_session_fids{session="1"}'] == 3  # root, data, new

        async with await Client.connect_unix(str(sock), msize=65536) as second:
            await second.attach()
            both = await scrape(address)
            assert both["ninep_sessions"] == 2
            assert both['ninep_session_fids{session="2"}'] == 1
    for _ in range(100):
        after = await scrape(address)
        if after["ninep_sessions"] == 0:
            break
        await asyncio.sleep(0.02)
    assert after["ninep_sessions"] == 0
    assert not any(key.startswith("ninep_session_fids") for key in after)
    assert after['ninep_requests_total{op="getattr"}'] == 7  # the counts outlive sessions


async def test_ninep_stats_prints_the_table(server: tuple[Path, str]) -> None:
    sock, address = server
    async with await Client.connect_unix(str(sock), msize=65536) as client:
        root = await client.attach()
        for _ in range(5):
            await client.getattr(root)
        with pytest.raises(OSError):
            await client.walk(root, ["missing"])
        result = await asyncio.to_thread(subprocess.run, [*NINEP, "stats", address],
                                         capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "sessions 1" in lines[0] and "fids 1" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines if line[:1].isalpha()}
    assert rows["getattr"][1:3] == ["5", "0"]
    assert rows["walk"][1:3] == ["1", "1"]
    assert "walk ENOENT 1" in result.stdout


async def test_ninep_stats_watch_shows_rates_of_each_interval(server: tuple[Path, str]) -> None:
    sock, address = server
    async with await Client.connect_unix(str(sock), msize=65536) as client:
        root = await client.attach()
        watch = await asyncio.create_subprocess_exec(
            *NINEP, "stats", address, "--watch", "--interval", "1", "--count", "2",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        busy = True

        async def load() -> None:
            while busy:
                await client.getattr(root)

        loader = asyncio.ensure_future(load())
        try:
            out, err = await asyncio.wait_for(watch.communicate(), 60)
        finally:
            busy = False
            await loader
    assert watch.returncode == 0, err
    screens = out.decode().split("\x1b[H\x1b[2J")[1:]
    assert len(screens) == 2
    assert "requests" in screens[0] and "req/s" in screens[1]
    row = next(line.split() for line in screens[1].splitlines() if line.startswith("getattr"))
    assert float(row[1]) > 0  # getattrs per second over the interval


async def test_the_endpoint_serves_only_get_metrics(server: tuple[Path, str]) -> None:
    _, address = server
    path = address.removeprefix("unix:")

    def ask(raw: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            return b"".join(iter(lambda: s.recv(65536), b""))

    ok = await asyncio.to_thread(ask, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.0 200 OK\r\n") and b"text/plain; version=0.0.4" in ok
    assert (await asyncio.to_thread(ask, b"GET / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 200")
    assert (await asyncio.to_thread(ask, b"GET /x HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 404")
    assert (await asyncio.to_thread(ask, b"POST /metrics HTTP/1.0\r\n\r\n")).startswith(
        b"HTTP/1.0 405")
    assert (await asyncio.to_thread(ask, b"\x00garbage")).startswith(b"HTTP/1.0 400")
    assert (await asyncio.to_thread(ask, b"G" * 20000)).startswith(b"HTTP/1.0 400")
    assert "ninep_sessions" in await asyncio.to_thread(fetch, parse_stats_address(address))


async def test_a_loopback_tcp_endpoint(export: Path, sockdir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = sockdir / "9p"
    proc = await asyncio.create_subprocess_exec(
        *NINEP, "--export", str(export), "--listen", f"unix:{sock}",
        "--stats", f"tcp:127.0.0.1:{port}", stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_for_path(proc, sock)
        async with await Client.connect_unix(str(sock), msize=65536) as client:
            await client.attach()
            got = await scrape(f"tcp:127.0.0.1:{port}")
        assert got['ninep_requests_total{op="attach"}'] == 1
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize("address", ["tcp:0.0.0.0:9100", "tcp:192.0.2.1:9100",
                                     "tcp:example.com:9100", "fd:3", "udp:x"])
def test_the_endpoint_is_refused_off_loopback(export: Path, address: str) -> None:
    result = subprocess.run([*NINEP, "--export", str(export), "--listen", "unix:/nonexistent/s",
                             "--stats", address], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ninep: error: --stats")


def test_ninep_stats_without_a_server_says_so(sockdir: Path) -> None:
    result = subprocess.run([*NINEP, "stats", str(sockdir / "none")], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "No such file" in result.stderr
    bad = subprocess.run([*NINEP, "stats", "tcp:10.1.2.3:1"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


async def test_requests_in_flight_and_a_flush(serve, gated) -> None:
    """Counted in process, with a back end that holds statfs at a gate."""
    stats = Stats()
    client = await (await serve(config=SessionConfig(stats=stats), backend=gated)).connect()
    root = await client.attach()
    _, held = client.start(p.Tstatfs(root))
    tag, flushed = client.start(p.Tstatfs(root))
    try:
        await gated.wait_entered(2)
        now = samples(stats.prometheus())
        assert now["ninep_requests_in_flight"] == 2
        assert now['ninep_session_requests_in_flight{session="1"}'] == 2
        assert now.get('ninep_requests_total{op="statfs"}', 0) == 0  # not answered yet
        _, flush = client.start(p.Tflush(tag))
    finally:
        gated.gate.set()
    await held
    await flush
    now = samples(stats.prometheus())
    assert now["ninep_requests_in_flight"] == 0
    assert now['ninep_requests_total{op="statfs"}'] == 2
    assert now['ninep_requests_total{op="flush"}'] == 1
    assert isinstance(await flushed, p.Rstatfs)  # it had started: it answers, then Rflush


async def test_without_stats_nothing_wraps_the_sink(serve) -> None:
    """The default config counts nothing (and the hot path stays as it was)."""
    assert SessionConfig().stats is None
    served = await serve()
    client = await served.connect()
    await client.attach()
    assert all(session._stats is None for session in served.server.sessions)


def test_quantiles_interpolate_within_a_bucket() -> None:
    buckets = [(0.001, 0.0), (0.002, 50.0), (0.004, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.002)
    assert quantile(0.25, buckets) == pytest.approx(0.0015)
    assert quantile(0.75, buckets) == pytest.approx(0.003)
    assert quantile(0.5, [(0.001, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.001, 0.0), (float("inf"), 4.0)]) == 0.001


def test_the_text_round_trips_through_the_viewer() -> None:
    stats = Stats()
    sink_frames: list[bytes] = []

    class Sink:
        capacity = 1 << 16

        def send(self, data: bytes) -> None:
            sink_frames.append(bytes(data))

    counted = stats.watch(p.Twalk.TYPE, Sink())  # type: ignore[arg-type]
    counted.send(p.encode_rlerror(1, errno.ENOENT))
    snap = parse(stats.prometheus())
    assert snap.ops["walk"].requests == 1 and snap.errors[("walk", "ENOENT")] == 1
    assert sink_frames == [p.encode_rlerror(1, errno.ENOENT)]  # passed through unchanged


async def test_a_flushed_queued_request_is_counted_as_flushed(gated) -> None:
    """A request flushed before it started is dropped, through the counting sink."""
    from session_helpers import Direct

    from ninep.server.session import Session
    stats = Stats()
    session = Session(gated, SessionConfig(max_inflight=1, stats=stats))
    direct = Direct(session)
    await direct.ok(p.Tattach(0, p.NOFID, "root", "", 0))
    first = direct.submit(p.encode(p.Tstatfs(0), 1))
    await gated.wait_entered(1)
    queued = direct.submit(p.encode(p.Treadlink(0), 2))
    assert await direct.call(p.Tflush(2), tag=3) == p.Rflush()
    gated.gate.set()
    await first.reply
    assert queued.dropped  # the transport still got its drop
    now = samples(stats.prometheus())
    assert now['ninep_flushed_total{op="readlink"}'] == 1
    assert now['ninep_requests_total{op="readlink"}'] == 1
    assert now['ninep_requests_total{op="statfs"}'] == 1
    await session.close()
    assert samples(stats.prometheus())["ninep_sessions"] == 0
