"""The benchmark's arithmetic and its micro run, on tiny sizes (no guest)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from bench import micro
from bench.guest_compare import Params, count_files, derive, make_tar, metrics
from bench.profile_summary import summarise
from bench.report import Summary, fmt_ratio, markdown_table, ratio


def test_summary_and_ratio_say_which_side_is_faster() -> None:
    ours = Summary.of([2.0, 1.0, 3.0])
    anchor = Summary.of([4.0, 4.0, 5.0])
    assert (ours.lo, ours.median, ours.hi, ours.n) == (1.0, 2.0, 3.0, 3)
    assert ours.cell("{:.1f}") == "2.0 [1.0–3.0]"
    assert ratio(anchor, ours) == 2.0  # anchor takes twice as long: ninep is 2x faster
    assert fmt_ratio(ratio(ours, anchor)) == "0.50×"
    assert ratio(None, ours) is None and fmt_ratio(None) == "n/a"
    assert Summary.of([]) is None


def test_markdown_table_aligns_columns() -> None:
    text = markdown_table(["a", "long header"], [["x", "1"], ["yyyy", "22"]])
    lines = text.splitlines()
    assert lines[0] == "| a    | long header |"
    assert lines[2] == "| x    | 1           |"
    assert len({len(line) for line in lines}) == 1


def test_derive_subtracts_the_shell_loop_and_sums_metadata() -> None:
    params = Params(8, 10, 20, 100, 5, ("rand4k", "metadata"))
    raw = {"rand4k_raw": 900_000_000, "rand4k_cal": 600_000_000, "meta_create": 1_000_000_000,
           "meta_stat": 500_000_000, "meta_list": 250_000_000, "meta_unlink": 250_000_000}
    out = derive(raw, params)
    assert out["rand4k_raw"] == 9000.0  # µs per op
    assert out["rand4k"] == 3000.0
    assert out["metadata"] == 2.0
    assert out["meta_stat"] == 0.5
    keys = [m.key for m in metrics(params)]
    assert keys == ["rand4k", "rand4k_raw", "meta_create", "meta_stat", "meta_list", "meta_unlink",
                    "metadata"]


def test_make_tar_is_deterministic_with_mixed_sizes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    total = make_tar(a, 60)
    assert make_tar(b, 60) == total
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        sizes = [m.size for m in tar.getmembers() if m.isfile()]
    assert len(sizes) == 60 and sum(sizes) == total
    assert min(sizes) < 4096 < max(sizes)


def test_micro_runs_end_to_end_and_reports_every_request(tmp_path: Path, capsys) -> None:
    assert micro.main(["--n", "40", "--reps", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for request in micro.REQUESTS:
        assert f"| {request}" in printed
    data = json.loads((tmp_path / "micro.json").read_text())
    for transport in ("virtqueue (vhost-user)", "stream (unix socket)"):
        for request in micro.REQUESTS:
            (cpu_us,) = data["server"][transport][request]
            assert cpu_us > 0
    assert "decode Twalk (1 name)" in (tmp_path / "micro.md").read_text()


def test_count_files_skips_mapped_file_metadata(tmp_path: Path) -> None:
    (tmp_path / "d" / ".virtfs_metadata").mkdir(parents=True)
    (tmp_path / "d" / "a").write_text("x")
    (tmp_path / "d" / ".virtfs_metadata" / "a").write_text("meta")
    (tmp_path / "b").write_text("y")
    assert count_files(tmp_path) == 2


def test_profile_summary_splits_loop_time_from_the_server_stages(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    main = "<module> (ninep/__main__.py:5);Runner.run (asyncio/runners.py:118)"
    raw.write_text("\n".join([
        f"{main} 40",  # the loop waiting in epoll
        f"{main};Session._run (ninep/server/session.py:200);"
        "StreamConnection._deliver (ninep/transport/stream.py:207) 30",
        f"{main};Session._run (ninep/server/session.py:200);LocalBackend._run "
        "(ninep/backends/local/backend.py:77);open_created (ninep/backends/local/secmodel.py:43) 20",
        f"{main};Session._dispatch (ninep/server/session.py:230) 10",
    ]) + "\n")
    text = summarise(raw, top=3)
    assert "100 samples; 40% in the event loop's own C code" in text
    assert " 50.0%  send the reply" in text
    assert " 33.3%  host syscalls (back end)" in text
    assert " 16.7%  decode, dispatch, encode" in text
    assert text.index("StreamConnection._deliver") < text.index("open_created")
