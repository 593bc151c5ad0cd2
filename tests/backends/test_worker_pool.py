"""WorkerPool: where a back-end call runs (a worker thread, or inline on the
event loop for the only request in flight on a local file system)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from ninep.backends import fdops
from ninep.backends.base import RequestLoad
from ninep.backends.local import LocalBackend
from ninep.client import Client


@pytest.mark.parametrize("inline,in_flight,on_loop", [
    (True, 0, True), (True, 1, True), (True, 2, False), (False, 1, False), (False, 0, False),
    (True, None, False)])  # no load: nothing says the call is alone
async def test_where_a_call_runs(inline: bool, in_flight: int | None, on_loop: bool) -> None:
    load = None
    if in_flight is not None:
        load = RequestLoad()
        load.in_flight = in_flight
    pool = fdops.WorkerPool(2, "test", load=load, inline_when_alone=inline)
    try:
        ran_on = await pool.run(threading.get_ident)
        with pytest.raises(FileNotFoundError):  # errors come back the same either way
            await pool.run(os.stat, "/no/such/file")
    finally:
        pool.shutdown()
    assert (ran_on == threading.get_ident()) is on_loop


def test_only_local_file_systems_may_run_inline(tmp_path: Path) -> None:
    for path, local in ((tmp_path, True), ("/dev/shm", True), ("/proc", False)):
        assert fdops.export_is_local(str(path)) is local, path


def test_mounts_inside_the_export_decide_too(tmp_path: Path) -> None:
    """An NFS, FUSE or procfs mount anywhere below the export keeps every call in
    the worker threads: one of its calls could stall the event loop indefinitely."""
    export = tmp_path / "my export"
    export.mkdir()
    top = str(export).replace(" ", "\\040")
    lines = [f"30 1 8:1 / {top} rw - ext4 /dev/sda1 rw",  # the export itself
             f"31 30 0:40 / {top}/scratch rw - tmpfs tmpfs rw",
             f"32 1 0:41 / {top}2/elsewhere rw - nfs srv:/x rw"]  # a sibling, not below
    info = tmp_path / "mountinfo"
    info.write_text("\n".join(lines) + "\n")
    assert fdops.mounts_below(str(export), str(info)) == [(f"{export}/scratch", "tmpfs")]
    assert fdops.export_is_local(str(export), str(info))
    for fstype in ("nfs4", "fuse.sshfs", "proc", "cifs"):
        info.write_text("\n".join(lines + [f"33 30 0:42 / {top}/net rw - {fstype} x rw"]) + "\n")
        assert not fdops.export_is_local(str(export), str(info)), fstype
    assert not fdops.export_is_local(str(export), str(tmp_path / "unreadable"))


async def test_sessions_count_requests_in_flight(serve, export: Path) -> None:
    """QD1 runs on the loop; a burst goes to the workers; the count returns to
    where it was, cancelled and failed requests included."""
    (export / "f").write_bytes(b"x" * 65536)
    threads: list[int] = []
    served = await serve()
    client: Client = await served.connect()
    root = await client.attach()
    fid = await client.walk_open(root, ["f"])
    pool = _pool_of(served)
    load = served.server.config.load
    assert pool.load is load  # the harness hands its sessions' count to the back end
    real = os.preadv

    def spy(fd: int, views: list, offset: int) -> int:
        threads.append(threading.get_ident())
        return real(fd, views, offset)

    pool_run = pool.run

    async def run(fn, *args):
        return await pool_run(spy if fn is real else fn, *args)

    pool.run = run  # type: ignore[method-assign]
    loop_thread = threading.get_ident()
    await client.read(fid, 0, 4096)
    assert threads == [loop_thread]
    threads.clear()
    await asyncio.gather(*(client.read(fid, i * 4096, 4096) for i in range(8)))
    assert len(threads) == 8 and any(t != loop_thread for t in threads)
    with pytest.raises(OSError):
        await client.read(root, 0, 10)  # not open: EBADF
    await client.close()
    for _ in range(200):
        if load.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert load.in_flight == 0


def _pool_of(served) -> fdops.WorkerPool:
    backend = served.backend
    assert isinstance(backend, LocalBackend)
    return backend._pool
