"""Plain 9P2000 against an independent implementation: python-9p, whose wire
codec is plan9port's C converters (convM2S/convS2M, convM2D/convD2M).

Its synchronous client talks to a real ninep server over a Unix socket, and
its codec and ours must agree byte for byte on every message and stat both
have (it has no 9P2000.u; the shared messages are the same bytes in .u).
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import py9p  # python-9p, in the test extra
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.protocol import dotu as u
from ninep.protocol import ninep as p


async def in_thread(served_path: str, work: Callable[[Any], Any]) -> Any:
    """Run *work(client)* with a plan9port-codec client of the server on *served_path*."""
    def run() -> Any:
        with py9p.Client.connect_unix(served_path, msize=65536) as client:
            return work(client)
    return await asyncio.to_thread(run)


def _nulldir(**changes: Any) -> bytes:
    """Plan 9's nulldir (every field "don't touch") with *changes*, on the wire.

    Encoded by our codec: python-9p refuses a length past 2^63 - 1, and the
    "don't touch" length is all ones (the stat tests below show both codecs
    agree on everything python-9p can express)."""
    return u.encode_dir(u.DONT_TOUCH_PLAIN._replace(**changes))


def _dirs(data: bytes) -> list[Any]:
    """A directory read's stats, each cut by its size[2] and decoded by plan9port."""
    out, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("<H", data, pos)
        out.append(py9p.decode_dir(data[pos:pos + 2 + size]))
        pos += 2 + size
    return out


async def test_a_plan9port_client_works_a_session(serve, export: Path) -> None:
    (export / "hello").write_bytes(b"hello, plan 9\n")
    (export / "sub").mkdir()
    served = await serve()

    def work(c: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"version": c.negotiate().version}
        c.attach(0, uname="glenda")
        c.walk(0, 1, "hello")
        c.open(1, int(py9p.OREAD))
        out["read"] = c.read(1, 100)
        out["stat"] = c.stat(1)
        c.clunk(1)
        c.walk(0, 2, ())
        qid, _ = c.create(2, "new", 0o640, int(py9p.ORDWR))
        out["create_qid"] = qid
        out["written"] = c.write(2, b"written by plan9port")
        c.wstat(2, _nulldir(name="renamed", mode=0o600))
        out["renamed"] = c.stat(2)
        c.clunk(2)
        c.walk(0, 3, ())
        c.open(3, int(py9p.OREAD))
        data, offset = b"", 0
        while chunk := c.read(3, 200, offset):
            data, offset = data + chunk, offset + len(chunk)
        out["listing"] = _dirs(data)
        c.walk(0, 4, ())
        with pytest.raises(py9p.RemoteError) as info:
            c.walk(4, 5, "missing")
        out["error"] = str(info.value)
        c.walk(0, 6, "sub")
        c.remove(6)
        return out

    out = await in_thread(served.path, work)
    assert out["version"] == "9P2000"
    assert out["read"] == b"hello, plan 9\n"
    got = out["stat"]
    assert (got.name, got.length) == ("hello", 14)
    assert got.mode == stat.S_IMODE(os.stat(export / "hello").st_mode)
    assert got.qid.path == os.stat(export / "hello").st_ino
    assert out["written"] == 20
    assert (export / "renamed").read_bytes() == b"written by plan9port"
    assert (out["renamed"].name, out["renamed"].mode) == ("renamed", 0o600)
    assert {d.name for d in out["listing"]} == {"hello", "renamed", "sub"}
    assert os.strerror(errno.ENOENT) in out["error"]
    assert not (export / "sub").exists()


# --- the two codecs agree byte for byte -------------------------------------------------------

#: python-9p passes strings as C strings: no NUL.
_NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
#: python-9p's stat length is a signed 64-bit integer.
_LENGTH = st.integers(0, 2**63 - 1)
_U32 = st.integers(0, 0xFFFFFFFF)
_QID = st.tuples(st.integers(0, 0xFF), _U32, st.integers(0, 2**64 - 1))


def _ours_and_theirs(qid: tuple[int, int, int]) -> tuple[p.Qid, Any]:
    return p.Qid(*qid), py9p.Qid(type=qid[0], vers=qid[1], path=qid[2])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 0xFFFF), _U32, _QID, _U32, _U32, _U32, _LENGTH, _NAME, _NAME, _NAME, _NAME)
def test_stats_are_the_same_bytes(typ: int, dev: int, qid: tuple[int, int, int], mode: int,
                                  atime: int, mtime: int, length: int, name: str, uid: str,
                                  gid: str, muid: str) -> None:
    ours_qid, their_qid = _ours_and_theirs(qid)
    ours = u.Dir(typ, dev, ours_qid, mode, atime, mtime, length, name, uid, gid, muid)
    theirs = py9p.Dir(type=typ, dev=dev, qid=their_qid, mode=mode, atime=atime, mtime=mtime,
                      length=length, name=name, uid=uid, gid=gid, muid=muid)
    assert u.encode_dir(ours) == py9p.encode_dir(theirs)
    assert py9p.decode_dir(u.encode_dir(ours)) == theirs


def _pairs(tag: int, fid: int, n: int, name: str, data: bytes,
           qid: tuple[int, int, int]) -> list[tuple[Any, Any]]:
    """(our message, theirs) for every message of plain 9P2000 but stats and auth."""
    oq, tq = _ours_and_theirs(qid)
    return [
        (p.Tversion(n, "9P2000"), py9p.Tversion(msize=n, version="9P2000", tag=tag)),
        (p.Rversion(n, name), py9p.Rversion(msize=n, version=name, tag=tag)),
        (u.TattachPlain(fid, n, name, name), py9p.Tattach(fid=fid, afid=n, uname=name, aname=name,
                                                          tag=tag)),
        (p.Rattach(oq), py9p.Rattach(qid=tq, tag=tag)),
        (u.RerrorPlain(name), py9p.Rerror(ename=name, tag=tag)),
        (p.Tflush(n & 0xFFFF), py9p.Tflush(oldtag=n & 0xFFFF, tag=tag)),
        (p.Twalk(fid, n, [name, name]), py9p.Twalk(fid=fid, newfid=n, wname=(name, name), tag=tag)),
        (p.Rwalk([oq]), py9p.Rwalk(wqid=(tq,), tag=tag)),
        (u.Topen(fid, n & 0xFF), py9p.Topen(fid=fid, mode=n & 0xFF, tag=tag)),
        (u.Ropen(oq, n), py9p.Ropen(qid=tq, iounit=n, tag=tag)),
        (u.TcreatePlain(fid, name, n, 2), py9p.Tcreate(fid=fid, name=name, perm=n, mode=2, tag=tag)),
        (u.Rcreate(oq, n), py9p.Rcreate(qid=tq, iounit=n, tag=tag)),
        (p.Tread(fid, n, n), py9p.Tread(fid=fid, offset=n, count=n, tag=tag)),
        (p.Rread(data), py9p.Rread(data=data, tag=tag)),
        (p.Twrite(fid, n, data), py9p.Twrite(fid=fid, offset=n, data=data, tag=tag)),
        (p.Rwrite(n), py9p.Rwrite(count=n, tag=tag)),
        (p.Tclunk(fid), py9p.Tclunk(fid=fid, tag=tag)),
        (p.Tremove(fid), py9p.Tremove(fid=fid, tag=tag)),
        (u.Tstat(fid), py9p.Tstat(fid=fid, tag=tag)),
        (u.Rwstat(), py9p.Rwstat(tag=tag)),
    ]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 0xFFFE), _U32, _U32, _NAME, st.binary(max_size=64), _QID)
def test_messages_are_the_same_bytes(tag: int, fid: int, n: int, name: str, data: bytes,
                                     qid: tuple[int, int, int]) -> None:
    for ours, theirs in _pairs(tag, fid, n, name, data, qid):
        frame = p.encode(ours, tag)
        assert frame == py9p.encode_message(theirs), type(ours).__name__
        assert u.PLAIN.decode(frame) == (tag, ours)
        assert py9p.decode_message(frame) == theirs
