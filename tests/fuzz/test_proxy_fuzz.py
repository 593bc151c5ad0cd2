"""CI's short pass of the proxy-protocol fuzz against the real ``ninep-proxy-helper``,
one focused run per kind of message, and checks that each kind generates what it
claims to.

``NINEP_PROXY_FUZZ_CASES`` sets the short pass's size (default 5,000 cases);
``scripts/fuzz-long`` runs :func:`fuzz_proxy` for 10^5 cases or more.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from ninep.protocol import proxy as P

from security.harness import PROBE, env_int

from .proxy_engine import KINDS, ProxyFuzzStats, fuzz_proxy, iter_kind, predict

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the proxy helper needs root (chroot, capabilities)")

CI_CASES = env_int("NINEP_PROXY_FUZZ_CASES", 5000)
#: The helper's RSS may grow while its caches warm up; a buffer kept per message would not fit.
RSS_SLACK_KIB = 16 * 1024
_U32 = 0xFFFFFFFF


def test_proxy_fuzz_short_pass(tmp_path: Path) -> None:
    """Every kind mixed: nothing escapes, nothing hangs, every well-formed request is
    answered, every malformed one drops its connection, and the helper ends with the
    fds, threads and (nearly) the memory it started with."""
    stats = fuzz_proxy(tmp_path, CI_CASES, seed=0x9F9)
    print("\n" + stats.summary())
    assert stats.cases == CI_CASES and stats.messages >= CI_CASES
    assert set(stats.kinds) == set(KINDS)
    assert (stats.fds_after, stats.threads_after) == (stats.fds_before, stats.threads_before)
    assert stats.threads_after == 1
    assert stats.rss_after_kib - stats.rss_before_kib < RSS_SLACK_KIB, stats.summary()
    # The fuzz got past the decoder into every kind of answer.
    for reply in ("Status", "Status(error)", "FdReply", "FdReply(error)", "ProxyStat",
                  "ProxyStatFS", "ReadlinkReply", "XattrReply", "VersionReply"):
        assert stats.replies[reply] > 0, f"no {reply} in {stats.replies}"
    assert stats.drops > CI_CASES // 4 and stats.fds_passed > 0 and stats.fds_received > 0


def _answered(stats: ProxyFuzzStats) -> int:
    return sum(stats.replies.values())


#: What a run of only this kind must show (all runs also pass every check of the engine).
KIND_OUTCOMES: dict[str, Callable[[ProxyFuzzStats], bool]] = {
    "hostile": lambda s: s.malformed == 0 and _answered(s) == s.cases and s.errors["EINVAL"] > 0,
    "escape": lambda s: (s.malformed == 0 and _answered(s) == s.cases
                         and s.errors["ENOENT"] > 0 and s.errors["EINVAL"] > 0),
    "fds": lambda s: s.fds_passed >= s.cases and _answered(s) > 0 and s.drops > 0,
    "pipeline": lambda s: _answered(s) >= 2 * s.cases and s.drops > 0,
    "mutate": lambda s: s.drops > 0 and _answered(s) > 0,
    "type": lambda s: s.drops > s.cases // 2,
    "size-lie": lambda s: s.malformed == s.cases and s.drops + s.hangups == s.cases,
    "truncate": lambda s: s.malformed == s.cases and s.drops + s.hangups == s.cases,
    "bad-string": lambda s: s.malformed == s.cases and s.drops + s.hangups == s.cases,
    "junk": lambda s: s.drops > s.cases // 2,
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_handled(tmp_path: Path, kind: str) -> None:
    """One kind at a time through the real helper, with the engine's checks every 40 cases."""
    stats = fuzz_proxy(tmp_path, 120, seed=0x51, kinds=[kind], checkpoint_every=40)
    assert stats.kinds == {kind: 120}
    assert stats.fds_after == stats.fds_before and stats.threads_after == 1
    assert KIND_OUTCOMES[kind](stats), stats.summary()


# --- the generators, without a helper ---------------------------------------------------

def _cases(kind: str, outside: Path, count: int = 300) -> list:
    return list(iter_kind(7, kind, outside, count))


def _requests(kind: str, outside: Path) -> list[P.Request]:
    return [req for case in _cases(kind, outside) for req in predict(case.data)[0]]


@pytest.mark.parametrize("kind", KINDS)
def test_kind_generates_its_shape(tmp_path: Path, kind: str) -> None:
    """Well-formed kinds give exactly the requests they send; malformed kinds give
    bytes the decoder rejects (and so the helper must too)."""
    predictions = [predict(c.data) for c in _cases(kind, tmp_path / "outside")]
    malformed = sum(drop for _, drop in predictions)
    if kind in ("hostile", "escape"):
        assert all(len(reqs) == 1 and not drop for reqs, drop in predictions)
    elif kind in ("size-lie", "truncate", "bad-string"):
        assert malformed == len(predictions)
    elif kind == "pipeline":
        assert all(len(reqs) >= 2 for reqs, _ in predictions)
        assert 0 < malformed < len(predictions)
    elif kind == "fds":
        assert all(c.fds for c in _cases(kind, tmp_path / "outside"))
        assert 0 < malformed < len(predictions)
    else:  # mutate, type, junk: mostly rejected, sometimes still a valid request
        assert len(predictions) // 2 < malformed


def test_hostile_values_are_generated(tmp_path: Path) -> None:
    reqs = _requests("hostile", tmp_path / "outside")
    sized = [r for r in reqs if isinstance(r, (P.Readlink, P.Lgetxattr, P.Llistxattr))]
    assert any(r.size >= 1 << 31 for r in sized) and any(r.size == _U32 for r in sized)
    assert any(getattr(r, "uid", 0) == _U32 for r in reqs)  # (uid_t)-1
    assert any(getattr(r, "gid", 0) >= 1 << 31 for r in reqs)  # negative as an int32
    devices = [r for r in reqs if isinstance(r, P.Mknod)
               and (stat.S_ISCHR(r.mode) or stat.S_ISBLK(r.mode))]
    assert any(r.rdev != 0 for r in devices)  # mknod of a real device number
    opens = [r for r in reqs if isinstance(r, (P.Open, P.Create))]
    assert any(r.flags & os.O_PATH for r in opens) and any(r.flags == _U32 for r in opens)
    assert any(isinstance(r, P.Truncate) and r.length >= 1 << 63 for r in reqs)
    assert any(isinstance(r, P.Lsetxattr) and r.size > len(r.value) for r in reqs)


def test_escape_paths_are_generated(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    host = os.fsencode(outside)
    paths = [getattr(r, f) for r in _requests("escape", outside)
             for f in ("path", "oldpath", "newpath") if hasattr(r, f)]
    assert any(p.startswith(b"..") or b"/../" in p for p in paths)
    assert any(p.startswith(host) for p in paths)  # the canary's host path, absolute
    assert any(p.startswith((b"link_out", b"abs_out", b"up/")) for p in paths)  # planted symlinks
    assert any(b"\0" in p for p in paths)
    assert any(PROBE.encode() in p for p in paths)  # creations aimed outside


def test_size_lies_cover_too_big_too_small_and_huge(tmp_path: Path) -> None:
    sizes = []
    for case in _cases("size-lie", tmp_path / "outside"):
        size = int.from_bytes(case.data[4:8], "little")
        sizes.append(size - (len(case.data) - P.PROXY_HDR_SZ))
    assert any(d > 0 for d in sizes) and any(d < 0 for d in sizes)
    assert any(d + P.PROXY_HDR_SZ > P.PROXY_MAX_IO_SZ for d in sizes)


def test_predict_stops_at_the_first_bad_frame() -> None:
    good = P.encode_request(P.Lstat(b"/file"))
    assert predict(good) == ([P.Lstat(b"/file")], False)
    assert predict(good + good) == ([P.Lstat(b"/file")] * 2, False)
    assert predict(good + b"\x63\0\0\0\0\0\0\0" + good) == ([P.Lstat(b"/file")], True)
    assert predict(good + good[:5]) == ([P.Lstat(b"/file")], True)  # cut short
    assert predict(b"") == ([], False)
