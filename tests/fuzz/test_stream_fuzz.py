"""Garbage over a real socket: the stream transport answers what it can parse and
drops the connection on what it cannot, and the server keeps serving others.

Each connection gets a random mix of valid, mutated and junk frames (and
junk size prefixes); whatever comes back must be well-formed 9P, the
connection must end (EOF) or stay answerable, and afterwards no fid or fd
is left behind.
"""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

from ninep.protocol import ninep as p

from security.harness import connect, env_int, fd_count, loop_errors, rpc, serve_inprocess

from .engine import build_export, decode_reply, prelude, random_frames, without_mknod_capability

CONNECTIONS = env_int("NINEP_STREAM_FUZZ_CONNECTIONS", 150)


async def read_replies(reader: asyncio.StreamReader, timeout: float) -> tuple[list[bytes], bool]:
    """Replies until EOF (True) or *timeout* of silence (False)."""
    frames = []
    while True:
        try:
            head = await asyncio.wait_for(reader.readexactly(4), timeout)
        except asyncio.TimeoutError:
            return frames, False
        except (asyncio.IncompleteReadError, ConnectionError):
            return frames, True
        (size,) = struct.unpack("<I", head)
        assert p.HEADER_SIZE <= size <= 65536, f"server sent a frame of size {size}"
        frames.append(head + await reader.readexactly(size - 4))


async def test_stream_garbage(tmp_path: Path) -> None:
    rng = random.Random(0x57)
    fds = fd_count()
    with without_mknod_capability(), loop_errors() as errors:
        export = build_export(tmp_path)
        async with serve_inprocess(export) as server:
            dropped = 0
            for _ in range(CONNECTIONS):
                reader, writer = await asyncio.open_unix_connection(server.socket_path)
                stream = b"".join(prelude()) + b"".join(random_frames(rng, rng.randrange(1, 30)))
                if rng.random() < 0.3:  # a junk size prefix somewhere
                    cut = rng.randrange(len(stream))
                    stream = stream[:cut] + struct.pack("<I", rng.choice(
                        [0, 3, 6, 2**31, 2**32 - 1, 70000])) + stream[cut:]
                writer.write(stream)
                frames, eof = await read_replies(reader, 0.1)
                dropped += eof
                for frame in frames:
                    decode_reply(frame)  # well-formed, or ProtocolError fails the test
                writer.close()
            good = await connect(server.socket_path, tap=False)
            assert (await rpc(good, p.Tgetattr(await good.attach(), p.GETATTR_BASIC))).qid.type \
                == p.QTDIR
            await good.close()
            await server.wait_idle()
            assert server.live_nodes() == 0
    assert errors == []
    assert fd_count() == fds
    assert 0 < dropped < CONNECTIONS, "expected both dropped and surviving connections"
