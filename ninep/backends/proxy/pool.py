"""The proxy back end's pool of connections to its helper.

The protocol has no tags, so requests on one connection are strictly in
order.  A pool of connections (``pool_size``) lets one slow
request not stall the others; each request takes a free connection.  If the
helper dies, every request in flight gets EIO and the server stays up; the
next request reconnects (and a helper this back end started is started
again).  QEMU's helper serves a single connection: with ``-s`` it accepts
one, closes its listening socket and exits when that connection ends.  So
when a further connection is refused while others live, or (for a helper we
did not start) its probing ``T_LSTAT`` stays unanswered for
:attr:`HelperPool.probe_timeout` seconds, the pool goes on with the
connections it has: one, for QEMU's helper.  Helpers this back end starts
can instead be started one per connection with ``-f``
(``per_connection=True``), which gives QEMU's helper a full pool.
"""

from __future__ import annotations

import asyncio
import logging
import stat as st_
from typing import NoReturn

from ...protocol import proxy as P
from .channel import HelperConnection, HelperLost, Replies, expect_reply
from .connectors import Connector

log = logging.getLogger("ninep.proxy")


class _SlotDropped(Exception):
    """The helper refused one more connection: the pool stays smaller."""


class HelperPool:
    """Up to *size* connections; a request takes a free one, or waits.

    A free slot holds an idle connection or ``None`` (connect on use).  When
    a connection finds the helper gone, every idle connection of that
    generation is dropped too, so a restarted helper is used at once.

    A helper may refuse more connections than it has (QEMU's accepts one,
    then closes its listening socket, or leaves later ones unanswered): a
    further connection that is refused, or whose probe stays unanswered,
    retires its slot, and the pool works with the connections it has until
    they are all gone (a new helper may serve more).
    """

    #: Seconds a probed extra connection may stay unanswered (see the module doc).
    probe_timeout = 3.0

    def __init__(self, connector: Connector, size: int) -> None:
        self.connector = connector
        self.size = min(size, connector.max_connections or size)
        self._slots: asyncio.Queue[HelperConnection | None] = asyncio.Queue()
        for _ in range(self.size):
            self._slots.put_nowait(None)
        self._live: set[HelperConnection] = set()
        self._generation = 0
        self._retired = 0  # slots set aside while the helper takes no more connections
        self._opening = asyncio.Lock()
        self._warned_unreachable = False

    async def start(self, timeout: float = 30.0) -> P.ProxyStat:
        """Make the first connection and prove that the helper serves with a
        T_LSTAT of its root, which is returned; one-line OSErrors say why not.
        A helper that serves any number gets all its connections now."""
        where = self.connector.where
        try:
            sock = await self.connector.connect()
        except OSError as exc:
            raise OSError(f"cannot reach the {where}: {exc.strerror or exc}") from None
        conn = HelperConnection(sock)
        try:
            reply, _ = (await asyncio.wait_for(conn.call([P.Lstat(b"/")]), timeout))[0]
            root = expect_reply(reply, P.ProxyStat)
        except (TimeoutError, OSError) as exc:
            conn.close()
            why = "no answer" if isinstance(exc, asyncio.TimeoutError) else exc.strerror or exc
            raise OSError(f"the {where} does not serve: {why}") from None
        if not st_.S_ISDIR(root.st_mode):
            conn.close()
            raise OSError(f"the {where} exports no directory")
        self._adopt(conn)
        if self.connector.open_all_at_start:  # a fixed set of fds from the start
            for _ in range(self.size - 1):
                self._adopt(HelperConnection(await self.connector.connect()))
        return root

    def _adopt(self, conn: HelperConnection) -> None:
        """Put a connection made outside :meth:`_take` into a free slot."""
        self._slots.get_nowait()
        conn.generation = self._generation
        self._live.add(conn)
        self._slots.put_nowait(conn)

    async def call(self, *requests: P.Request) -> Replies:
        conn = await self._take()
        try:
            return await conn.call(requests)
        finally:
            self._give_back(conn)

    async def _take(self) -> HelperConnection:
        while True:
            conn = await self._slots.get()
            if conn is not None:
                if conn.generation == self._generation and conn.idle_and_alive():
                    return conn
                self._forget(conn)
            try:
                async with self._opening:  # one at a time: a refusal decides for the rest
                    if self._retired and self._live:
                        self._retired += 1  # wait for a live connection instead
                        continue
                    return await self._open()
            except _SlotDropped:
                self._retired += 1
                continue
            except BaseException:
                self._slots.put_nowait(None)
                raise

    async def _open(self) -> HelperConnection:
        """A new connection; _SlotDropped when the helper serves no more than
        it has, HelperLost when it serves none at all."""
        try:
            sock = await self.connector.connect()
        except OSError as exc:
            if self._live:
                self._refused(exc.strerror or str(exc))
            if not self._warned_unreachable:
                self._warned_unreachable = True
                log.warning("%s is unreachable: %s", self.connector.where, exc.strerror or exc)
            raise HelperLost(f"{self.connector.where} is unreachable: "
                             f"{exc.strerror or exc}") from None
        self._warned_unreachable = False
        conn = HelperConnection(sock, self._generation)
        if self._live and self.connector.may_serve_one:
            try:
                await asyncio.wait_for(conn.call([P.Lstat(b"/")]), self.probe_timeout)
            except (TimeoutError, OSError):
                conn.close()
                self._refused("no answer")
        self._live.add(conn)
        return conn

    def _refused(self, why: str) -> NoReturn:
        log.warning("%s takes no further connection (%s); going on with %d (QEMU's "
                    "virtfs-proxy-helper serves one)", self.connector.where, why,
                    len(self._live))
        raise _SlotDropped()

    def _forget(self, conn: HelperConnection) -> None:
        if not conn.broken:
            conn.close()
        self._live.discard(conn)
        if not self._live and self._retired:  # all gone: the next helper may serve more
            for _ in range(self._retired):
                self._slots.put_nowait(None)
            self._retired = 0

    def _give_back(self, conn: HelperConnection) -> None:
        if conn.broken:
            if conn.helper_gone and conn.generation == self._generation:
                self._generation += 1  # its siblings are dead too: reconnect them on use
            self._forget(conn)
            self._slots.put_nowait(None)
        else:
            self._slots.put_nowait(conn)

    def close(self) -> None:
        for conn in list(self._live):
            self._forget(conn)
        self.connector.close()
