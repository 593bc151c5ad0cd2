"""Metadata benchmark of the proxy back end: create, stat and unlink files.

    python -m bench.proxy_meta [--files 2000] [--clients 4] [--reps 3]
                               [--guest] [--guest-files 1000] [--guest-reps 1]

**ninep (host).** A ``python -m ninep`` process serves a fresh export on a
Unix socket; ``--clients`` concurrent ``ninep.client`` connections each take
their share of ``--files`` files in a directory of their own and run three
phases: create (Twalk clone + Tlcreate + Tclunk), stat (Twalk + Tgetattr +
Tclunk) and unlink (Tunlinkat).  Targets:

* ``local``: ``--backend local`` (passthrough), the baseline;
* ``proxy``: ``--backend proxy``, ninep starting its own ninep-proxy-helper;
* ``proxy+qemu-helper``: ``--backend proxy --proxy-socket`` to QEMU's
  virtfs-proxy-helper (which serves a single connection, so a pool of one).

Wall time is the whole workload; CPU is the server's plus its helper's
(every thread, from /proc), which is steadier on a shared machine.

**QEMU (guest, with --guest).** The same workload as a shell loop in a
guest (four background loops: ``: >f`` creates, ``[ -e f ]`` stats,
``rm -f`` unlinks; no fork per file), over QEMU's virtio-9p with ``-fsdev
local`` (passthrough) and with ``-fsdev proxy`` to our helper and to QEMU's
helper.  That gives QEMU's own proxy-to-local ratio, the figure ninep's proxy
back end should beat.  (QEMU 7.2 cannot reach ninep over virtio, and
trans=fd adds relay costs of its own, so the two are compared as ratios.)

Everything is printed from one invocation: medians over ``--reps`` runs,
then the ratios and the two goals (proxy <= 1.5x local; below QEMU's
proxy).  The guest's ratio is diluted by the emulated shell loops around each
request, so QEMU and ninep are also compared by the wall time the proxy hop
adds per file.  QEMU's proxy driver also does one request less per unlink:
it removes whatever the name is, where ninep checks the type first (Tunlinkat
on a directory without AT_REMOVEDIR must fail).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.cpu import process_cpu_seconds  # noqa: E402
from ninep.client import Client  # noqa: E402
from ninep.protocol import ninep as p  # noqa: E402
from tests.e2e.servers import stop  # noqa: E402

QEMU_HELPER = "/usr/lib/qemu/virtfs-proxy-helper"
PHASES = ("create", "stat", "unlink")


@dataclass
class Run:
    """One run of the workload: seconds per phase, wall total, server+helper CPU."""

    phases: dict[str, float]
    wall: float
    cpu: float | None = None


@dataclass
class Target:
    name: str
    files: int  # files per run
    runs: list[Run] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [getattr(r, key) if key in ("wall", "cpu") else r.phases.get(key)
                  for r in self.runs]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None


# --- ninep on the host -------------------------------------------------------------------------

def _tree_cpu(pid: int) -> float:
    """CPU seconds of *pid* and its children (ninep and the helpers it started)."""
    total = process_cpu_seconds(pid) or 0.0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(_tree_cpu(int(c)) for c in f.read().split())
    except OSError:
        pass
    return total


class Server:
    """``python -m ninep`` on *export*, listening on a Unix socket."""

    def __init__(self, export: Path, sock: Path, extra: Sequence[str]) -> None:
        self.sock = sock
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ninep", "--export", str(export), "--listen", f"unix:{sock}",
             "--log-level", "warning", *extra], cwd=REPO, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ninep {' '.join(extra)} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        stop(self.proc)


async def _client_phases(client: Client, top: int, index: int, nfiles: int,
                         marks: dict[str, list[float]]) -> None:
    """One client's three phases in its own directory; *marks* gets phase end times."""
    dname = f"c{index}"
    await client.mkdir(top, dname)
    dfid = await client.walk(top, [dname])
    names = [f"file-with-a-longish-name-{i}" for i in range(nfiles)]
    for name in names:
        fid, _ = await client.create(dfid, name, p.DOTL_WRONLY, 0o644)
        await client.clunk(fid)
    marks["create"].append(time.perf_counter())
    for name in names:
        fid = await client.walk(dfid, [name])
        await client.getattr(fid)
        await client.clunk(fid)
    marks["stat"].append(time.perf_counter())
    for name in names:
        await client.unlinkat(dfid, name)
    marks["unlink"].append(time.perf_counter())
    await client.clunk(dfid)
    await client.unlinkat(top, dname, p.AT_REMOVEDIR)


async def workload(sock: Path, nfiles: int, nclients: int) -> Run:
    """The workload over *nclients* connections; phase times end with the slowest client."""
    clients = [await Client.connect_unix(str(sock)) for _ in range(nclients)]
    try:
        tops = [await c.attach() for c in clients]
        marks: dict[str, list[float]] = {ph: [] for ph in PHASES}
        share = [nfiles // nclients + (i < nfiles % nclients) for i in range(nclients)]
        start = time.perf_counter()
        await asyncio.gather(*(_client_phases(c, t, i, n, marks)
                               for i, (c, t, n) in enumerate(zip(clients, tops, share))))
        ends = {ph: max(marks[ph]) for ph in PHASES}
        phases = {"create": ends["create"] - start, "stat": ends["stat"] - ends["create"],
                  "unlink": ends["unlink"] - ends["stat"]}
        return Run(phases, ends["unlink"] - start)
    finally:
        for c in clients:
            await c.close()


def run_host(targets: list[Target], nfiles: int, nclients: int, reps: int, work: Path) -> None:
    """Each rep runs every target once, interleaved, so load drifts hit them alike."""
    qemu_ok = os.access(QEMU_HELPER, os.X_OK)
    setups = {"local": ["--backend", "local"], "proxy": ["--backend", "proxy"]}
    if qemu_ok:
        setups["proxy+qemu-helper"] = ["--backend", "proxy", "--threads", "1"]
    by_name = {name: Target(name, nfiles) for name in setups}
    targets.extend(by_name.values())
    for rep in range(reps + 1):  # rep 0 warms the page cache and the imports up
        for name, extra in setups.items():
            export = Path(tempfile.mkdtemp(dir=work, prefix=f"{name}-"))
            sock = work / f"{name}.sock"
            helper = None
            if name == "proxy+qemu-helper":
                hsock = work / "qemu-helper.sock"
                helper = subprocess.Popen([QEMU_HELPER, "-n", "-p", str(export), "-s", str(hsock),
                                           "-u", "0", "-g", "0"], stdin=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                while not hsock.exists():
                    time.sleep(0.01)
                extra = [*extra, "--proxy-socket", str(hsock)]
            server = Server(export, sock, extra)
            try:
                pids = [server.proc.pid] + ([helper.pid] if helper else [])
                cpu0 = sum(_tree_cpu(pid) for pid in pids)
                run = asyncio.run(workload(sock, nfiles, nclients))
                run.cpu = sum(_tree_cpu(pid) for pid in pids) - cpu0
            finally:
                server.stop()
                if helper is not None:
                    helper.wait(10)
                    os.unlink(hsock)
                sock.unlink(missing_ok=True)
            shutil.rmtree(export)
            if rep:
                by_name[name].runs.append(run)
            print(f"  rep {rep} {name:18} wall {run.wall:6.2f}s cpu {run.cpu:6.2f}s "
                  + " ".join(f"{ph} {run.phases[ph]:.2f}s" for ph in PHASES), flush=True)


# --- QEMU in a guest -----------------------------------------------------------------------------

GUEST_SCRIPT = r"""
n=$((NFILES / 4))
F=file-with-a-longish-name-
phase() {  # phase NAME: the four loops of one phase, in parallel
    for c in 0 1 2 3; do
        (
            cd /mnt/c$c || exit 1
            i=0
            case $1 in
            create) while [ $i -lt $n ]; do : >"$F$i"; i=$((i + 1)); done ;;
            stat) while [ $i -lt $n ]; do [ -e "$F$i" ] || exit 1; i=$((i + 1)); done ;;
            unlink) rm -f "$F"* ;;
            esac
        ) &
    done
    wait
}
mkdir c0 c1 c2 c3
echo PROXYMETA-START
t0=$(now_ns); phase create
t1=$(now_ns); phase stat
t2=$(now_ns); phase unlink
t3=$(now_ns)
rmdir c0 c1 c2 c3
echo "PROXYMETA create=$((t1 - t0)) stat=$((t2 - t1)) unlink=$((t3 - t2))"
"""
_GUEST_RESULT = re.compile(r"PROXYMETA create=(\d+) stat=(\d+) unlink=(\d+)")


class QemuServerCpu(threading.Thread):
    """Host CPU seconds during a guest workload: every QEMU thread but the
    vCPU ("CPU n/TCG", which runs the guest's shell), plus the helper's.  That
    is the 9p server's work, but also QEMU's main loop (virtio, console,
    timers), so its ratios are diluted too.  QEMU is found by a unique
    string of its command line; the workload's start and end are read off
    the console log as it streams."""

    def __init__(self, needle: str, console: Path, helper_pid: int | None) -> None:
        super().__init__(daemon=True)
        self.needle, self.console, self.helper_pid = needle, console, helper_pid
        self.cpu: float | None = None
        self.done = threading.Event()
        self._qemu: int | None = None

    def _find_qemu(self) -> int | None:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"qemu-system" in cmd and self.needle.encode() in cmd:
                    return int(entry)
        return None

    def _sample(self) -> float:
        total = _tree_cpu(self.helper_pid) if self.helper_pid else 0.0
        assert self._qemu is not None
        for task in os.listdir(f"/proc/{self._qemu}/task"):
            try:
                if Path(f"/proc/{self._qemu}/task/{task}/comm").read_text().startswith("CPU "):
                    continue
                total += int(Path(f"/proc/{self._qemu}/task/{task}/schedstat").read_text()
                             .split()[0]) / 1e9
            except (OSError, ValueError):
                pass
        return total

    def run(self) -> None:
        start = None
        while not self.done.is_set():
            if self._qemu is None:
                self._qemu = self._find_qemu()
            try:
                text = self.console.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            if self._qemu is not None:
                if start is None and "PROXYMETA-START" in text:
                    start = self._sample()
                elif start is not None and "PROXYMETA create=" in text:
                    self.cpu = self._sample() - start
                    return
            time.sleep(0.005)


def run_guest_targets(targets: list[Target], nfiles: int, reps: int, work: Path) -> None:
    from tests.e2e.guest import GuestImage, VirtioLocalShare, VirtioProxyShare, run_guest

    image = GuestImage.ensure()
    names = ["qemu-local", "qemu-proxy+ninep-helper", "qemu-proxy+qemu-helper"]
    by_name = {n: Target(n, nfiles) for n in names}
    targets.extend(by_name.values())
    for rep in range(reps):
        for name in names:
            export = Path(tempfile.mkdtemp(dir=work, prefix="guest-"))
            helper = None
            if name == "qemu-local":
                share = VirtioLocalShare(str(export), "passthrough")
            else:
                hsock = work / "guest-helper.sock"
                argv = ([sys.executable, "-m", "ninep.helper"] if "ninep" in name
                        else [QEMU_HELPER])
                helper = subprocess.Popen([*argv, "-n", "-p", str(export), "-s", str(hsock),
                                           "-u", "0", "-g", "0"], cwd=REPO,
                                          stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while not hsock.exists():
                    time.sleep(0.01)
                share = VirtioProxyShare(socket_path=str(hsock))
            console = work / "console.log"
            console.unlink(missing_ok=True)
            sampler = QemuServerCpu(str(export) if helper is None else str(hsock), console,
                                    helper.pid if helper else None)
            sampler.start()
            try:
                res = run_guest(GUEST_SCRIPT, share=share, env={"NFILES": str(nfiles)},
                                timeout=1800, image=image, console_log=console)
            finally:
                sampler.done.set()
                sampler.join(10)
                if helper is not None:
                    helper.terminate()
                    helper.wait(10)
                    Path(work / "guest-helper.sock").unlink(missing_ok=True)
                shutil.rmtree(export, ignore_errors=True)
            m = _GUEST_RESULT.search(res.output)
            if not m:
                print(f"  {name}: guest run failed\n{res.describe()[-3000:]}", flush=True)
                continue
            phases = {ph: int(v) / 1e9 for ph, v in zip(PHASES, m.groups())}
            run = Run(phases, sum(phases.values()), sampler.cpu)
            by_name[name].runs.append(run)
            cpu = "?" if run.cpu is None else f"{run.cpu:6.2f}s"
            print(f"  rep {rep + 1} {name:26} wall {run.wall:6.2f}s cpu {cpu} "
                  + " ".join(f"{ph} {run.phases[ph]:.2f}s" for ph in PHASES), flush=True)


# --- report ----------------------------------------------------------------------------------

def _ratio(a: Target | None, b: Target | None, key: str) -> float | None:
    if a is None or b is None:
        return None
    x, y = a.median(key), b.median(key)
    return x / y if x is not None and y else None


def _added_ms_per_file(a: Target | None, b: Target | None) -> float | None:
    """Wall time the proxy adds per file (create + stat + unlink), in ms."""
    if a is None or b is None:
        return None
    x, y = a.median("wall"), b.median("wall")
    return (x - y) / a.files * 1000 if x is not None and y is not None else None


def report(targets: list[Target]) -> list[str]:
    by = {t.name: t for t in targets}
    lines = ["", "| target | create s | stat s | unlink s | wall s | host CPU s (server+helper) |",
             "|---|---|---|---|---|---|"]
    for t in targets:
        cells = [t.median(k) for k in (*PHASES, "wall", "cpu")]
        lines.append(f"| {t.name} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells)
                     + " |")
    lines.append("")
    fmt = lambda r: "n/a" if r is None else f"{r:.2f}x"  # noqa: E731
    proxy_wall = _ratio(by.get("proxy"), by.get("local"), "wall")
    proxy_cpu = _ratio(by.get("proxy"), by.get("local"), "cpu")
    lines.append(f"ninep proxy / local:              wall {fmt(proxy_wall)}, CPU {fmt(proxy_cpu)}"
                 "   (goal <= 1.50x)")
    for ph in PHASES:
        lines.append(f"  {ph:7} {fmt(_ratio(by.get('proxy'), by.get('local'), ph))}")
    lines.append("ninep proxy+QEMU's helper / local: wall "
                 f"{fmt(_ratio(by.get('proxy+qemu-helper'), by.get('local'), 'wall'))}, CPU "
                 f"{fmt(_ratio(by.get('proxy+qemu-helper'), by.get('local'), 'cpu'))}")
    qemu_ours = _ratio(by.get("qemu-proxy+ninep-helper"), by.get("qemu-local"), "wall")
    qemu_theirs = _ratio(by.get("qemu-proxy+qemu-helper"), by.get("qemu-local"), "wall")
    qemu_theirs_cpu = _ratio(by.get("qemu-proxy+qemu-helper"), by.get("qemu-local"), "cpu")
    if qemu_ours is not None or qemu_theirs is not None:
        qemu_ours_cpu = _ratio(by.get("qemu-proxy+ninep-helper"), by.get("qemu-local"), "cpu")
        lines.append("QEMU proxy / QEMU local (guest):  wall with ninep-proxy-helper "
                     f"{fmt(qemu_ours)}, with virtfs-proxy-helper {fmt(qemu_theirs)}; host CPU "
                     f"(QEMU but its vCPU, + helper) {fmt(qemu_ours_cpu)} and "
                     f"{fmt(qemu_theirs_cpu)}")
        for what, ours, theirs in (("wall", proxy_wall, qemu_theirs),
                                   ("host CPU", proxy_cpu, qemu_theirs_cpu)):
            if ours is not None and theirs is not None:
                verdict = "beats" if ours < theirs else "does NOT beat"
                lines.append(f"{what}: ninep's proxy ratio ({fmt(ours)}) {verdict} QEMU's "
                             f"with its own helper ({fmt(theirs)})")
        # Ratios in the guest are diluted by the emulated shell loops, so also
        # compare what the proxy hop adds per file, in wall time.
        ours_ms = _added_ms_per_file(by.get("proxy"), by.get("local"))
        theirs_ms = _added_ms_per_file(by.get("qemu-proxy+qemu-helper"), by.get("qemu-local"))
        if ours_ms is not None and theirs_ms is not None:
            verdict = "beats" if ours_ms < theirs_ms else "does NOT beat"
            lines.append(f"added per file by the proxy hop: ninep {ours_ms:.3f} ms, QEMU with "
                         f"virtfs-proxy-helper {theirs_ms:.3f} ms: ninep {verdict} QEMU")
    if proxy_wall is not None:
        lines.append(f"goal proxy <= 1.5x local: {'met' if proxy_wall <= 1.5 else 'NOT met'}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000, help="files per run, split over clients")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--guest", action="store_true", help="also measure QEMU's proxy in a guest")
    ap.add_argument("--guest-files", type=int, default=1000)
    ap.add_argument("--guest-reps", type=int, default=1)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ninep-proxymeta-"))
    targets: list[Target] = []
    try:
        print(f"ninep: {args.files} files over {args.clients} clients, {args.reps} reps",
              flush=True)
        run_host(targets, args.files, args.clients, args.reps, work)
        if args.guest:
            print(f"QEMU guest: {args.guest_files} files over 4 loops, {args.guest_reps} reps",
                  flush=True)
            run_guest_targets(targets, args.guest_files, args.guest_reps, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(report(targets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
