"""Summarise a py-spy profile of the server (``py-spy record --format raw``).

    python -m bench.profile_summary bench/results/profile-ninep-rep0.txt [--top 25]

py-spy counts a thread as busy whenever it is not asleep, so samples whose
innermost frame is the event loop itself (uvloop's C code: ``epoll_wait``
with nothing to do, and its own bookkeeping) are reported apart from the
rest.  The rest is split into the server's own stages: reading frames,
dispatching, the back end's host syscalls (the files in ``ninep/backends``),
and sending replies.  A line is then ``share of busy samples  function``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

#: Innermost frames that mean "in the event loop's own C code".
_LOOP_FRAMES = ("Runner.run (", "run (uvloop")
#: Stage of a stack: the first of these found from the innermost frame outwards.
_STAGES = (
    ("send the reply", ("StreamConnection._deliver", "BufferSink.send", "VirtqueueReplySink",
                        "SplitVirtqueue._flush_used")),
    ("host syscalls (back end)", ("ninep/backends/",)),
    ("read and cut frames", ("StreamConnection.buffer_updated", "process_avail")),
    ("decode, dispatch, encode", ("ninep/server/", "ninep/protocol/")),
)


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, needles in _STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other Python"


def summarise(path: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    loop = busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if frames[-1].startswith(_LOOP_FRAMES):
            loop += n
            continue
        busy += n
        own[frames[-1]] += n
        stages[stage_of(frames)] += n
    total = loop + busy
    if not busy:
        return f"{path}: no busy samples ({total} in all)"
    out = [f"{path.name}: {total} samples; {100 * loop / total:.0f}% in the event loop's own "
           f"C code (epoll_wait, bookkeeping), {busy} busy samples:", "", "by stage:"]
    out += [f"  {100 * n / busy:5.1f}%  {stage}" for stage, n in stages.most_common()]
    out += ["", f"top {top} functions (own samples):"]
    out += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path, nargs="+")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    print("\n\n".join(summarise(p, args.top) for p in args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
