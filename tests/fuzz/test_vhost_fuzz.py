"""CI's short vhost-user fuzz pass, and focused runs of each named hostile class.

The seeded loop runs NINEP_VHOST_FUZZ_CASES cases (default 5,000: about 3,000
descriptor chains and 2,000 control messages) through the in-process
vhost-user server; ``scripts/fuzz-long`` runs the same engine for 10⁵ or more.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ninep.protocol import ninep as p
from ninep.transport.vhost.messages import (FLAG_NEED_REPLY, FLAG_VERSION, MEMORY_HEADER, U64,
                                            VRING_ADDR, VRING_STATE, Request)
from ninep.transport.vhost_user import DEVICE_FEATURES

from security.harness import env_int

from .vhost_engine import (EPISODES, MALFORMED_KINDS, ODD_VALID_KINDS, ControlMessage,
                           fuzz_rig, fuzz_vhost)

CI_CASES = env_int("NINEP_VHOST_FUZZ_CASES", 5_000)
#: RSS may grow while caches warm up; a leaked mapping or buffer per case would not fit.
RSS_SLACK_KIB = 24 * 1024
ACK = FLAG_VERSION | FLAG_NEED_REPLY


async def test_vhost_fuzz_short_pass(tmp_path: Path) -> None:
    """Chains and control messages: no exception, no hang, the oracle's verdict for every
    chain, a reply or a clean hang-up for every message, fds and mappings back to baseline."""
    stats = await fuzz_vhost(tmp_path / "run", CI_CASES, seed=0x9F)
    print("\n" + stats.summary())
    assert stats.cases >= CI_CASES
    assert stats.chains >= CI_CASES // 2 and stats.messages >= CI_CASES // 3
    assert stats.fds_after == stats.fds_before
    assert stats.rss_after_kib - stats.rss_before_kib < RSS_SLACK_KIB, stats.summary()
    # Every kind was generated, and got the outcome its class calls for.
    for kind in MALFORMED_KINDS:
        assert stats.outcomes[kind, "broken"] > 0, f"no broken {kind}: {stats.summary()}"
    for kind in ODD_VALID_KINDS:
        returned = stats.outcomes[kind, "reply"] + stats.outcomes[kind, "empty"]
        assert returned > 0 and not stats.outcomes[kind, "broken"], kind
    # The fuzz reached the 9P session and the control plane's deeper states.
    for reply in ("Rgetattr", "Rattach", "Rstatfs", "Rlerror"):
        assert stats.replies[reply] > 0, stats.replies
    for outcome in ("ack-ok", "ack-fail", "reply", "dropped-as-required", "torn-then-closed"):
        assert stats.control[outcome] > 0, stats.control


async def test_each_hostile_chain_class_is_dropped_and_the_queue_still_answers(
        tmp_path: Path) -> None:
    """One kick per named class (loops, too-long chains, out-of-range and wrapping
    addresses, overflowing lengths, nested and misplaced indirect tables...), three of it
    between probes: the oracle finds the rule each breaks, the server drops exactly those
    chains and signals each, and the probes are answered."""
    async with fuzz_rig(tmp_path / "classes", seed=7) as rig:
        await rig.chains.connect()
        for kind, why in MALFORMED_KINDS.items():
            chains = await rig.chains.run_batch(
                [p.Tgetattr(0, p.GETATTR_BASIC)], [kind] * 3 + ["probe"])
            bad = [c for c in chains if c.kind == kind]
            assert bad and all(c.verdict.broken == why for c in bad), (kind, bad)
            assert rig.stats.outcomes[kind, "broken"] >= len(bad)
        assert rig.stats.outcomes["probe", "reply"] >= 2 * len(MALFORMED_KINDS)
        await rig.chains.disconnect()
        await rig.finish()


async def test_odd_but_valid_chains_are_returned(tmp_path: Path) -> None:
    """Zero-length buffers, region-spanning buffers, a 1024-entry table, a ~4 GB request
    (returned with used.len 0, never copied) and a head published twice all come back."""
    async with fuzz_rig(tmp_path / "odd", seed=8) as rig:
        await rig.chains.connect()
        for kind in ODD_VALID_KINDS:
            for _ in range(2):  # one per kick: a batch has one region boundary to span
                chains = await rig.chains.run_batch(None, [kind])
                assert chains and all(c.verdict.broken is None for c in chains), kind
        stats = rig.stats
        assert stats.outcomes["oversized-request", "empty"] == 2
        assert stats.outcomes["zero-length", "reply"] + stats.outcomes["zero-length", "empty"] == 2
        assert stats.outcomes["spans-regions", "reply"] == 2  # probes: answered in full
        duplicates = stats.outcomes["duplicate-head", "reply"] + \
            stats.outcomes["duplicate-head", "empty"]
        assert duplicates == 4  # two used elements each
        await rig.chains.disconnect()
        await rig.finish()


async def test_ring_episodes(tmp_path: Path) -> None:
    """avail.idx jumping past the ring, used rings outside memory, in a read-only region,
    over the avail ring and the descriptor table, and a disconnect with chains in flight:
    each is survived, and the ring answers afterwards."""
    async with fuzz_rig(tmp_path / "episodes", seed=9) as rig:
        await rig.chains.connect()
        for episode in EPISODES:
            await rig.chains.run_batch()
            await rig.chains.episode(episode)
        await rig.chains.run_batch([p.Tgetattr(0, p.GETATTR_BASIC)])
        await rig.chains.disconnect()
        await rig.finish()
        assert set(rig.stats.episodes) == set(EPISODES)


async def test_hostile_control_messages_are_refused_or_dropped(tmp_path: Path) -> None:
    """The named control-plane classes, each on its own connection: a failure reply (or a
    hang-up where the protocol allows no other answer), every passed fd closed, and a
    good session afterwards."""
    async with fuzz_rig(tmp_path / "control", seed=10) as rig:
        control = rig.control
        ram = control.ram
        r0, r1 = ram.regions
        ring = control.ring

        def table(*regions: object, fds: int | None = None) -> ControlMessage:
            payload = MEMORY_HEADER.pack(len(regions), 0) + b"".join(r.pack() for r in regions)
            return ControlMessage(Request.SET_MEM_TABLE, ACK, payload,
                                  ["ram"] * (len(regions) if fds is None else fds))

        small = replace(r0, size=64 * 1024)  # fits the 64 KiB read-only memfds
        refused = {
            "overlapping regions": table(r0, replace(r0, uva=r1.uva + (1 << 30))),
            "region larger than its fd": table(replace(r0, size=ram.size * 4)),
            "zero-size region": table(replace(r0, size=0)),
            "no regions": table(),
            "fds missing": table(r0, r1, fds=1),
            "ring size not a power of two": ControlMessage(Request.SET_VRING_NUM, ACK,
                                                           VRING_STATE.pack(0, 100), []),
            "ring size over 32768": ControlMessage(Request.SET_VRING_NUM, ACK,
                                                   VRING_STATE.pack(0, 65536), []),
            "used ring outside memory": ControlMessage(Request.SET_VRING_ADDR, ACK, VRING_ADDR.pack(
                0, 0, ring.desc_uva, 0x1000, ring.avail_uva, 0), []),
            "kick fd that is a pipe": ControlMessage(Request.SET_VRING_KICK, ACK, U64.pack(0),
                                                     ["pipe-r"]),
            "call fd that is a file": ControlMessage(Request.SET_VRING_CALL, ACK, U64.pack(0),
                                                     ["file"]),
            "kick without its fd": ControlMessage(Request.SET_VRING_KICK, ACK, U64.pack(0), []),
            "read-only region": ControlMessage(Request.SET_MEM_TABLE, ACK, table(small).payload,
                                               ["memfd-ro"]),
            "sealed region": ControlMessage(Request.SET_MEM_TABLE, ACK, table(small).payload,
                                            ["memfd-sealed"]),
        }
        for what, msg in refused.items():
            before = rig.stats.refused[Request(msg.request).name]
            await control.burst(0, [msg], prefix=what.startswith(("used", "kick", "call")))
            assert rig.stats.refused[Request(msg.request).name] == before + 1, what
        # Before SET_OWNER a valid message is still taken; fds on a message that takes
        # none are closed (burst() checks the fd count after every connection).
        accepted = [ControlMessage(Request.SET_FEATURES, ACK, U64.pack(DEVICE_FEATURES), []),
                    ControlMessage(Request.SET_OWNER, ACK, b"", ["eventfd", "memfd", "socket"])]
        ok = rig.stats.control["ack-ok"]
        await control.burst(0, accepted, prefix=False)
        assert rig.stats.control["ack-ok"] == ok + 2
        # No connection survives these: larger than any message, too many fds, torn.
        dropped = rig.stats.control["dropped-as-required"]
        await control.burst(0, [ControlMessage(Request.SET_FEATURES, ACK, b"", [], size=1 << 20)])
        await control.burst(0, [ControlMessage(Request.SET_OWNER, ACK, b"", ["eventfd"] * 9)])
        assert rig.stats.control["dropped-as-required"] == dropped + 2
        torn = rig.stats.control["torn-then-closed"]
        await control.burst(0, [ControlMessage(Request.GET_FEATURES, ACK, b"", [], runt=5)])
        await control.burst(0, [ControlMessage(Request.SET_FEATURES, ACK, b"\0" * 3, [], size=8)])
        assert rig.stats.control["torn-then-closed"] == torn + 2
        # burst() checked the fd baseline after each; a good session still works.
        await rig.chains.connect()
        await rig.chains.run_batch([p.Tgetattr(0, p.GETATTR_BASIC)])
        await rig.chains.disconnect()
        await rig.finish()
