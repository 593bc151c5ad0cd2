"""A symlink swapped in while walks and opens are under way (CVE-2016-9602 class).

A host thread atomically exchanges ``export/race`` (a real directory) with
``export/race_link`` (a symlink to the canary tree, which holds a file of the
same name) as fast as it can, while several guest workers walk, open, read,
create and chmod through ``race``.  Any time-of-check/time-of-use gap in path
resolution would land an operation on the canary.  NINEP_RACE_ITERATIONS
shrinks the loop for CI; the default is the full 10,000.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from ninep import syscalls
from ninep.protocol import ninep as p

from .conftest import INSIDE, EscapeRig
from .harness import PROBE, env_int, rpc

ITERATIONS = env_int("NINEP_RACE_ITERATIONS", 10_000)
WORKERS = 8
RENAME_EXCHANGE = 2
#: What a walk or open may say while the swap is under way: the symlink is
#: refused (ELOOP/ENOTDIR), or the entry is briefly missing.
RACE_ERRNOS = {errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EXDEV}


class Swapper(threading.Thread):
    """Exchanges two names in a loop until stopped."""

    def __init__(self, directory: str, a: str, b: str) -> None:
        super().__init__(daemon=True)
        self.dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
        self.a, self.b = a, b
        self.swaps = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    syscalls.renameat2(self.dirfd, self.a, self.dirfd, self.b, RENAME_EXCHANGE)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                        raise
                    # No RENAME_EXCHANGE: rename back and forth through a third name.
                    os.rename(self.a, "swap.tmp", src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
                    os.rename(self.b, self.a, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
                    os.rename("swap.tmp", self.b, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
                self.swaps += 1
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(10)
        os.close(self.dirfd)
        assert not self.is_alive() and self.error is None, self.error


async def _walk_race(rig: EscapeRig, outcomes: Counter, names: list[str],
                     want_dir: bool = False) -> int | None:
    """Walk from the root to *names* while the swap runs: the new fid, or None when
    the walk was refused, stopped short, or (*want_dir*) ended on the symlink."""
    fid = rig.client.new_fid()
    try:
        reply = await rpc(rig.client, p.Twalk(rig.root, fid, names))
    except OSError as exc:
        assert exc.errno in RACE_ERRNOS, exc
        outcomes["walk-refused"] += 1
        return None
    rig.assert_no_canary_qids(reply.wqids)
    if len(reply.wqids) < len(names):
        outcomes["walk-stopped"] += 1
        return None
    if want_dir and reply.wqids[-1].type != p.QTDIR:
        outcomes["walked-to-link"] += 1
        await rig.client.clunk(fid)
        return None
    return fid


async def _act(rig: EscapeRig, outcomes: Counter, fid: int, what: str,
               action: Coroutine[Any, Any, Any]) -> None:
    """Run *action* on the walked *fid* (then clunk it): it either acted inside the
    export ("<what>-inside") or was refused because the symlink was there."""
    try:
        await action
        outcomes[f"{what}-inside"] += 1
    except OSError as exc:
        assert exc.errno in RACE_ERRNOS, exc
        outcomes[f"{what}-refused"] += 1
    finally:
        await rig.client.clunk(fid)


async def _read_secret(rig: EscapeRig, outcomes: Counter, i: int) -> None:
    """Walk race/secret.txt, open and read it: only ever the export's own bytes."""
    fid = await _walk_race(rig, outcomes, ["race", "secret.txt"])
    if fid is None:
        return

    async def read() -> None:
        await rpc(rig.client, p.Tlopen(fid, p.DOTL_RDONLY))
        data = await rig.client.read(fid, 0, 4096)
        assert data == INSIDE, f"read {data!r} through a swapped symlink"
    await _act(rig, outcomes, fid, "read", read())


async def _create_in_dir(rig: EscapeRig, outcomes: Counter, i: int) -> None:
    """Walk to race, then create in it: the new file must land in the real dir."""
    fid = await _walk_race(rig, outcomes, ["race"], want_dir=True)
    if fid is not None:
        await _act(rig, outcomes, fid, "created", rpc(rig.client, p.Tlcreate(
            fid, f"{PROBE}.{i}", p.DOTL_RDWR | p.DOTL_EXCL, 0o600, 0)))


async def _chmod_secret(rig: EscapeRig, outcomes: Counter, i: int) -> None:
    """Setattr on a path fid re-resolves it: it must never reach the canary's file."""
    fid = await _walk_race(rig, outcomes, ["race", "secret.txt"])
    if fid is not None:
        await _act(rig, outcomes, fid, "chmod", rpc(rig.client, p.Tsetattr(
            fid, p.SETATTR_MODE, 0o600, 0, 0, 0, 0, 0, 0, 0)))


RACERS = (_read_secret, _read_secret, _create_in_dir, _chmod_secret)


async def test_cve_2016_9602_symlink_swap_race(rig: EscapeRig) -> None:
    """CVE-2016-9602: ≥10,000 walk/open/read/create/chmod iterations against a symlink to
    the canary being swapped in and out; none reaches outside, and both sides of the race
    were actually hit."""
    (rig.export / "race").mkdir()
    (rig.export / "race" / "secret.txt").write_bytes(INSIDE)
    os.symlink(str(rig.outside), rig.export / "race_link")
    rig.canary.arm()
    outcomes: Counter = Counter()
    swapper = Swapper(str(rig.export), "race", "race_link")
    swapper.start()

    async def worker(first: int) -> None:
        for i in range(first, ITERATIONS, WORKERS):
            await RACERS[i % len(RACERS)](rig, outcomes, i)

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(WORKERS))), 120)
    finally:
        swapper.finish()
    print(f"\n{ITERATIONS} iterations, {swapper.swaps} swaps: {dict(outcomes)}")
    assert sum(outcomes.values()) == ITERATIONS
    inside = sum(n for k, n in outcomes.items() if k.endswith("-inside"))
    assert swapper.swaps > 0 and inside < ITERATIONS, "the symlink was never seen: no race"
    assert outcomes["read-inside"] and outcomes["created-inside"], "the real dir was never seen"
    real = rig.export / ("race" if (rig.export / "race").is_dir()
                         and not (rig.export / "race").is_symlink() else "race_link")
    assert (real / "secret.txt").read_bytes() == INSIDE
    created = [n for n in os.listdir(real) if n.startswith(PROBE)]
    assert len(created) == outcomes["created-inside"]
