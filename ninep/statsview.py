"""``ninep stats ADDR [--watch]``: a running server's statistics, for a person.

It fetches the same Prometheus text a scraper reads from the server's
``--stats`` endpoint, and prints it as a table: once, or like ``top``,
refreshed every ``--interval`` seconds with rates and latencies of the last
interval.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NoReturn

from .transport.metrics import parse_stats_address
from .transport.stream import ListenAddress

_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_CLEAR = "\x1b[H\x1b[2J"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


@dataclass
class Op:
    requests: float = 0
    errors: float = 0
    #: (upper bound in seconds, cumulative count), +Inf last.
    buckets: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Snapshot:
    """What one scrape said."""

    ops: dict[str, Op]
    errors: dict[tuple[str, str], float]
    read_bytes: float
    written_bytes: float
    sessions: list[tuple[str, float, float]]  # (session, fids, requests in flight)
    in_flight: float
    start_time: float
    pid: int
    taken: float


def fetch(address: ListenAddress, timeout: float = 5.0) -> str:
    """GET /metrics from the server's statistics endpoint."""
    if address.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = address.path
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET)
        target = (address.host, address.port)
    with sock:
        sock.settimeout(timeout)
        sock.connect(target)  # type: ignore[arg-type]
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: ninep\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 200 " not in status + " ":
        raise OSError(f"the server answered {status or 'nothing'}")
    return body.decode()


def parse(text: str, taken: float | None = None) -> Snapshot:
    """The samples ninep's endpoint writes, read back."""
    ops: dict[str, Op] = defaultdict(Op)
    errors: dict[tuple[str, str], float] = {}
    plain: dict[str, float] = {}
    sessions: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or line.startswith("#"):
            continue
        name, labels_text, value_text = match.groups()
        labels = dict(_LABEL.findall(labels_text or ""))
        value = float(value_text)
        if name == "ninep_requests_total":
            ops[labels["op"]].requests = value
        elif name == "ninep_errors_total":
            errors[labels["op"], labels["errno"]] = value
            ops[labels["op"]].errors += value
        elif name == "ninep_request_duration_seconds_bucket":
            ops[labels["op"]].buckets.append((float(labels["le"]), value))
        elif name == "ninep_session_fids":
            sessions[labels["session"]][0] = value
        elif name == "ninep_session_requests_in_flight":
            sessions[labels["session"]][1] = value
        elif not labels:
            plain[name] = value
    return Snapshot(dict(ops), errors, plain.get("ninep_read_bytes_total", 0),
                    plain.get("ninep_written_bytes_total", 0),
                    [(s, v[0], v[1]) for s, v in sessions.items()],
                    plain.get("ninep_requests_in_flight", 0),
                    plain.get("ninep_start_time_seconds", 0),
                    int(plain.get("ninep_pid", 0)), time.time() if taken is None else taken)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The *q* quantile (seconds) of a cumulative histogram, interpolated in its
    bucket as Prometheus's histogram_quantile does; None with no samples."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bound: say that bound
            width = count - below
            return lower + (bound - lower) * ((rank - below) / width if width else 1.0)
        lower, below = bound, count
    return lower


def _difference(now: Snapshot, before: Snapshot | None) -> dict[str, Op]:
    """Per-op counts over the interval since *before* (everything, without one)."""
    if before is None:
        return now.ops
    out = {}
    for name, op in now.ops.items():
        old = before.ops.get(name, Op())
        old_buckets = dict(old.buckets)
        out[name] = Op(op.requests - old.requests, op.errors - old.errors,
                       [(b, c - old_buckets.get(b, 0)) for b, c in op.buckets])
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _uptime(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + time.strftime("%H:%M:%S", time.gmtime(rest))


def render(now: Snapshot, before: Snapshot | None, where: str) -> str:
    """A screenful: totals, then one row per operation, errors, sessions.

    With *before*, counts are of the interval since it (per second), and the
    latencies are of that interval's requests only.
    """
    interval = now.taken - before.taken if before is not None else 0.0
    ops = _difference(now, before)
    fids = sum(s[1] for s in now.sessions)
    lines = [(f"ninep pid {now.pid} at {where}   up {_uptime(now.taken - now.start_time)}   "
              f"sessions {len(now.sessions)}   fids {fids:.0f}   in flight {now.in_flight:.0f}")]
    if before is not None and interval > 0:
        lines.append(f"read {_size((now.read_bytes - before.read_bytes) / interval)}/s   "
                     f"written {_size((now.written_bytes - before.written_bytes) / interval)}/s"
                     f"   (last {interval:.1f}s; totals {_size(now.read_bytes)} read, "
                     f"{_size(now.written_bytes)} written)")
        count_head = "req/s"
    else:
        lines.append(f"read {_size(now.read_bytes)}   written {_size(now.written_bytes)}")
        count_head = "requests"
    lines.append("")
    lines.append(f"{'op':<12}{count_head:>10}{'errors':>9}{'p50':>10}{'p90':>10}{'p99':>10}")
    rows = sorted(ops.items(), key=lambda item: (-item[1].requests, item[0]))
    for name, op in rows:
        if op.requests <= 0 and before is not None:
            continue
        count = f"{op.requests / interval:.1f}" if before is not None and interval > 0 \
            else f"{op.requests:.0f}"
        lines.append(f"{name:<12}{count:>10}{op.errors:>9.0f}"
                     + "".join(f"{_duration(quantile(q, op.buckets)):>10}"
                               for q in (0.5, 0.9, 0.99)))
    if now.errors:
        lines.append("")
        lines.append("errors (total): " + ", ".join(
            f"{op} {err} {n:.0f}"
            for (op, err), n in sorted(now.errors.items(), key=lambda e: -e[1])))
    if now.sessions:
        lines.append("")
        lines.append(f"{'session':<10}{'fids':>8}{'in flight':>11}")
        lines += [f"{s:<10}{f:>8.0f}{busy:>11.0f}" for s, f, busy in now.sessions]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ninep stats",
                 description="Show the statistics of a ninep server started with --stats ADDR.")
    ap.add_argument("address", metavar="ADDR",
                    help="the server's --stats address: unix:PATH (or a path) or tcp:HOST:PORT")
    ap.add_argument("--watch", action="store_true",
                    help="refresh like top: rates and latencies of each interval (Ctrl-C ends)")
    ap.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                    help="seconds between refreshes with --watch (default: 2)")
    ap.add_argument("--count", type=int, default=0, metavar="N",
                    help="with --watch, stop after N refreshes (default: 0, never)")
    return ap


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        address = parse_stats_address(args.address)
        if args.interval <= 0:
            raise ValueError(f"--interval must be positive, not {args.interval}")
    except ValueError as exc:
        print(f"ninep stats: error: {str(exc).replace('--stats', 'ADDR', 1)}", file=sys.stderr)
        return 2
    try:
        if not args.watch:
            sys.stdout.write(render(parse(fetch(address)), None, str(address)))
            return 0
        before: Snapshot | None = None
        shown = 0
        while True:
            now = parse(fetch(address))
            sys.stdout.write(_CLEAR + render(now, before, str(address)))
            sys.stdout.flush()
            before = now
            shown += 1
            if args.count and shown >= args.count:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"ninep stats: error: {address}: {exc.strerror or exc}", file=sys.stderr)
        return 1


__all__ = ["fetch", "main", "parse", "quantile", "render"]
