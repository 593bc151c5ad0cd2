"""Where a vhost-user request's time goes: ninep with its virtqueue traced.

    python -m bench.vq_trace OUT.json -- [ninep options]      # serve, traced
    python -m bench.vq_trace --summary OUT.json               # print the breakdown

The server is ninep itself (or the floor back end with ``--floor``) with
four methods of :class:`~ninep.transport.vhost.virtqueue.SplitVirtqueue` wrapped
to stamp ``perf_counter_ns`` at each stage of every request, so the hot
path of a normal ``ninep`` process carries no tracing code at all:

* **kick**: ninep woke on the kick eventfd, or a polling pass found the
  chain (``--vhost-poll-us``);
* **walk**: the chain was walked and handed to the session;
* **reply**: the session committed the reply into guest memory;
* **call**: used.idx was published and the call eventfd written (or the
  notification was suppressed).

Between one request's *call* and the next request's *kick* ninep is idle:
that is the time of the guest, TCG and QEMU's own main loop (which turns
the call eventfd into an interrupt). At exit (SIGTERM) the stamps go to
OUT.json; ``--summary`` prints per-stage medians and the share of wall
time each stage takes.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_now = time.perf_counter_ns


class Trace:
    """Stamps per request, keyed by (queue, head) while in flight."""

    def __init__(self) -> None:
        self.kicks: list[int] = []  # arrivals: kick read, or a polling pass that found work
        self.calls: list[int] = []
        self.requests: list[tuple[int, int, int, int]] = []  # kick, walk, reply, call-or-0
        self._open: dict[tuple[int, int], list[int]] = {}
        self._last_kick = 0
        self._unpublished: list[list[int]] = []

    def install(self) -> None:
        from ninep.transport.vhost import virtqueue as vq

        trace = self
        cls = vq.SplitVirtqueue
        on_kick, poll, dispatch = cls._on_kick, cls._poll, cls._dispatch
        complete, flush = cls._complete, cls._flush_used

        def _on_kick(self: Any) -> None:
            trace._last_kick = _now()
            on_kick(self)

        def _poll(self: Any) -> None:
            trace._last_kick = _now()  # if this pass finds a chain, it arrived now
            poll(self)

        def _dispatch(self: Any, head: int) -> None:
            arrival = trace._last_kick or _now()
            if not trace.kicks or trace.kicks[-1] != arrival:
                trace.kicks.append(arrival)
            trace._open[(id(self), head)] = [arrival, _now(), 0, 0]
            dispatch(self, head)

        def _complete(self: Any, head: int, length: int, generation: int) -> None:
            rec = trace._open.pop((id(self), head), None)
            if rec is not None:
                rec[2] = _now()
                trace._unpublished.append(rec)
            complete(self, head, length, generation)

        def _flush_used(self: Any) -> None:
            before = self.stats.calls
            flush(self)
            t = _now()
            if self.stats.calls != before:
                trace.calls.append(t)
            for rec in trace._unpublished:
                rec[3] = t
                trace.requests.append(tuple(rec))  # type: ignore[arg-type]
            trace._unpublished.clear()

        cls._on_kick, cls._poll, cls._dispatch, cls._complete, cls._flush_used = (  # type: ignore[method-assign]
            _on_kick, _poll, _dispatch, _complete, _flush_used)

    def save(self, out: Any) -> None:
        out.write(json.dumps({"kicks": self.kicks, "calls": self.calls, "requests": self.requests}))


def summarise(path: Path) -> str:
    """The whole trace, then each workload's window if guest_compare saved them
    (``trace-*.windows.json`` beside it)."""
    data = json.loads(path.read_text())
    out = [_breakdown(data["requests"], data["kicks"], data["calls"])]
    windows_file = path.with_suffix(".windows.json")
    if windows_file.exists():
        for name, (t0, t1) in json.loads(windows_file.read_text()).items():
            if not t1:
                continue
            inside = [r for r in data["requests"] if t0 <= r[0] <= t1]
            kicks = [k for k in data["kicks"] if t0 <= k <= t1]
            calls = [c for c in data["calls"] if t0 <= c <= t1]
            out.append(f"-- {name} ({(t1 - t0) / 1e9:.2f} s)\n" + _breakdown(inside, kicks, calls))
    return "\n".join(out)


def _breakdown(requests: list[list[int]], kicks: list[int], calls: list[int]) -> str:
    data = {"kicks": kicks, "calls": calls}
    reqs = [r for r in requests if r[3]]
    if not reqs:
        return "no requests traced"
    us = 1e-3
    walk = [(r[1] - r[0]) * us for r in reqs]
    serve = [(r[2] - r[1]) * us for r in reqs]
    publish = [(r[3] - r[2]) * us for r in reqs]
    # Idle gaps: from a call to the next kick (the guest, TCG and QEMU's main loop).
    kicks = sorted(data["kicks"])
    calls = sorted(data["calls"])
    gaps = []
    j = 0
    for c in calls:
        while j < len(kicks) and kicks[j] <= c:
            j += 1
        if j < len(kicks):
            gaps.append((kicks[j] - c) * us)
    span = (max(r[3] for r in reqs) - min(r[0] for r in reqs)) * us
    busy = sum((r[3] - r[0]) * us for r in reqs)

    def row(name: str, xs: list[float]) -> str:
        xs = sorted(xs)
        p90 = xs[int(0.9 * (len(xs) - 1))]
        return f"{name:<34} {statistics.median(xs):10.1f} {p90:10.1f} {sum(xs) / 1e3:10.1f}"

    lines = [f"{len(reqs)} requests, {len(kicks)} arrivals, {len(calls)} calls, span {span / 1e6:.2f} s",
             f"{'stage (µs per request)':<34} {'median':>10} {'p90':>10} {'total ms':>10}",
             row("arrival -> chain walked", walk),
             row("walked -> reply committed", serve),
             row("committed -> used published+call", publish)]
    if gaps:
        lines.append(row("call -> next arrival (guest+QEMU)", gaps))
    lines.append(f"ninep busy with a request {100 * busy / span:.1f}% of the span "
                 "(overlapping requests count once each)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--summary"]:
        for p in argv[1:]:
            print(f"== {p}\n{summarise(Path(p))}")
        return 0
    if len(argv) < 2 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    rest = argv[2:]
    floor = "--floor" in rest
    rest = [a for a in rest if a != "--floor"]
    trace = Trace()
    trace.install()
    # Opened now: ninep's sandbox hides the host's file system before the server exits.
    out_file = open(out, "w")
    from ninep import cli

    factory: Callable[[Any], Any] | None = None
    if floor:
        from bench.floor_backend import FloorBackend
        factory = lambda args: FloorBackend(seed=args.export)  # noqa: E731
    try:
        return cli.main(rest, backend_factory=factory)
    finally:
        with out_file:
            trace.save(out_file)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
