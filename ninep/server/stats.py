"""Live statistics of a running server, in the Prometheus text format.

Opt-in (``--stats``): a session whose config carries a :class:`Stats` wraps
each request's reply sink in a :class:`_CountingSink`, which notes the
operation and start time and, when the reply goes out, its latency, its
errno (an Rlerror) and the bytes an Rread or Rwrite moved.  Nothing else on
the hot path: the gauges (sessions, fids, requests in flight) are read from
the live sessions only when someone asks.
"""

from __future__ import annotations

import errno
import os
import time
from bisect import bisect_left
from typing import TYPE_CHECKING

from ..protocol import framing
from ..protocol import ninep as p
from .sink import ReplySink

if TYPE_CHECKING:
    from .session import Session

#: Upper bounds of the latency histogram's buckets, in seconds (then +Inf).
BUCKETS_S = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
             0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKETS_NS = tuple(round(b * 1e9) for b in BUCKETS_S)
_RLERROR, _RREAD, _RWRITE = p.Rlerror.TYPE, p.Rread.TYPE, p.Rwrite.TYPE


def op_name(msgtype: int) -> str:
    """``Tgetattr`` -> ``getattr``; an unknown type -> ``type_N``."""
    name = p.NAMES.get(msgtype)
    return name[1:].lower() if name else f"type_{msgtype}"


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


class OpStats:
    """The counters of one 9P operation."""

    __slots__ = ("buckets", "errors", "flushed", "requests", "sum_ns")

    def __init__(self) -> None:
        self.requests = 0
        self.errors: dict[int, int] = {}
        self.flushed = 0
        self.buckets = [0] * (len(_BUCKETS_NS) + 1)
        self.sum_ns = 0


class Stats:
    """Counters over every session of this process."""

    def __init__(self) -> None:
        self.ops: dict[int, OpStats] = {}
        self.bytes_read = 0
        self.bytes_written = 0
        self.started = time.time()
        self._sessions: dict[Session, int] = {}
        self._next_session = 1

    # --- what sessions call ------------------------------------------------------------

    def add_session(self, session: Session) -> None:
        self._sessions[session] = self._next_session
        self._next_session += 1

    def remove_session(self, session: Session) -> None:
        self._sessions.pop(session, None)

    def watch(self, msgtype: int, sink: ReplySink) -> ReplySink:
        """*sink*, counting the request when its reply is sent."""
        op = self.ops.get(msgtype)
        if op is None:
            op = self.ops[msgtype] = OpStats()
        return _CountingSink(self, op, sink)

    # --- what readers call ----------------------------------------------------------------

    def sessions(self) -> list[tuple[int, int, int]]:
        """(session number, fids open, requests in flight) of each connected session."""
        return [(number, len(session.fids), session.inflight)
                for session, number in self._sessions.items()]

    def prometheus(self) -> str:
        """Everything, in the Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        ops = sorted(((op_name(t), s) for t, s in self.ops.items()), key=lambda x: x[0])
        family("ninep_requests_total", "counter", "9P requests answered, by operation.")
        out += [f'ninep_requests_total{{op="{name}"}} {s.requests}' for name, s in ops]
        family("ninep_errors_total", "counter", "Requests answered with Rlerror, by errno.")
        out += [f'ninep_errors_total{{op="{name}",errno="{errno_name(e)}"}} {n}'
                for name, s in ops for e, n in sorted(s.errors.items())]
        family("ninep_flushed_total", "counter", "Requests ended by a Tflush or a disconnect.")
        out += [f'ninep_flushed_total{{op="{name}"}} {s.flushed}' for name, s in ops if s.flushed]
        family("ninep_read_bytes_total", "counter", "File bytes sent in Rread replies.")
        out.append(f"ninep_read_bytes_total {self.bytes_read}")
        family("ninep_written_bytes_total", "counter", "File bytes acknowledged by Rwrite.")
        out.append(f"ninep_written_bytes_total {self.bytes_written}")
        family("ninep_request_duration_seconds", "histogram",
               "Time from a request's arrival to its reply.")
        for name, s in ops:
            cumulative = 0
            for bound, n in zip((*map(repr, BUCKETS_S), "+Inf"), s.buckets, strict=True):
                cumulative += n
                out.append(f'ninep_request_duration_seconds_bucket{{op="{name}",le="{bound}"}} '
                           f"{cumulative}")
            out.append(f'ninep_request_duration_seconds_sum{{op="{name}"}} {s.sum_ns / 1e9!r}')
            out.append(f'ninep_request_duration_seconds_count{{op="{name}"}} {cumulative}')
        sessions = self.sessions()
        family("ninep_sessions", "gauge", "Sessions (connections, vhost-user devices) open now.")
        out.append(f"ninep_sessions {len(sessions)}")
        family("ninep_requests_in_flight", "gauge", "Requests read but not yet answered.")
        out.append(f"ninep_requests_in_flight {sum(s[2] for s in sessions)}")
        family("ninep_session_fids", "gauge", "Fids open, per session.")
        out += [f'ninep_session_fids{{session="{n}"}} {fids}' for n, fids, _ in sessions]
        family("ninep_session_requests_in_flight", "gauge", "Requests in flight, per session.")
        out += [f'ninep_session_requests_in_flight{{session="{n}"}} {busy}'
                for n, _, busy in sessions]
        family("ninep_start_time_seconds", "gauge", "When this server started (Unix time).")
        out.append(f"ninep_start_time_seconds {self.started!r}")
        family("ninep_pid", "gauge", "The server's process id.")
        out.append(f"ninep_pid {os.getpid()}")
        return "\n".join(out) + "\n"


class _CountingSink(ReplySink):
    """A reply sink that counts its request into :class:`Stats` on the way out."""

    __slots__ = ("_op", "_sink", "_start", "_stats", "capacity")

    def __init__(self, stats: Stats, op: OpStats, sink: ReplySink) -> None:
        self._stats = stats
        self._op = op
        self._sink = sink
        self.capacity = sink.capacity
        self._start = time.perf_counter_ns()

    def _done(self) -> None:
        op = self._op
        elapsed = time.perf_counter_ns() - self._start
        op.requests += 1
        op.sum_ns += elapsed
        op.buckets[bisect_left(_BUCKETS_NS, elapsed)] += 1

    def send(self, data: bytes | bytearray | memoryview) -> None:
        kind = framing.reply_type(data)
        if kind == _RLERROR:
            code = framing.reply_word(data)
            errors = self._op.errors
            errors[code] = errors.get(code, 0) + 1
        elif kind == _RWRITE:
            self._stats.bytes_written += framing.reply_word(data)
        elif kind == _RREAD:
            self._stats.bytes_read += framing.rread_count(len(data))
        self._done()
        self._sink.send(data)

    def reserve(self, size: int) -> list[memoryview]:
        return self._sink.reserve(size)

    def commit(self, length: int) -> None:
        # Only Rread is built in reserved buffers.
        self._stats.bytes_read += framing.rread_count(length)
        self._done()
        self._sink.commit(length)

    def drop(self) -> None:
        self._op.flushed += 1
        self._done()
        self._sink.drop()


__all__ = ["BUCKETS_S", "OpStats", "Stats", "errno_name", "op_name"]
