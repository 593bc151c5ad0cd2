"""The real ``python -m ninep`` process serving vhost-user, driven by the Python front end."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ninep.protocol import ninep as p
from ninep.testing.fake_virtqueue import split_sizes
from ninep.testing.vhost_frontend import VhostUserGuest

REPO = Path(__file__).resolve().parents[2]
KIB = 1024


def spawn(*args: str, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "ninep", *args], env=env, pass_fds=pass_fds,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


@pytest.fixture
def export(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    return d


@pytest.fixture
def guests():
    made: list[VhostUserGuest] = []
    yield made
    for g in made:
        g.close()


def new_guest(guests, **kwargs) -> VhostUserGuest:
    g = VhostUserGuest.create(**kwargs)
    guests.append(g)
    return g


async def test_cli_trace_sequence_large_io_readdir_and_64_in_flight(tmp_path, export, guests):
    payload = os.urandom(512 * KIB)
    (export / "big").write_bytes(payload)
    (export / "many").mkdir()
    names = {f"file-{i:04d}-{'y' * 50}" for i in range(500)}
    for name in names:
        (export / "many" / name).touch()
    for i in range(64):
        (export / f"small{i}").write_bytes(bytes([i]) * 4096)
    sock = str(tmp_path / "ninep.sock")
    proc = spawn("--export", str(export), "--socket-path", sock, "--tag", "vu9p",
                 "--msize", str(1 << 20))
    try:
        g = new_guest(guests, msize=1 << 20, ram_size=128 << 20)
        await g.connect(sock)
        assert g.config == b"\x04\x00vu9p"
        n = g.ninep
        assert (await n.version()).msize == 1 << 20
        root = await n.attach()
        # 512 KiB in one Tread and one Twrite, zero-copy-shaped (header + 128 pages).
        f = await n.walk(root, ["big"])
        await n.lopen(f)
        assert await n.read(f, 0, 512 * KIB) == payload
        w = await n.walk(root, [])
        await n.lcreate(w, "out.bin", p.DOTL_RDWR)
        assert await n.write(w, 0, payload[::-1]) == 512 * KIB
        await n.clunk(w)
        assert (export / "out.bin").read_bytes() == payload[::-1]
        # A readdir reply scattered over 1 + 16 segments, then the rest of the directory.
        d = await n.walk(root, ["many"])
        await n.lopen(d)
        first = await n.readdir(d, 0, 16 * 4096, pages=16)
        assert len(first) > 300
        got = {e[3] for e in first} | set(await n.readdir_all(d))
        assert got >= names
        # 64 requests on the ring at once.
        fids = []
        for i in range(64):
            fids.append(await n.walk(root, [f"small{i}"]))
            await n.lopen(fids[-1])
        pending = [n.submit(p.Tread(fid, 0, 4096), in_sizes=split_sizes(11 + 4096, 11))
                   for fid in fids]
        assert len(g.driver.pending) == 64
        replies = await asyncio.gather(*(n.result(tag, req) for tag, req in pending))
        assert [r.data for r in replies] == [bytes([i]) * 4096 for i in range(64)]
        assert g.driver.stats.calls > 0
        assert await g.shutdown() == g.driver.avail_idx == g.driver.used_idx
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert not os.path.exists(sock)
    assert "front end connected" in err


async def test_cli_restart_and_crash_then_qemu_reconnects(tmp_path, export, guests):
    (export / "note").write_bytes(b"persistent")
    sock = str(tmp_path / "ninep.sock")
    args = ("--export", str(export), "--socket-path", sock, "--tag", "vu9p")
    g = new_guest(guests, num=32)
    proc = spawn(*args)
    try:
        await g.connect(sock)
        n = g.ninep
        await n.version()
        root = await n.attach()
        for _ in range(40):
            await n.getattr(root)
        base = await g.shutdown()
        assert base == 42
    finally:
        code, err = stop(proc)
    assert code == 0, err
    g.disconnect()

    # A restarted server on the same path; QEMU resumes where GET_VRING_BASE said.
    proc = spawn(*args)
    try:
        await g.connect(sock, base=base)
        n = g.ninep
        await n.version()
        root = await n.attach()
        f = await n.walk(root, ["note"])
        await n.lopen(f)
        assert await n.read(f, 0, 64) == b"persistent"
        assert g.driver.used_idx == base + 5
    finally:
        code, err = stop(proc, signal.SIGKILL)  # a crash: no clean-up, a stale socket
    g.disconnect()
    assert os.path.exists(sock)

    # After a crash QEMU has no GET_VRING_BASE answer; it resumes from the used index.
    proc = spawn(*args)
    try:
        await g.connect(sock, base=g.driver.used_idx)
        n = g.ninep
        await n.version()
        root = await n.attach()
        assert (await n.getattr(root)).qid.type == p.QTDIR
        assert await g.shutdown() == base + 8
    finally:
        code, err = stop(proc)
    assert code == 0, err


async def test_cli_takes_a_listening_fd_from_a_manager(tmp_path, export, guests):
    path = str(tmp_path / "managed.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    fd = listener.fileno()
    proc = spawn("--export", str(export), "--fd", str(fd), "--tag", "managed", pass_fds=(fd,))
    listener.close()
    try:
        g = new_guest(guests, tag="managed")
        await g.connect(path)
        assert g.config == b"\x07\x00managed"
        assert (await g.ninep.version()).version == p.VERSION_9P2000L
        g.disconnect()
        # The next front end on the same handed-over socket.
        g2 = new_guest(guests, tag="managed")
        await g2.connect(path)
        await g2.ninep.version()
        assert isinstance(await g2.ninep.attach(), int)
    finally:
        code, err = stop(proc)
    assert code == 0, err


def test_cli_refuses_a_tag_longer_than_254_bytes(tmp_path, export):
    sock = tmp_path / "x.sock"
    proc = spawn("--export", str(export), "--socket-path", str(sock), "--tag", "t" * 255)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--tag" in lines[0]
    assert not sock.exists()
