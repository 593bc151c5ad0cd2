"""Server CPU time, whole-process and per guest workload (Linux /proc)."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from ninep.testing.process import serving_pid


def process_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds of every thread of *pid* so far (schedstat, ns precision); None if gone.

    For a server started with a pid namespace (ninep's default sandbox),
    *pid* is the supervisor: the serving process is counted instead."""
    if pid is None:
        return None
    pid = serving_pid(pid)
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


class WorkloadCpuSampler:
    """Server CPU seconds per guest workload, read off the console as it streams.

    The workload prints ``BENCH-START name`` and ``BENCH-RESULT name ns``; this
    thread tails the console log and samples the server's CPU time at each, so
    each workload gets the server CPU it cost (serial latency is ~ms).
    """

    _LINE = re.compile(r"^BENCH-(START|RESULT) (\S+)")

    def __init__(self, pid: int, console_log: Path) -> None:
        self.pid = pid
        self.console_log = console_log
        self.cpu: dict[str, float] = {}
        #: name -> [start, end] in perf_counter_ns (CLOCK_MONOTONIC, as the server's own
        #: clock): when each workload ran, to ±20 ms, for bench.vq_trace's per-workload split
        self.windows: dict[str, list[int]] = {}
        self._started: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkloadCpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        pending = ""
        pos = 0
        while True:
            stopping = self._stop.is_set()
            try:
                with open(self.console_log, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos += len(chunk)
            except FileNotFoundError:
                chunk = b""
            pending += chunk.decode(errors="replace").replace("\r", "")
            *lines, pending = pending.split("\n")
            for line in lines:
                m = self._LINE.match(line)
                if m:
                    if m.group(1) == "START":
                        self.windows[m.group(2)] = [time.perf_counter_ns(), 0]
                    elif m.group(2) in self.windows:
                        self.windows[m.group(2)][1] = time.perf_counter_ns()
                    now = process_cpu_seconds(self.pid)
                    if now is None:
                        continue
                    if m.group(1) == "START":
                        self._started[m.group(2)] = now
                    elif m.group(2) in self._started:
                        self.cpu[m.group(2)] = now - self._started.pop(m.group(2))
            if stopping:
                return
            time.sleep(0.02)
