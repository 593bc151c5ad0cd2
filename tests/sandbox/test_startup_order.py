"""Start-up order: every socket listens first, nothing is served before confinement."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from ninep import cli
from ninep.transport import vhost_user
from ninep.protocol import ninep as p
from ninep.sandbox.mounts import SocketFiles
from ninep.transport.stream import ListenAddress, StreamServer


@pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_no_connection_is_served_before_the_process_is_confined(
        runner: Callable[[Coroutine[Any, Any, None]], None], export: Path, sockdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client of the first listener connects (and sends Tversion) while the
    second listener is being opened; it must be accepted only after confine(),
    on either event loop (the command uses uvloop's).  So must an inherited
    connection (``--listen fd:N`` of a connected socket) be served."""
    first, second, vhost = (str(sockdir / n) for n in ("first.sock", "second.sock", "vhost.sock"))
    events: list[str] = []
    probe: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    start = StreamServer.start

    async def start_slowly(self: StreamServer, address: ListenAddress, **kw: Any) -> None:
        if address.path == second:
            reader, writer = await asyncio.open_unix_connection(first)
            writer.write(p.encode(p.Tversion(8192, "9P2000.L"), p.NOTAG))
            probe.append((reader, writer))
            await asyncio.sleep(0.3)  # the loop runs: a serving listener would accept now
        await start(self, address, **kw)

    connection = StreamServer._connection

    def accepted(self: StreamServer) -> Any:
        events.append("accepted")
        return connection(self)

    real_vhost = vhost_user.serve_vhost_user

    async def vhost_accepting(*args: Any, **kw: Any) -> None:
        events.append("vhost accepting")
        await real_vhost(*args, **kw)

    def confine(*args: Any) -> SocketFiles:
        events.append("confined")
        return SocketFiles([])

    monkeypatch.setattr(StreamServer, "start", start_slowly)
    monkeypatch.setattr(StreamServer, "_connection", accepted)
    # cli imports it lazily, from its module
    monkeypatch.setattr(vhost_user, "serve_vhost_user", vhost_accepting)
    monkeypatch.setattr(cli, "confine", confine)
    inherited, client_end = socket.socketpair()
    client_end.sendall(p.encode(p.Tversion(8192, "9P2000.L"), p.NOTAG))
    args = cli.parse_args(["--export", str(export), "--listen", f"unix:{first}",
                           "--listen", f"unix:{second}", "--listen", f"fd:{inherited.detach()}",
                           "--socket-path", vhost, "--sandbox", "none", "--seccomp", "none"])

    async def serve_and_probe() -> None:
        serving = asyncio.ensure_future(cli.serve(args))
        try:
            for _ in range(500):
                if probe:
                    break
                await asyncio.sleep(0.01)
            reader, writer = probe[0]
            size, = struct.unpack("<I", await asyncio.wait_for(reader.readexactly(4), 20))
            reply = await reader.readexactly(size - 4)
            assert reply[0] == p.Rversion.TYPE
            writer.close()
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    try:
        runner(serve_and_probe())
        client_end.settimeout(20)
        assert client_end.recv(4)  # the inherited connection was served too
    finally:
        client_end.close()
    assert events[0] == "confined", events
    assert events.count("accepted") == 2 and "vhost accepting" in events, events
