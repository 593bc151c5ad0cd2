"""What confining the server costs per request, measured in one invocation.

    python -m bench.sandbox_cost [--n 2000] [--reps 15] [--out bench/results/]

Two ``python -m ninep`` processes of this tree serve the same export over
vhost-user and a Unix socket, as ``bench.micro`` starts them: *confined*
with every default layer (namespace sandbox, capabilities and
no_new_privs, seccomp ``kill``) and *bare* with all of them off
(``--sandbox none --seccomp none`` and ``--modcaps`` keeping every
capability).  Their batches interleave, the order flipping every rep, so
each rep's confined/bare ratio compares two batches at most one batch apart:
load that drifts on a busy machine hits both alike, and the spread of the
ratios over the reps says how far the figure can be trusted.

Reported per request and transport: the median server CPU µs per request
of each (all server threads, from schedstat; the client excluded), and the
median of the per-rep ratios with their [min–max].  The issue's target is a
ratio of at most 1.03.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.micro import FILE_MIB, SMALL_WRITE, measure_server  # noqa: E402
from bench.report import Summary, markdown_table  # noqa: E402
from ninep import syscalls  # noqa: E402
from ninep.sandbox.caps import CAP_NAMES  # noqa: E402

REQUESTS = ("Tgetattr", "Twalk+Tclunk", "Tread 4 KiB", SMALL_WRITE, "Tread 512 KiB")
CONFINED, BARE = "confined", "bare"


def bare_options() -> list[str]:
    """Every confinement layer off: no sandbox, no filter, every capability kept."""
    every = ",".join(f"+{name}" for name in CAP_NAMES[:syscalls.cap_last_cap() + 1])
    return ["--sandbox", "none", "--seccomp", "none", "--modcaps", every]


def paired_ratios(server: dict[str, dict[str, list[float]]], transport: str,
                  what: str) -> list[float]:
    """confined/bare for each rep (the two batches of a rep ran close together)."""
    confined = server[f"{CONFINED}: {transport}"][what]
    bare = server[f"{BARE}: {transport}"][what]
    return [c / b for c, b in zip(confined, bare, strict=True) if b > 0]


def render(server: dict[str, dict[str, list[float]]], n: int, reps: int) -> str:
    transports = sorted({name.split(": ", 1)[1] for name in server})
    rows = []
    for what in REQUESTS:
        for transport in transports:
            confined = Summary.of(server[f"{CONFINED}: {transport}"][what])
            bare = Summary.of(server[f"{BARE}: {transport}"][what])
            ratios = Summary.of(paired_ratios(server, transport, what))
            if confined is None or bare is None or ratios is None:
                continue
            rows.append([what, transport, f"{bare.median:.1f}", f"{confined.median:.1f}",
                         ratios.cell("{:.3f}")])
    every = [r for what in REQUESTS for t in transports for r in paired_ratios(server, t, what)]
    lines = [f"# What confinement costs ({time.strftime('%Y-%m-%d %H:%M')}, n={n}, "
             f"{reps} interleaved reps)", "",
             "Server CPU µs per request (median over reps), and confined/bare per rep: "
             "median [min–max].", "",
             markdown_table(["request", "transport", "bare µs", "confined µs",
                             "confined / bare"], rows), "",
             f"Over every request and transport: median ratio {statistics.median(every):.3f} "
             f"(target: at most 1.03).", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sandbox_cost",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="requests per batch (512 KiB: n/20)")
    ap.add_argument("--reps", type=int, default=15, help="interleaved reps (default: 15)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ninep-sandbox-cost-", dir="/tmp"))
    try:
        export = work / "export"
        export.mkdir()
        with open(export / "data", "wb") as f:
            for _ in range(FILE_MIB):
                f.write(os.urandom(1 << 20))
        servers = [(CONFINED, None, ()), (BARE, None, bare_options())]
        server = asyncio.run(measure_server(export, work, args.n, args.reps, servers,
                                            requests=REQUESTS))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(server, args.n, args.reps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sandbox_cost.md").write_text(text)
    (args.out / "sandbox_cost.json").write_text(json.dumps(server, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
