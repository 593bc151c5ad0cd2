"""The CI-sized load test: 8 sessions x 500 mixed operations against a real
``ninep`` process (``scripts/load-test`` runs 64 x 10,000).  Asserts zero
protocol errors, a clean server log and bounded server RSS; prints ops/s and
p99 latency (printed, never asserted)."""

from __future__ import annotations

from security.harness import env_int

from .loadgen import OPS, load_test

#: Growth allowed between warm-up and the end; a per-op leak of even 100 bytes
#: over the full 640k-op run would exceed it.
RSS_GROWTH_KIB = 48 * 1024


async def test_load_mixed_sessions() -> None:
    result = await load_test(env_int("NINEP_LOAD_SESSIONS", 8), env_int("NINEP_LOAD_OPS", 500))
    print("\n" + result.summary())
    assert result.errors == [], result.errors[:10]
    assert result.server_errors == [], result.server_errors[:10]
    assert sum(result.ops.values()) == result.sessions * result.ops_per_session
    assert set(result.ops) == set(OPS)
    assert result.rss_end_kib - result.rss_warm_kib < RSS_GROWTH_KIB, result.summary()
