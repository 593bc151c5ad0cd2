"""CI's short fuzz pass: mutated and generated frames through Session.

The seeded mutation loop runs NINEP_FUZZ_FRAMES frames (default 20,000);
Hypothesis drives structured sequences with shrinking.  ``scripts/fuzz-long``
runs the same engine for a million frames or more.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.protocol import ninep as p

from security.harness import env_int

from .engine import MUTATIONS, T_TYPES, FuzzStats, FuzzTarget, encode_lenient, fuzz, gen_message, \
    mutate, without_mknod_capability

CI_FRAMES = env_int("NINEP_FUZZ_FRAMES", 20_000)
#: RSS may grow while caches warm up; a leak of one fid or buffer per case would not fit.
RSS_SLACK_KIB = 24 * 1024


async def test_fuzz_mutation_loop(tmp_path: Path) -> None:
    """No exception, no hang, one clean reply per request, fds and nodes back to baseline."""
    stats = await fuzz(tmp_path, CI_FRAMES, seed=0x9F)
    print("\n" + stats.summary())
    assert stats.frames >= CI_FRAMES
    assert stats.fds_after == stats.fds_before
    assert stats.rss_after_kib - stats.rss_before_kib < RSS_SLACK_KIB, stats.summary()
    # The fuzz reached the handlers, not only the decoder.
    for name in ("Rwalk", "Rread", "Rwrite", "Rlopen", "Rgetattr", "Rclunk", "Rreaddir"):
        assert stats.replies[name] > 0, f"no {name} in {stats.replies}"


# --- Hypothesis: structured messages + explicit mutations, shrinkable -----------------------

messages = st.builds(lambda seed, t: gen_message(__import__("random").Random(seed), t),
                     st.integers(0, 2**32), st.sampled_from(T_TYPES))
mutations = st.lists(st.tuples(st.sampled_from(MUTATIONS), st.integers(0, 2**32 - 1)), max_size=3)
frames = st.lists(st.tuples(messages, mutations, st.integers(1, 0xFFFF)), min_size=1, max_size=25)


class _Loop:
    """One event loop and one export for all Hypothesis examples (cheap examples)."""

    def __init__(self, base: Path) -> None:
        self.runner = asyncio.Runner()
        self.stats = FuzzStats()
        self.target = self.runner.run(self._make(base))

    async def _make(self, base: Path) -> FuzzTarget:
        return FuzzTarget(base, self.stats)

    def close(self) -> None:
        self.runner.run(self.target.close())
        self.runner.close()


def test_fuzz_hypothesis_sequences(tmp_path: Path) -> None:
    """Hypothesis-built message sequences (each optionally mutated), burst or one by one."""
    with without_mknod_capability():
        loop = _Loop(tmp_path / "hyp")
        try:
            @settings(max_examples=env_int("NINEP_FUZZ_EXAMPLES", 150), deadline=None,
                      suppress_health_check=list(HealthCheck), database=None)
            @given(frames, st.booleans())
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
    assert loop.stats.cases > 0 and loop.stats.replies["Rlerror"] > 0


async def test_fuzz_every_message_type_truncated_at_every_byte(tmp_path: Path) -> None:
    """Each T-message cut short at each byte (size fixed up) answers cleanly."""
    import random
    rng = random.Random(7)
    frames_ = []
    for msgtype in T_TYPES:
        frame = encode_lenient(gen_message(rng, msgtype), 1)
        frames_ += [mutate(frame, "truncate", cut) for cut in range(len(frame))][:64]
    stats = FuzzStats()
    with without_mknod_capability():
        target = FuzzTarget(tmp_path / "cuts", stats)
        try:
            for i in range(0, len(frames_), 40):
                await target.run_case(frames_[i:i + 40], burst=False)
        finally:
            await target.close()
    assert stats.errors["EINVAL"] > 0 and p.Rlerror.__name__ in stats.replies
