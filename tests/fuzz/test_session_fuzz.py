"""CI's short fuzz pass: mutated and generated frames through Session.

The seeded mutation loop runs NINEP_FUZZ_FRAMES frames (default 20,000);
Hypothesis drives structured sequences with shrinking.  ``scripts/fuzz-long``
runs the same engine for a million frames or more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.protocol import dotu as u
from ninep.protocol import ninep as p

from security.harness import env_int

from .engine import DIALECTS, MUTATIONS, FuzzStats, FuzzTarget, encode_lenient, fuzz, \
    gen_message, mutate, t_types, without_mknod_capability

CI_FRAMES = env_int("NINEP_FUZZ_FRAMES", 20_000)
#: Replies that show a run reached each dialect's handlers, not only the decoder.
REACHED = {
    p.VERSION_9P2000L: ("Rwalk", "Rread", "Rwrite", "Rlopen", "Rgetattr", "Rclunk", "Rreaddir"),
    u.VERSION_9P2000U: ("Rwalk", "Rread", "Rwrite", "Ropen", "Rcreate", "Rstat", "Rwstat",
                        "Rclunk"),
    u.VERSION_9P2000: ("Rwalk", "Rread", "Rwrite", "Ropen", "Rcreate", "RstatPlain", "Rwstat",
                       "Rclunk"),
}
#: The share of CI_FRAMES each dialect's loop runs (.L is what guests use most).
SHARE = {p.VERSION_9P2000L: 1.0, u.VERSION_9P2000U: 1.0, u.VERSION_9P2000: 0.5}
#: RSS may grow while caches warm up; a leak of one fid or buffer per case would not fit.
RSS_SLACK_KIB = 24 * 1024


@pytest.mark.parametrize("version", DIALECTS)
async def test_fuzz_mutation_loop(tmp_path: Path, version: str) -> None:
    """No exception, no hang, one clean reply per request, fds and nodes back to baseline."""
    frames = int(CI_FRAMES * SHARE[version])
    stats = await fuzz(tmp_path, frames, seed=0x9F, messages=DIALECTS[version])
    print("\n" + stats.summary())
    assert stats.frames >= frames
    assert stats.fds_after == stats.fds_before
    assert stats.rss_after_kib - stats.rss_before_kib < RSS_SLACK_KIB, stats.summary()
    # The fuzz reached the handlers, not only the decoder.
    for name in REACHED[version]:
        assert stats.replies[name] > 0, f"no {name} in {stats.replies}"


# --- Hypothesis: structured messages + explicit mutations, shrinkable -----------------------

def frames_of(messages: p.MessageSet) -> st.SearchStrategy:
    """Hypothesis frame sequences of one dialect (each message optionally mutated)."""
    one = st.builds(lambda seed, t: gen_message(__import__("random").Random(seed), t, messages),
                    st.integers(0, 2**32), st.sampled_from(t_types(messages)))
    mutations = st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 2**32 - 1)),
                         max_size=3)
    return st.lists(st.tuples(one, mutations, st.integers(1, 0xFFFF)), min_size=1, max_size=25)


class _Loop:
    """One event loop and one export for all Hypothesis examples (cheap examples)."""

    def __init__(self, base: Path, messages: p.MessageSet) -> None:
        self.runner = asyncio.Runner()
        self.stats = FuzzStats()
        self.target = self.runner.run(self._make(base, messages))

    async def _make(self, base: Path, messages: p.MessageSet) -> FuzzTarget:
        return FuzzTarget(base, self.stats, messages=messages)

    def close(self) -> None:
        self.runner.run(self.target.close())
        self.runner.close()


@pytest.mark.parametrize("version", DIALECTS)
def test_fuzz_hypothesis_sequences(tmp_path: Path, version: str) -> None:
    """Hypothesis-built message sequences (each optionally mutated), burst or one by one."""
    messages = DIALECTS[version]
    with without_mknod_capability():
        loop = _Loop(tmp_path / "hyp", messages)
        try:
            @settings(max_examples=env_int("NINEP_FUZZ_EXAMPLES", 150), deadline=None,
                      suppress_health_check=list(HealthCheck), database=None)
            @given(frames_of(messages), st.booleans())
            def case(items: list, burst: bool) -> None:
                encoded = []
                for msg, muts, tag in items:
                    frame = encode_lenient(msg, tag)
                    for kind, arg in muts:
                        frame = mutate(frame, kind, arg, encoded[-1] if encoded else b"")
                    encoded.append(frame)
                loop.runner.run(loop.target.run_case(encoded, burst))

            case()
        finally:
            loop.close()
    error_reply = {p.VERSION_9P2000L: "Rlerror", u.VERSION_9P2000U: "Rerror",
                   u.VERSION_9P2000: "RerrorPlain"}[version]
    assert loop.stats.cases > 0 and loop.stats.replies[error_reply] > 0


@pytest.mark.parametrize("version", DIALECTS)
async def test_fuzz_every_message_type_truncated_at_every_byte(tmp_path: Path,
                                                              version: str) -> None:
    """Each T-message cut short at each byte (size fixed up) answers cleanly."""
    import random
    rng = random.Random(7)
    messages = DIALECTS[version]
    frames_ = []
    for msgtype in t_types(messages):
        frame = encode_lenient(gen_message(rng, msgtype, messages), 1)
        frames_ += [mutate(frame, "truncate", cut) for cut in range(len(frame))][:64]
    stats = FuzzStats()
    with without_mknod_capability():
        target = FuzzTarget(tmp_path / "cuts", stats, messages=messages)
        try:
            for i in range(0, len(frames_), 40):
                await target.run_case(frames_[i:i + 40], burst=False)
        finally:
            await target.close()
    error_reply = p.Rlerror if messages is p.DOTL else u.Rerror if messages is u.DOTU \
        else u.RerrorPlain
    assert stats.errors["EINVAL"] > 0 and error_reply.__name__ in stats.replies
