"""The stream transport: listen addresses, framing, bad sizes, disconnects."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from pathlib import Path

import pytest

from ninep.backends.local import LocalBackend
from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import SessionConfig
from ninep.transport.stream import ListenAddress, StreamServer


# --- ListenAddress -------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("unix:/run/x.sock", ListenAddress("unix", path="/run/x.sock")),
    ("tcp:127.0.0.1:564", ListenAddress("tcp", host="127.0.0.1", port=564)),
    ("tcp::564", ListenAddress("tcp", host="127.0.0.1", port=564)),
    ("tcp:[::1]:0", ListenAddress("tcp", host="::1", port=0)),
    ("tcp:localhost:65535", ListenAddress("tcp", host="localhost", port=65535)),
    ("fd:3", ListenAddress("fd", fd=3)),
])
def test_listen_address_parses(text: str, expected: ListenAddress) -> None:
    assert ListenAddress.parse(text) == expected


@pytest.mark.parametrize("text", ["", "unix:", "tcp:", "tcp:host", "tcp:host:port",
                                  "tcp:host:65536", "tcp:host:-1", "fd:", "fd:x", "fd:-1",
                                  "udp:1.2.3.4:5", "/path/only"])
def test_listen_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        ListenAddress.parse(text)


# --- the server on each kind of address ----------------------------------------------------

@pytest.fixture
async def server(export: Path):
    """A StreamServer (not started) over ``export``; closed with its back end."""
    backend = LocalBackend(str(export), threads=2)
    srv = StreamServer(lambda: backend, SessionConfig())
    yield srv
    await srv.close()
    await backend.close()


async def exercise(client: Client, export: Path) -> None:
    """A few real operations: create, write, read back, list, remove."""
    root = await client.attach()
    fid, _ = await client.create(root, "hello.txt")
    assert await client.write(fid, 0, b"hello") == 5
    assert await client.read(fid, 0, 100) == b"hello"
    await client.clunk(fid)
    assert (export / "hello.txt").read_bytes() == b"hello"
    names = {e[3] for e in await client.readdir_all(await client.walk_open(root, []))}
    assert "hello.txt" in names
    await client.unlinkat(root, "hello.txt")
    assert not (export / "hello.txt").exists()


async def test_unix_listener(server: StreamServer, export: Path, sockdir: Path) -> None:
    path = str(sockdir / "s")
    await server.start(ListenAddress.parse(f"unix:{path}"))
    async with await Client.connect_unix(path) as client:
        await exercise(client, export)
    await server.close()
    assert not os.path.exists(path)  # the socket goes away with the server


def bound_unix_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    return sock


async def test_unix_listener_replaces_a_stale_socket(server: StreamServer, export: Path,
                                                     sockdir: Path) -> None:
    path = str(sockdir / "s")
    bound_unix_socket(path).close()  # what a crashed server leaves behind
    await server.start(ListenAddress.parse(f"unix:{path}"))
    async with await Client.connect_unix(path) as client:
        await exercise(client, export)


async def test_unix_listener_never_clobbers_a_file(server: StreamServer, sockdir: Path) -> None:
    path = sockdir / "precious"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        await server.start(ListenAddress.parse(f"unix:{path}"))
    assert path.read_text() == "keep me"


async def test_tcp_listener_on_loopback(server: StreamServer, export: Path) -> None:
    await server.start(ListenAddress.parse("tcp:127.0.0.1:0"))
    host, port = server.sockets[0].getsockname()[:2]
    async with await Client.connect_tcp(host, port) as client:
        await exercise(client, export)
        sock = client.writer.get_extra_info("socket")
        assert sock.getpeername() == (host, port)


async def test_fd_with_a_connected_socket(server: StreamServer, export: Path) -> None:
    ours, theirs = socket.socketpair()
    await server.start(ListenAddress.parse(f"fd:{theirs.detach()}"))
    async with await Client.connect_socket(ours) as client:
        await exercise(client, export)
    # An inherited connection is served once: serve_forever ends with it.
    await asyncio.wait_for(server.serve_forever(), 10)


async def test_cancelling_serve_forever_leaves_connections_to_close(
        server: StreamServer, export: Path, fd_count) -> None:
    """What the CLI does on SIGTERM: cancel serve_forever, then close().  The
    connection must not be cut short mid-cleanup: every fd is released."""
    (export / "f").write_text("x")
    ours, theirs = socket.socketpair()
    before = fd_count()
    await server.start(ListenAddress.parse(f"fd:{theirs.detach()}"))
    client = await Client.connect_socket(ours)
    root = await client.attach()
    await client.walk_open(root, ["f"])
    forever = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0)
    forever.cancel()
    await asyncio.gather(forever, return_exceptions=True)
    assert (await client.getattr(root)).qid.type == p.QTDIR  # still served
    await server.close()
    await client.close()
    assert fd_count() == before - 2  # both ends of the pair, and the file opened meanwhile


async def test_fd_with_a_listening_socket(server: StreamServer, export: Path,
                                          sockdir: Path) -> None:
    path = str(sockdir / "l")
    listener = bound_unix_socket(path)
    listener.listen()
    await server.start(ListenAddress.parse(f"fd:{listener.detach()}"))
    for _ in range(2):
        async with await Client.connect_unix(path) as client:
            await exercise(client, export)


async def test_fd_with_a_datagram_socket_is_refused(server: StreamServer) -> None:
    a, b = socket.socketpair(type=socket.SOCK_DGRAM)
    fd = b.detach()
    with pytest.raises(ValueError, match="stream"):
        await server.start(ListenAddress.parse(f"fd:{fd}"))
    a.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # the server closed what it was handed


async def test_fd_that_is_not_a_socket_is_refused(server: StreamServer, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            await server.start(ListenAddress.parse(f"fd:{fd}"))
    finally:
        os.close(fd)


# --- framing -------------------------------------------------------------------------------

async def test_frames_split_across_writes_and_batched_in_one(served: Client) -> None:
    root = await served.attach()
    frame = p.encode(p.Tgetattr(root, p.GETATTR_BASIC), 40)
    fut = served.start_frame(b"", 40)
    for i in range(len(frame)):
        served.writer.write(frame[i:i + 1])
        await served.writer.drain()
    assert isinstance(await fut, p.Rgetattr)
    batch = b"".join(p.encode(p.Tgetattr(root, 0), tag) for tag in range(50, 60))
    futs = [served.start_frame(b"", tag) for tag in range(50, 60)]
    served.writer.write(batch)
    assert all(isinstance(r, p.Rgetattr) for r in await asyncio.gather(*futs))


@pytest.mark.parametrize("size", [0, 3, 6, 8193, 0xFFFFFFFF])
async def test_bad_size_closes_only_that_connection(serve, caplog, size: int) -> None:
    served = await serve()
    bad = await served.connect(msize=8192)
    good = await served.connect(msize=8192)
    good_root = await good.attach()
    bad_root = await bad.attach()
    _, pending = bad.start(p.Tgetattr(bad_root, 0))
    await pending
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ninep.stream"):
        fut = bad.start_frame(struct.pack("<I", size) + b"\x18\x01\x00" + b"\0" * 12, 1)
        with pytest.raises(ConnectionError):
            await fut
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert f"bad frame size {size}" in caplog.records[0].getMessage()
    with pytest.raises(ConnectionError):
        await bad.rpc(p.Tgetattr(bad_root, 0))
    assert (await good.getattr(good_root)).qid.type == p.QTDIR  # the other one carries on
    assert len(served.server.sessions) == 1


async def test_frame_up_to_msize_is_accepted(serve, export: Path) -> None:
    served = await serve()
    client = await served.connect(msize=8192)
    root = await client.attach()
    fid, _ = await client.create(root, "f")
    data = b"z" * (8192 - 23)
    assert len(p.encode(p.Twrite(fid, 0, data), 1)) == 8192
    assert await client.write(fid, 0, data) == 8192 - p.IOHDRSZ


async def test_disconnect_mid_frame_releases_everything(serve, export: Path, fd_count) -> None:
    (export / "f").write_text("x")
    served = await serve()
    before = fd_count()
    client = await served.connect()
    root = await client.attach()
    for _ in range(3):
        await client.walk_open(root, ["f"])
    frame = p.encode(p.Tgetattr(root, 0), 9)
    client.writer.write(frame[:10])  # half a request, then hang up
    await client.close()
    await asyncio.wait_for(_until_no_sessions(served.server), 10)
    assert fd_count() == before


async def _until_no_sessions(server: StreamServer) -> None:
    while server.sessions:
        await asyncio.sleep(0.005)
    await server.join_connections()


@pytest.mark.parametrize("reply", [
    struct.pack("<I", 3) + b"xyz",
    struct.pack("<IBH", 1 << 30, p.Rversion.TYPE, p.NOTAG),
    struct.pack("<IBHI", 13, p.Rread.TYPE, p.NOTAG, 5) + b"xy",  # count past the end
], ids=["tiny", "huge", "malformed"])
async def test_client_fails_its_requests_on_a_bad_reply(reply: bytes) -> None:
    """The test client never hangs on a broken server: pending and later
    requests get ConnectionError."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    client = Client(reader, writer)
    _, fut = client.start(p.Tversion(8192, "9P2000.L"), tag=p.NOTAG)
    theirs.sendall(reply)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(fut, 10)
    with pytest.raises(ConnectionError):
        client.start(p.Tflush(1))
    await client.close()
    theirs.close()
