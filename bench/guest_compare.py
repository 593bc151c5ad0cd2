"""Real-guest benchmark: ninep against diod and QEMU's built-in virtio-9p.

    python -m bench.guest_compare --size-mib 256 --reps 3 --out bench/results/

Boots the e2e guest (tests/e2e/guest.py, TCG, 1 vCPU) once per (server,
repetition) and runs every workload of ``bench/workloads.sh`` in it, timed
inside the guest. Servers run interleaved (the order rotates each
repetition) so that load from elsewhere on the machine hits them alike;
only ratios within one invocation mean anything. Writes ``guest_compare.md``
(tables), ``guest_compare.json`` (every run) and ``guest_compare.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # "tests.e2e" is imported from the source tree
    sys.path.insert(0, str(REPO))

from bench.report import Summary, fmt_ratio, markdown_table, ratio, ratio_chart  # noqa: E402
from bench.cpu import WorkloadCpuSampler, process_cpu_seconds  # noqa: E402
from bench.profile_summary import summarise as summarise_profile  # noqa: E402
from bench.servers import COMPARISONS, Target, all_targets  # noqa: E402
from tests.e2e.guest import GuestImage, run_guest  # noqa: E402

WORKLOAD_SCRIPT = Path(__file__).with_name("workloads.sh")
WORKLOADS = ("seq_write", "seq_read", "rand4k", "metadata", "listdir", "parallel", "untar")
_RESULT = re.compile(r"^BENCH-RESULT (\S+) (\d+)\s*$", re.M)


@dataclasses.dataclass(frozen=True)
class Params:
    size_mib: int
    meta_files: int
    list_files: int
    rand_ops: int
    untar_files: int
    workloads: tuple[str, ...]

    def env(self) -> dict[str, str]:
        return {"BENCH_SIZE_MIB": str(self.size_mib), "BENCH_META_FILES": str(self.meta_files),
                "BENCH_LIST_FILES": str(self.list_files), "BENCH_RAND_OPS": str(self.rand_ops),
                "BENCH_WORKLOADS": " ".join(self.workloads)}


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str


def metrics(params: Params) -> list[Metric]:
    """The table's rows, in order, for the workloads that run."""
    rows = {
        "seq_write": [Metric("seq_write", f"seq write {params.size_mib} MiB (dd bs=1M)", "s")],
        "seq_read": [Metric("seq_read", f"seq read {params.size_mib} MiB (dd bs=1M)", "s")],
        "rand4k": [Metric("rand4k", "4 KiB read QD1, shell loop subtracted", "µs/op"),
                   Metric("rand4k_raw", "4 KiB read QD1, raw (dd per op)", "µs/op")],
        "metadata": [Metric("meta_create", f"create {params.meta_files} files", "s"),
                     Metric("meta_stat", f"stat {params.meta_files} files (ls -l)", "s"),
                     Metric("meta_list", f"list {params.meta_files} files (glob)", "s"),
                     Metric("meta_unlink", f"unlink {params.meta_files} files", "s"),
                     Metric("metadata", "metadata total", "s")],
        "listdir": [Metric("listdir", f"list a {params.list_files}-entry dir (glob)", "s")],
        "parallel": [Metric("par_write", f"4 processes write {params.size_mib} MiB (bs=256k)", "s"),
                     Metric("par_read", f"4 processes read {params.size_mib} MiB (bs=256k)", "s"),
                     Metric("par_meta", f"4 processes create+stat+unlink {params.meta_files} files", "s")],
        "untar": [Metric("untar", f"untar {params.untar_files} mixed files", "s")],
    }
    return [m for w in params.workloads for m in rows[w]]


def derive(raw: dict[str, int], params: Params) -> dict[str, float]:
    """Guest nanoseconds -> the metrics of the table (seconds, µs per op)."""
    out = {k: v / 1e9 for k, v in raw.items() if k not in ("rand4k_raw", "rand4k_cal")}
    if "rand4k_raw" in raw and "rand4k_cal" in raw:
        out["rand4k_raw"] = raw["rand4k_raw"] / params.rand_ops / 1e3
        out["rand4k"] = (raw["rand4k_raw"] - raw["rand4k_cal"]) / params.rand_ops / 1e3
    meta = [raw.get(k) for k in ("meta_create", "meta_stat", "meta_list", "meta_unlink")]
    if all(v is not None for v in meta):
        out["metadata"] = sum(meta) / 1e9  # type: ignore[arg-type]
    return out


def workload_cpu(cpu: dict[str, float]) -> dict[str, float]:
    """Server CPU seconds per timed step -> per table metric (metadata summed)."""
    out = {k: v for k, v in cpu.items() if k not in ("rand4k_raw", "rand4k_cal")}
    if "rand4k_raw" in cpu:
        out["rand4k"] = cpu["rand4k_raw"]
    meta = [cpu.get(k) for k in ("meta_create", "meta_stat", "meta_list", "meta_unlink")]
    if all(v is not None for v in meta):
        out["metadata"] = sum(meta)  # type: ignore[arg-type]
    return out


# --- host-side preparation ---------------------------------------------------------------

def make_tar(path: Path, nfiles: int, seed: int = 9) -> int:
    """A tar of *nfiles* files of mixed sizes in nested directories; returns bytes of data.

    Sizes: 70% up to 4 KiB, 25% up to 64 KiB, 5% up to 512 KiB, as a source tree might be.
    """
    rng = random.Random(seed)
    total = 0
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(nfiles):
            r = rng.random()
            size = rng.randint(0, 4096) if r < 0.70 else rng.randint(4096, 65536) if r < 0.95 \
                else rng.randint(65536, 524288)
            info = tarfile.TarInfo(f"src/d{i % 37:02d}/s{i % 5}/file{i:05d}.dat")
            info.size = size
            info.mtime = 1_700_000_000
            info.mode = 0o644
            data = rng.randbytes(size)
            total += size
            tar.addfile(info, io.BytesIO(data))
    return total


def populate(export: Path, params: Params, tar: Path) -> None:
    """What the workloads expect to find: list/ with N files and src.tar."""
    if "listdir" in params.workloads:
        d = export / "list"
        d.mkdir()
        for i in range(params.list_files):
            os.close(os.open(d / f"entry{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    if "untar" in params.workloads:
        shutil.copyfile(tar, export / "src.tar")


def count_files(top: Path) -> int:
    """Regular files under *top*, leaving out mapped-file's .virtfs_metadata stores."""
    n = 0
    for _, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != ".virtfs_metadata"]
        n += len(files)
    return n


def host_page_cache_read(path: Path, reps: int = 3) -> float | None:
    """MiB/s of reading *path* from the host page cache (1 MiB preadv), best of *reps*."""
    if not path.exists():
        return None
    buf = bytearray(1 << 20)
    best = 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for _ in range(reps):
            t0 = time.perf_counter()
            off = 0
            while n := os.preadv(fd, [buf], off):
                off += n
            best = max(best, size / (1 << 20) / (time.perf_counter() - t0))
    finally:
        os.close(fd)
    return best


# --- running -----------------------------------------------------------------------------

@dataclasses.dataclass
class RunRecord:
    target: str
    rep: int
    ok: bool
    metrics: dict[str, float]
    server_cpu_s: float | None
    boot_s: float | None
    wall_s: float
    host_read_mib_s: float | None = None
    error: str = ""
    #: server CPU seconds spent during each timed workload (metric keys)
    workload_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)


def run_one(target: Target, rep: int, params: Params, image: GuestImage, tar: Path, work: Path,
            out: Path, memory_mb: int, timeout: float, profile: bool, trace_vhost: bool = False) -> RunRecord:
    if target.skip_workloads:
        params = dataclasses.replace(
            params, workloads=tuple(w for w in params.workloads if w not in target.skip_workloads))
    export = Path(tempfile.mkdtemp(prefix="export-", dir=work))
    sockdir = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))  # Unix socket paths stay short
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{re.sub(r'[^A-Za-z0-9]+', '_', target.name)}-rep{rep}"
    try:
        populate(export, params, tar)
        trace = out / f"trace-{tag}.json" if trace_vhost and target.kind == "vhost" else None
        with target.start(export, sockdir, logs / f"{tag}.server.log", trace) as running:
            spy = _start_py_spy(running.pid, out / f"profile-{tag}.txt") if profile and running.pid else None
            console = logs / f"{tag}.console.log"
            console.unlink(missing_ok=True)
            sampler = WorkloadCpuSampler(running.pid, console) if running.pid else contextlib.nullcontext()
            cpu0 = process_cpu_seconds(running.pid)
            with sampler:
                res = run_guest(WORKLOAD_SCRIPT.read_text(), share=running.share, env=params.env(),
                                timeout=timeout, image=image, memory_mb=memory_mb,
                                qemu=running.qemu, console_log=console)
            cpu1 = process_cpu_seconds(running.pid)
            if trace is not None and isinstance(sampler, WorkloadCpuSampler):
                trace.with_suffix(".windows.json").write_text(json.dumps(sampler.windows))
            if spy is not None:  # py-spy writes its stacks on SIGINT
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=120)
                if (out / f"profile-{tag}.txt").exists():
                    print(summarise_profile(out / f"profile-{tag}.txt", top=15))
        raw = {k: int(v) for k, v in _RESULT.findall(res.output)}
        ok = res.ok and "BENCH-DONE" in res.output
        host_read = None
        if ok and target.name == "ninep" and "seq_read" in params.workloads:
            host_read = host_page_cache_read(export / "seq.dat")
        if ok and "untar" in params.workloads:
            n = count_files(export / "untar")
            if n != params.untar_files:
                ok = False
                res.output += f"\nuntar left {n} files, expected {params.untar_files}"
        return RunRecord(
            target.name, rep, ok, derive(raw, params),
            None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            res.boot_time, res.duration, host_read,
            "" if ok else _failure_summary(res),
            workload_cpu(sampler.cpu) if isinstance(sampler, WorkloadCpuSampler) else {})
    finally:
        shutil.rmtree(export, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def _failure_summary(res) -> str:
    """The lines of a failed run worth showing: check failures and the console tail."""
    tail = "\n".join(res.output.strip().splitlines()[-15:])
    return f"    {res.describe().splitlines()[0]}\n    --- console tail ---\n{tail}"


def _start_py_spy(pid: int, raw: Path) -> subprocess.Popen[bytes] | None:
    """py-spy record on the server until the workloads end, as collapsed stacks
    (``--format raw``: a flame graph tool reads them, bench.profile_summary sums them)."""
    if shutil.which("py-spy") is None:
        print("  py-spy not installed (pip install py-spy): no profile", file=sys.stderr)
        return None
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "200",
                             "--format", "raw", "--output", str(raw), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_all(targets: Sequence[Target], params: Params, reps: int, out: Path, memory_mb: int,
            timeout: float, profile: bool, variant_reps: int = 1, log=print,
            trace_vhost: bool = False) -> list[RunRecord]:
    image = GuestImage.ensure()
    work = Path(tempfile.mkdtemp(prefix="ninep-bench-", dir="/var/tmp"))
    records: list[RunRecord] = []
    try:
        tar = work / "src.tar"
        if "untar" in params.workloads:
            make_tar(tar, params.untar_files)
        for rep in range(reps):
            k = rep % len(targets)
            for target in [*targets[k:], *targets[:k]]:  # rotate: no server always goes first
                if target.is_variant and target.pythonpath is None and rep >= variant_reps:
                    continue
                t0 = time.monotonic()
                rec = run_one(target, rep, params, image, tar, work, out, memory_mb, timeout,
                              profile and target.name in ("ninep", "ninep-vhost"), trace_vhost)
                records.append(rec)
                status = "ok" if rec.ok else "FAILED"
                log(f"  rep {rep + 1}/{reps} {target.name:<22} {status} in {time.monotonic() - t0:5.0f}s"
                    + (f" (server CPU {rec.server_cpu_s:.1f}s)" if rec.server_cpu_s is not None else ""))
                if not rec.ok:
                    log(rec.error)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return records


# --- reporting ---------------------------------------------------------------------------

def summaries(records: Sequence[RunRecord], target: str, key: str) -> Summary | None:
    return Summary.of([r.metrics[key] for r in records if r.target == target and r.ok and key in r.metrics])


def _wall_seconds(rec: RunRecord, key: str, params: Params) -> float | None:
    """Wall seconds of one workload in *rec* (rand4k: the raw loop, as its CPU was sampled)."""
    if key == "rand4k":
        v = rec.metrics.get("rand4k_raw")
        return None if v is None else v * params.rand_ops / 1e6
    return rec.metrics.get(key)


def render(records: Sequence[RunRecord], params: Params, targets: Sequence[Target],
           notes: Sequence[str], out: Path, reps: int) -> str:
    names = [t.name for t in targets]
    # The comparisons whose both sides ran, then --ab copies against their original.
    pairs = [(o, a) for o, a in COMPARISONS if o in names and a in names]
    for t in targets:
        if t.pythonpath is not None:
            base = t.name.split("@", 1)[0]
            if base in names:
                pairs.append((base, t.name))
        elif t.extra_args and "ninep-vhost" in names:
            pairs.append((t.name, "ninep-vhost"))
    variants = [t.name for t in targets if t.is_variant]
    main = list(dict.fromkeys([*(n for pair in pairs for n in pair),
                               *(n for n in names if n not in variants)]))
    rows_m = metrics(params)
    lines = [
        f"# ninep guest benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {reps} reps, "
        f"{params.size_mib} MiB, TCG guest, 1 vCPU)",
        "",
        "Times are medians [min–max] over repetitions, measured inside the guest. "
        "**Ratio = anchor time / ours: > 1 means the first-named server is faster.** ninep and diod use "
        "trans=fd over virtio-serial; qemu is Debian's QEMU's built-in virtio-9p (local, passthrough); "
        "ninep-vhost is ninep attached over vhost-user by QEMU >= 10.2 and qemu-10.2 is the built-in "
        "virtio-9p of that same binary (same q35 machine, same shared guest RAM). A name@COPY is "
        "another copy of the package (--ab), against this tree's run of the same kind.",
        "",
    ]
    header = ["workload", "unit", *main, *(f"{o} vs {a}" for o, a in pairs)]
    rows = []
    chart_series: dict[str, list[float | None]] = {f"{o} vs {a}": [] for o, a in pairs}
    for m in rows_m:
        cells = {n: summaries(records, n, m.key) for n in main}
        row = [m.label, m.unit, *("–" if cells[n] is None else cells[n].cell() for n in main)]
        for o, a in pairs:
            r = ratio(cells[a], cells[o])
            row.append(fmt_ratio(r))
            chart_series[f"{o} vs {a}"].append(r)
        rows.append(row)
    lines += [markdown_table(header, rows), ""]

    cpu_rows = []
    for n in names:
        s = Summary.of([r.server_cpu_s for r in records if r.target == n and r.ok and r.server_cpu_s is not None])
        if s is not None:
            cpu_rows.append([n, s.cell("{:.1f}")])
    if cpu_rows:
        lines += ["Server CPU seconds per boot (all workloads; QEMU's built-in server has none of its own):", "",
                  markdown_table(["server", "CPU s"], cpu_rows), ""]

    busy_rows = []
    busy_servers = [n for n in main if any(r.workload_cpu_s for r in records if r.target == n)]
    for m in rows_m:
        if m.key == "rand4k_raw":
            continue
        cells = []
        for n in busy_servers:
            shares = [r.workload_cpu_s[m.key] / wall for r in records
                      if r.target == n and r.ok and m.key in r.workload_cpu_s
                      and (wall := _wall_seconds(r, m.key, params))]
            s = Summary.of([100 * x for x in shares])
            cells.append("–" if s is None else s.cell("{:.0f}%"))
        busy_rows.append([m.label, *cells])
    if busy_servers:
        lines += ["Server busy share: server CPU seconds during the workload / its wall time. A server "
                  "that is busy a small share of the time is not what limits the workload (the guest, "
                  "TCG and the transport are):", "",
                  markdown_table(["workload", *busy_servers], busy_rows), ""]

    host = Summary.of([r.host_read_mib_s for r in records if r.host_read_mib_s])
    seq = summaries(records, "ninep", "seq_read")
    if host and seq:
        guest_mib_s = params.size_mib / seq.median
        lines += [f"Host page-cache read of the same file: {host.median:.0f} MiB/s; ninep seq read in the "
                  f"guest: {guest_mib_s:.1f} MiB/s = {100 * guest_mib_s / host.median:.2f}% of it.", ""]

    if variants:
        base = "ninep"
        vheader = ["workload", f"{base} (local/passthrough)", *variants, *(f"{v} vs local/passthrough" for v in variants)]
        vrows = []
        for m in rows_m:
            b = summaries(records, base, m.key)
            vs = [summaries(records, v, m.key) for v in variants]
            vrows.append([m.label, "–" if b is None else b.cell(), *("–" if c is None else c.cell() for c in vs),
                          *(fmt_ratio(ratio(b, c)) for c in vs)])
        lines += ["ninep back ends and security models (ratio = passthrough time / variant time: "
                  "> 1 means the variant is faster):", "", markdown_table(vheader, vrows), ""]
        vseries = {v: [ratio(summaries(records, base, m.key), summaries(records, v, m.key)) for m in rows_m]
                   for v in variants}
        ratio_chart(out / "guest_compare_variants.png",
                    "ninep variants vs local/passthrough (passthrough time / variant time; > 1: variant faster)",
                    [m.label for m in rows_m], vseries, "ratio (median)")
        lines += [f"Chart: {out / 'guest_compare_variants.png'}", ""]

    failed = [r for r in records if not r.ok]
    if failed:
        lines += ["Failed runs (left out of the tables): " + ", ".join(f"{r.target} rep {r.rep + 1}" for r in failed), ""]
    if notes:
        lines += ["Notes:", *(f"- {n}" for n in notes), ""]

    labels = [m.label for m in rows_m]
    if chart_series:
        targets_for = {"ninep vs diod": [1.0] * len(rows_m), f"ninep-vhost vs {COMPARISONS[2][1]}": [1.0] * len(rows_m)}
        ratio_chart(out / "guest_compare.png", "ninep vs anchors (anchor time / ninep time; > 1: ninep faster)",
                    labels, chart_series, "ratio (median)", targets_for)
        lines.append(f"Chart: {out / 'guest_compare.png'}")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.guest_compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256, help="sequential file size (default 256)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--meta-files", type=int, default=2000)
    ap.add_argument("--list-files", type=int, default=10000)
    ap.add_argument("--rand-ops", type=int, default=500)
    ap.add_argument("--untar-files", type=int, default=600)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    ap.add_argument("--servers", default="all",
                    help="comma list of target names (ninep, diod, qemu, ninep-vhost, qemu-10.2, "
                         "ninep[local/none], ...)")
    ap.add_argument("--no-variants", action="store_true", help="skip ninep's other back ends and models")
    ap.add_argument("--floor", action="store_true",
                    help="also run ninep-vhost[floor]: vhost-user on an in-memory back end that makes "
                         "no host syscall (the transport's floor)")
    ap.add_argument("--variant-reps", type=int, default=1,
                    help="repetitions of the back-end/model variants (default 1, to fit the time)")
    ap.add_argument("--memory-mb", type=int, default=768, help="guest RAM")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per boot")
    ap.add_argument("--ab", metavar="DIR", type=Path, action="append", default=[],
                    help="also run ninep from another copy of the package (PYTHONPATH=DIR) as "
                         "the target ninep@NAME (NAME: the folder's name), interleaved with this "
                         "tree's, every rep: a before/after in one run; may be repeated")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy record the ninep server (profile-*.txt, summarised on the console)")
    ap.add_argument("--vhost-variant", metavar="ARGS", action="append", default=[],
                    help="also run ninep-vhost with these extra options, as the target "
                         "'ninep-vhost[ARGS]' (e.g. --vhost-variant='--vhost-poll-us 100'); "
                         "may be repeated")
    ap.add_argument("--trace", action="store_true",
                    help="stamp every vhost-user request's stages (bench.vq_trace): trace-*.json, "
                         "summarised with python -m bench.vq_trace --summary")
    ap.add_argument("--from-json", type=Path, help="only redraw tables and charts from a saved guest_compare.json")
    args = ap.parse_args(argv)
    args.workloads = tuple(w for w in args.workloads.split(",") if w)
    bad = set(args.workloads) - set(WORKLOADS)
    if bad:
        ap.error(f"unknown workloads: {', '.join(sorted(bad))}")
    return args


def rerender(path: Path, out: Path) -> str:
    """Tables and charts again from a saved guest_compare.json (e.g. after changing the report)."""
    data = json.loads(path.read_text())
    p = data["params"]
    params = Params(**{**p, "workloads": tuple(p["workloads"])})
    records = [RunRecord(**r) for r in data["runs"]]
    if "targets" in data:
        targets = [Target(**t) for t in data["targets"]]
    else:  # written before targets were saved: the known ones that ran, in the usual order
        ran = {r.target for r in records}
        targets = [t for t in all_targets(with_variants=True)[0] if t.name in ran]
    out.mkdir(parents=True, exist_ok=True)
    reps = data.get("reps") or 1 + max((r.rep for r in records), default=0)
    text = render(records, params, targets, data.get("notes", []), out, reps)
    (out / "guest_compare.md").write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        print(rerender(args.from_json, args.out))
        return 0
    params = Params(args.size_mib, args.meta_files, args.list_files, args.rand_ops, args.untar_files,
                    args.workloads)
    targets, notes = all_targets(with_variants=not args.no_variants, with_floor=args.floor)
    for copy in args.ab:
        if not (copy / "ninep" / "__init__.py").exists():
            print(f"--ab: {copy} holds no ninep package", file=sys.stderr)
            return 2
        name = copy.resolve().name
        targets.append(Target(f"ninep@{name}", "ninep", pythonpath=str(copy.resolve())))
        if any(t.kind == "vhost" for t in targets):
            targets.append(Target(f"ninep-vhost@{name}", "vhost", pythonpath=str(copy.resolve())))
    if any(t.kind == "vhost" for t in targets):
        targets += [Target(f"ninep-vhost[{v}]", "vhost", extra_args=tuple(v.split()))
                    for v in args.vhost_variant]
    if args.servers != "all":
        wanted = args.servers.split(",")
        unknown = set(wanted) - {t.name for t in targets}
        if unknown:
            print(f"unknown or unavailable servers: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        targets = [t for t in targets if t.name in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"servers: {', '.join(t.name for t in targets)}")
    for n in notes:
        print(f"note: {n}")
    t0 = time.monotonic()
    records = run_all(targets, params, args.reps, args.out, args.memory_mb, args.timeout, args.profile,
                      args.variant_reps, trace_vhost=args.trace)
    text = render(records, params, targets, notes, args.out, args.reps)
    text += f"\nTotal wall time {time.monotonic() - t0:.0f}s.\n"
    (args.out / "guest_compare.md").write_text(text)
    (args.out / "guest_compare.json").write_text(json.dumps(
        {"params": dataclasses.asdict(params), "reps": args.reps, "notes": notes,
         "targets": [dataclasses.asdict(t) for t in targets],
         "runs": [dataclasses.asdict(r) for r in records]}, indent=1))
    print(text)
    return 0 if all(r.ok for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
