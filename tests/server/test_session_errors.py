"""Bad input and refusals: unknown types, malformed bodies, read-only exports,
reply buffers that are too small.  The session always answers and survives."""

from __future__ import annotations

import asyncio
import errno
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ninep.backends.local import LocalBackend
from ninep.client import Client
from ninep.protocol import ninep as p
from ninep.server.session import Session, SessionConfig

from session_helpers import Direct


def raw(msgtype: int, tag: int, body: bytes) -> bytes:
    return p.HEADER.pack(p.HEADER_SIZE + len(body), msgtype, tag) + body


async def send_raw(client: Client, msgtype: int, body: bytes) -> object:
    tag = client.new_tag()
    return await client.start_frame(raw(msgtype, tag, body), tag)


# --- unknown types and malformed bodies ----------------------------------------------------

@pytest.mark.parametrize("msgtype", [0, 6, 106, 200, 255, p.Rversion.TYPE, p.Rlerror.TYPE,
                                     p.Rread.TYPE])
async def test_unknown_or_reply_types_get_eopnotsupp(served: Client, msgtype: int) -> None:
    root = await served.attach()
    assert await send_raw(served, msgtype, b"\x01\x02\x03") == p.Rlerror(errno.EOPNOTSUPP)
    assert (await served.getattr(root)).qid.type == p.QTDIR


@pytest.mark.parametrize("msgtype,body", [
    (p.Tgetattr.TYPE, b"\x00\x00\x00"),                                   # truncated
    (p.Tgetattr.TYPE, struct.pack("<IQ", 1, 0) + b"junk"),                # trailing bytes
    (p.Twalk.TYPE, struct.pack("<IIH", 1, 2, 1) + struct.pack("<H", 9) + b"ab"),  # string len
    (p.Twalk.TYPE, struct.pack("<IIH", 1, 2, 3) + struct.pack("<H", 1) + b"a"),   # name count
    (p.Tread.TYPE, struct.pack("<IQ", 1, 0)),                             # no count
    (p.Tread.TYPE, struct.pack("<IQIB", 1, 0, 10, 0)),                    # one byte too many
    (p.Twrite.TYPE, struct.pack("<IQ", 1, 0)),                            # head truncated
    (p.Twrite.TYPE, struct.pack("<IQI", 1, 0, 10) + b"abc"),              # count > data
    (p.Twrite.TYPE, struct.pack("<IQI", 1, 0, 1) + b"abc"),               # count < data
    (p.Treaddir.TYPE, b""),
    (p.Tflush.TYPE, b""),
    (p.Tflush.TYPE, b"\x01\x00\x00"),
    (p.Tversion.TYPE, struct.pack("<I", 8192)),
    (p.Tattach.TYPE, struct.pack("<II", 9, p.NOFID) + b"\xff\xff"),
    (p.Tlock.TYPE, struct.pack("<IB", 1, 0)),
])
async def test_malformed_bodies_get_einval_and_the_session_survives(
        served: Client, export: Path, msgtype: int, body: bytes) -> None:
    root = await served.attach()
    assert root == 1
    assert await send_raw(served, msgtype, body) == p.Rlerror(errno.EINVAL)
    assert (await served.getattr(root)).qid.type == p.QTDIR
    assert await served.rpc(p.Tflush(77)) == p.Rflush()


async def test_out_of_range_numbers_get_einval(served: Client, export: Path,
                                               expect_errno) -> None:
    """u64 offsets and sizes the host's signed types cannot hold."""
    (export / "f").write_text("x")
    root = await served.attach()
    fid = await served.walk_open(root, ["f"], p.DOTL_RDWR)
    top = 2**64 - 1
    assert await expect_errno(served, p.Tread(fid, top, 10)) == errno.EINVAL
    assert await expect_errno(served, p.Twrite(fid, top, b"x")) == errno.EINVAL
    assert await expect_errno(served, p.Tsetattr(fid, p.SETATTR_SIZE, 0, 0, 0, top, 0, 0, 0,
                                                 0)) == errno.EINVAL
    dirfid = await served.walk_open(root, [])
    assert await expect_errno(served, p.Treaddir(dirfid, top, 100)) == errno.EINVAL
    assert (export / "f").read_text() == "x"


async def test_fid_table_is_capped(serve, expect_errno) -> None:
    client = await (await serve(SessionConfig(max_fids=3))).connect()
    root = await client.attach()
    await client.walk(root, [])
    await client.walk(root, [])
    assert await expect_errno(client, p.Twalk(root, 50, [])) == errno.EMFILE
    await client.clunk(root)
    await client.rpc(p.Twalk(2, 50, []))


# --- read-only exports -----------------------------------------------------------------------

@pytest.fixture
async def readonly(serve, export: Path) -> tuple[Client, int]:
    (export / "d").mkdir()
    (export / "f").write_text("data")
    os.setxattr(export / "f", "user.k", b"v") if _xattrs_ok(export / "f") else None
    client = await (await serve(SessionConfig(readonly=True))).connect()
    return client, await client.attach()


def _xattrs_ok(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"")
        os.removexattr(path, "user.probe")
        return True
    except OSError:
        return False


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (
                st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, st.st_nlink)
    return out


async def test_readonly_refuses_every_modifying_op(readonly, export: Path, expect_errno) -> None:
    client, root = readonly
    before = _snapshot(export)
    d = await client.walk(root, ["d"])
    f = await client.walk(root, ["f"])
    refused = [
        p.Tlcreate(await client.walk(root, []), "new", p.DOTL_RDWR, 0o644, 0),
        p.Tmkdir(root, "new", 0o755, 0),
        p.Tsymlink(root, "new", "f", 0),
        p.Tmknod(root, "new", 0o10644, 0, 0, 0),
        p.Tlink(root, f, "new"),
        p.Trename(f, d, "new"),
        p.Trenameat(root, "f", d, "new"),
        p.Tunlinkat(root, "f", 0),
        p.Tsetattr(f, p.SETATTR_MODE, 0o777, 0, 0, 0, 0, 0, 0, 0),
        p.Tsetattr(f, p.SETATTR_SIZE, 0, 0, 0, 0, 0, 0, 0, 0),
        p.Txattrcreate(await client.walk(root, ["f"]), "user.k", 0, 0),
        p.Tlopen(await client.walk(root, ["f"]), p.DOTL_WRONLY),
        p.Tlopen(await client.walk(root, ["f"]), p.DOTL_RDWR),
        p.Tlopen(await client.walk(root, ["f"]), p.DOTL_RDONLY | p.DOTL_TRUNC),
        p.Tremove(await client.walk(root, ["f"])),
    ]
    for msg in refused:
        assert await expect_errno(client, msg) == errno.EROFS, msg
    assert _snapshot(export) == before


async def test_readonly_remove_still_frees_the_fid(readonly, expect_errno) -> None:
    client, root = readonly
    f = await client.walk(root, ["f"])
    assert await expect_errno(client, p.Tremove(f)) == errno.EROFS
    assert await expect_errno(client, p.Tgetattr(f, 0)) == errno.EBADF


async def test_readonly_still_reads(readonly, export: Path) -> None:
    client, root = readonly
    f = await client.walk_open(root, ["f"])
    assert await client.read(f, 0, 100) == b"data"
    names = {e[3] for e in await client.readdir_all(await client.walk_open(root, []))}
    assert {"d", "f"} <= names
    assert (await client.rpc(p.Tstatfs(root))).bsize > 0
    if _xattrs_ok(export / "f"):
        assert (await client.rpc(p.Txattrwalk(root, 90, ""))).size >= 0


# --- the session without a transport ------------------------------------------------------

async def test_size_field_not_matching_the_request_is_einval(direct: Direct) -> None:
    frame = p.encode(p.Tgetattr(0, 0), 5)
    assert await direct.frame(frame + b"\0") == (5, p.Rlerror(errno.EINVAL))
    assert await direct.frame(frame[:-1]) == (5, p.Rlerror(errno.EINVAL))
    assert isinstance(await direct.call(p.Tgetattr(0, 0), tag=5), p.Rgetattr)


async def test_request_shorter_than_a_header_is_einval_notag(direct: Direct) -> None:
    assert await direct.frame(b"\x05\x00\x00\x00\x64") == (p.NOTAG, p.Rlerror(errno.EINVAL))


async def test_read_is_clamped_to_the_reply_buffer(direct: Direct, export: Path) -> None:
    (export / "f").write_bytes(bytes(range(256)) * 4)
    await direct.ok(p.Twalk(0, 1, ["f"]))
    await direct.ok(p.Tlopen(1, p.DOTL_RDONLY))
    reply = await direct.ok(p.Tread(1, 0, 1000), capacity=100)
    assert reply.data == (bytes(range(256)) * 4)[:100 - 11]


async def test_readdir_is_clamped_to_the_reply_buffer(direct: Direct, export: Path) -> None:
    for i in range(30):
        (export / f"n{i:02d}").touch()
    await direct.ok(p.Twalk(0, 1, []))
    await direct.ok(p.Tlopen(1, p.DOTL_RDONLY))
    reply = await direct.ok(p.Treaddir(1, 0, 8192), capacity=200)
    assert 0 < len(reply.data) <= 200 - 11


async def test_reply_larger_than_the_buffer_is_erange(direct: Direct, export: Path) -> None:
    os.symlink("x" * 200, export / "l")
    await direct.ok(p.Twalk(0, 1, ["l"]))
    assert await direct.call(p.Treadlink(1), capacity=100) == p.Rlerror(errno.ERANGE)
    assert await direct.call(p.Treadlink(1)) == p.Rreadlink("x" * 200)


async def test_session_refuses_requests_after_close(export: Path) -> None:
    """A closed session still answers (a virtqueue must get its chain back) but
    never reaches the back end."""
    backend = LocalBackend(str(export))
    session = Session(backend)
    direct = Direct(session)
    await session.close()
    sink = direct.submit(p.encode(p.Tattach(0, p.NOFID, "", "", 0), 1))
    assert p.decode(sink.reply.result()) == (1, p.Rlerror(errno.ECONNABORTED))
    assert session.closed and len(session.fids) == 0
    await backend.close()


# --- fuzz: random requests always get exactly one well-formed reply ------------------------

_REQUEST_TYPES = sorted(t for t, spec in p.BY_TYPE.items() if spec.cls.__name__.startswith("T"))


async def _one_random_request(export: str, msgtype: int, tag: int, body: bytes) -> None:
    backend = LocalBackend(export, threads=1)
    session = Session(backend, SessionConfig())
    direct = Direct(session)
    try:
        await direct.ok(p.Tattach(0, p.NOFID, "", "", 0), tag=2)
        await direct.ok(p.Twalk(0, 1, ["f"]), tag=2)
        sink = direct.submit(raw(msgtype, tag, body))
        reply_tag, reply = p.decode(await asyncio.wait_for(sink.reply, 10))
        assert reply_tag == tag
        expected = p.NAMES.get(msgtype + 1, "") if msgtype in _REQUEST_TYPES else ""
        assert type(reply).__name__ in ("Rlerror", expected)
        if isinstance(reply, p.Rlerror):
            assert reply.ecode > 0
    finally:
        await session.close()
        await backend.close()


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_REQUEST_TYPES + [0, 6, 201]), st.integers(0, 0xFFFE),
       st.binary(max_size=40))
def test_random_requests_get_one_wellformed_reply_and_leak_nothing(msgtype: int, tag: int,
                                                                   body: bytes) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    with tempfile.TemporaryDirectory() as export:
        Path(export, "f").write_text("x")
        asyncio.run(_one_random_request(export, msgtype, tag, body))
    assert len(os.listdir("/proc/self/fd")) == fds
