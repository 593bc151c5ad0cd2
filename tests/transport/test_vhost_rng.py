"""virtio-rng over the device-agnostic vhost-user layer, driven by the same Python front
end as the 9p device: the proof that the layer carries a device it was not written for."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from ninep.testing.fake_virtqueue import DriverQueue, GuestRam
from ninep.testing.vhost_frontend import ACKED, VhostUserFrontend
from ninep.transport.vhost.messages import (CONFIG_HEADER, PROTOCOL_F_CONFIG, PROTOCOL_FEATURES,
                                            TRANSPORT_FEATURES, Request)
from ninep.transport.vhost.rng import serve_vhost_user_rng

FILL = 0xA5  # what DriverQueue leaves in a writable buffer before the device writes it


@pytest.fixture
async def rng_server(tmp_path):
    path = str(tmp_path / "rng.sock")
    task = asyncio.ensure_future(serve_vhost_user_rng(socket_path=path, listen_fd=None))
    yield path
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not os.path.exists(path)  # the listener removed the socket it created


@pytest.fixture
def ring():
    ram = GuestRam(16 << 20)
    driver = DriverQueue(ram, 64)
    yield ram, driver
    driver.close()
    ram.close()


async def entropy(driver: DriverQueue, sizes: list[int]) -> bytes:
    """One rng request of writable buffers of *sizes*; what the device wrote into them."""
    req = driver.add_chain([], sizes)
    driver.kick()
    assert await driver.wait(req) == sum(sizes)  # used.len covers every writable byte
    return req.data


def looks_random(data: bytes) -> bool:
    """Random, not a fill pattern or a copy: nearly every byte value, no long runs."""
    return len(set(data)) > 200 and data.count(bytes([FILL]) * 8) == 0


async def test_rng_device_features_queues_and_no_config(rng_server):
    fe = await VhostUserFrontend.connect(rng_server)
    try:
        features = await fe.get_features()
        assert features == TRANSPORT_FEATURES == 0x170000000  # no device bits of its own
        protocol = await fe.get_protocol_features()
        assert protocol == PROTOCOL_FEATURES & ~PROTOCOL_F_CONFIG  # no config space to offer
        assert await fe.get_queue_num() == 1
        assert await fe.set_protocol_features(protocol, flags=ACKED) == 0
        # A config space it does not have reads as zeros and cannot be written.
        assert await fe.get_config(0, 8) == bytes(8)
        assert await fe.command(Request.SET_CONFIG, CONFIG_HEADER.pack(0, 4, 0) + b"abcd",
                                flags=ACKED) == 1
        assert await fe.set_features(features | 1, flags=ACKED) == 1  # never offered
        assert await fe.set_features(features, flags=ACKED) == 0
    finally:
        fe.close()


async def test_rng_fills_every_writable_buffer_through_qemus_sequence(rng_server, ring):
    ram, driver = ring
    driver.start()
    fe = await VhostUserFrontend.connect(rng_server)
    try:
        assert await fe.qemu_start(ram, driver, 0, config_reads=0) == b""
        first = await entropy(driver, [4096])
        assert len(first) == 4096 and looks_random(first)
        # Several segments, one of them odd-sized: each is filled, none left as it was.
        sizes = [1000, 4096, 3]
        multi = await entropy(driver, sizes)
        assert len(multi) == sum(sizes)
        assert looks_random(multi[:1000]) and looks_random(multi[1000:5096])
        assert multi[-3:] != bytes([FILL]) * 3
        second = await entropy(driver, [4096])
        assert second != first
        # Many in flight at once, twice, so the 64-entry ring wraps.
        for _ in range(2):
            reqs = [driver.add_chain([], [512]) for _ in range(48)]
            driver.kick()
            lengths = await asyncio.gather(*(driver.wait(r) for r in reqs))
            assert lengths == [512] * 48
            assert len({r.data for r in reqs}) == 48
        assert driver.read_err() == 0
        assert await fe.qemu_stop(driver.index) == 3 + 2 * 48  # GET_VRING_BASE: chains consumed
    finally:
        fe.close()


async def test_rng_reconnect_resumes_the_ring(rng_server, ring):
    ram, driver = ring
    driver.start()
    fe = await VhostUserFrontend.connect(rng_server)
    await fe.qemu_start(ram, driver, 0, config_reads=0)
    assert looks_random(await entropy(driver, [2048]))
    base = await fe.qemu_stop(driver.index)
    fe.close()
    # The next front end (QEMU after a back-end restart) resumes where the ring stopped.
    fe = await VhostUserFrontend.connect(rng_server)
    try:
        await fe.qemu_start(ram, driver, 0, base=base, config_reads=0)
        assert looks_random(await entropy(driver, [2048]))
        assert await fe.qemu_stop(driver.index) == base + 1
    finally:
        fe.close()


def test_the_generic_layer_and_rng_need_nothing_of_9p():
    """The boundary itself: the vhost-user layer and the rng device load without the 9P
    protocol, server or back ends."""
    code = ("import sys, ninep.transport.vhost.rng, ninep.transport.vhost.device, "
            "ninep.transport.vhost.listener\n"
            "print(sorted(m for m in sys.modules if m.startswith(('ninep.server', "
            "'ninep.protocol', 'ninep.backends'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.stdout.strip() == "[]"
