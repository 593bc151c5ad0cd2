"""QEMU proxy protocol: byte-exact vectors, round trips, malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.protocol import proxy as P


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


# --- hand-written vectors ---------------------------------------------------------------
# header {u32 type; u32 size}, little-endian; s = u16 length + bytes.

REQUEST_VECTORS = [
    # T_OPEN "sd": path, flags
    (P.Open(b"/a", 2),
     "02000000 08000000" "0200 2f61" "02000000"),
    # T_CREATE "sdddd": path, flags, mode, uid, gid
    (P.Create(b"/f", 0x41, 0o644, 1234, 5678),
     "03000000 14000000" "0200 2f66" "41000000" "a4010000" "d2040000" "2e160000"),
    # T_MKNOD "ddsdq": uid, gid, path, mode, rdev
    (P.Mknod(1, 2, b"/n", 0o10644, 0x0103),
     "04000000 18000000" "01000000" "02000000" "0200 2f6e" "a4110000" "0301000000000000"),
    # T_MKDIR "ddsd": uid, gid, path, mode
    (P.Mkdir(0, 0, b"/d", 0o755),
     "05000000 10000000" "00000000" "00000000" "0200 2f64" "ed010000"),
    # T_SYMLINK "ddss": uid, gid, target, path
    (P.Symlink(7, 8, b"t", b"/l"),
     "06000000 0f000000" "07000000" "08000000" "0100 74" "0200 2f6c"),
    # T_LINK "ss": oldpath, newpath
    (P.Link(b"/a", b"/b"),
     "07000000 08000000" "0200 2f61" "0200 2f62"),
    # T_LSTAT "s"
    (P.Lstat(b"/"),
     "08000000 03000000" "0100 2f"),
    # T_READLINK "sd": path, size
    (P.Readlink(b"/l", 4096),
     "09000000 08000000" "0200 2f6c" "00100000"),
    # T_STATFS "s"
    (P.Statfs(b""),
     "0a000000 02000000" "0000"),
    # T_CHMOD "sd"
    (P.Chmod(b"/f", 0o4755),
     "0b000000 08000000" "0200 2f66" "ed090000"),
    # T_CHOWN "sdd"
    (P.Chown(b"/f", 0xFFFFFFFF, 100),
     "0c000000 0c000000" "0200 2f66" "ffffffff" "64000000"),
    # T_TRUNCATE "sq"
    (P.Truncate(b"/f", 0x100000001),
     "0d000000 0c000000" "0200 2f66" "0100000001000000"),
    # T_UTIME "sqqqq": path, atime sec, nsec, mtime sec, nsec (UTIME_OMIT / UTIME_NOW)
    (P.Utime(b"/x", 1, P.UTIME_OMIT, -2, P.UTIME_NOW),
     "0e000000 24000000" "0200 2f78" "0100000000000000" "feffff3f00000000"
     "feffffffffffffff" "ffffff3f00000000"),
    # T_RENAME "ss"
    (P.Rename(b"/a", b"/bc"),
     "0f000000 09000000" "0200 2f61" "0300 2f6263"),
    # T_REMOVE "s"
    (P.Remove(b"/a"),
     "10000000 04000000" "0200 2f61"),
    # T_LGETXATTR "dss": size, path, name
    (P.Lgetxattr(64, b"/x", b"user.a"),
     "11000000 10000000" "40000000" "0200 2f78" "0600 757365722e61"),
    # T_LLISTXATTR "ds": size, path
    (P.Llistxattr(0, b"/x"),
     "12000000 08000000" "00000000" "0200 2f78"),
    # T_LSETXATTR "sssdd": path, name, value, size, flags
    (P.Lsetxattr(b"/x", b"user.a", b"v", 1, 1),
     "13000000 17000000" "0200 2f78" "0600 757365722e61" "0100 76" "01000000" "01000000"),
    # T_LREMOVEXATTR "ss": path, name
    (P.Lremovexattr(b"/x", b"user.a"),
     "14000000 0c000000" "0200 2f78" "0600 757365722e61"),
    # T_GETVERSION "s"
    (P.Getversion(b"/"),
     "15000000 03000000" "0100 2f"),
]

STAT = P.ProxyStat(st_dev=1, st_ino=2, st_nlink=3, st_mode=0o100644, st_uid=5, st_gid=6,
                   st_rdev=7, st_size=8, st_blksize=9, st_blocks=10, st_atim_sec=11,
                   st_atim_nsec=12, st_mtim_sec=13, st_mtim_nsec=14, st_ctim_sec=15,
                   st_ctim_nsec=16)
STAT_BYTES = h(
    "00000000 74000000"                  # T_SUCCESS, 116 bytes
    "0100000000000000"                   # q dev
    "0200000000000000"                   # q ino
    "0300000000000000"                   # q nlink
    "a4810000"                           # d mode
    "05000000"                           # d uid
    "06000000"                           # d gid
    "0700000000000000"                   # q rdev
    "0800000000000000"                   # q size
    "0900000000000000"                   # q blksize
    "0a00000000000000"                   # q blocks
    "0b00000000000000" "0c00000000000000"   # atime sec, nsec
    "0d00000000000000" "0e00000000000000"   # mtime
    "0f00000000000000" "1000000000000000")  # ctime

STATFS = P.ProxyStatFS(f_type=0xEF53, f_bsize=4096, f_blocks=3, f_bfree=4, f_bavail=5,
                       f_files=6, f_ffree=7, f_fsid0=0xFFFFFFFF91929394, f_fsid1=9,
                       f_namelen=255, f_frsize=4096)
STATFS_BYTES = h(
    "00000000 58000000"                  # T_SUCCESS, 88 bytes
    "53ef000000000000"                   # type
    "0010000000000000"                   # bsize
    "0300000000000000" "0400000000000000" "0500000000000000"   # blocks bfree bavail
    "0600000000000000" "0700000000000000"                      # files ffree
    "94939291ffffffff" "0900000000000000"                      # fsid[0] (sign-extended), fsid[1]
    "ff00000000000000" "0010000000000000")                     # namelen frsize

# (request answered, reply, bytes)
REPLY_VECTORS = [
    (P.Lstat(b"/"), STAT, STAT_BYTES),
    (P.Statfs(b"/"), STATFS, STATFS_BYTES),
    (P.Lstat(b"/"), P.Status(-2), h("01000000 04000000 feffffff")),         # T_ERROR -ENOENT
    (P.Mkdir(0, 0, b"/d", 0), P.Status(0), h("00000000 04000000 00000000")),
    (P.Chmod(b"/", 0), P.Status(-1), h("01000000 04000000 ffffffff")),
    (P.Readlink(b"/l", 10), P.ReadlinkReply(b"abc"), h("00000000 05000000 0300 616263")),
    (P.Getversion(b"/"), P.VersionReply(0x0102030405060708),
     h("00000000 08000000 0807060504030201")),
    (P.Lgetxattr(0, b"/", b"user.a"), P.Status(5), h("00000000 04000000 05000000")),
    (P.Lgetxattr(8, b"/", b"user.a"), P.XattrReply(b"v"), h("00000000 03000000 0100 76")),
    (P.Llistxattr(64, b"/"), P.XattrReply(b"a\0b\0"), h("00000000 06000000 0400 61006200")),
    (P.Llistxattr(64, b"/"), P.Status(-34), h("01000000 04000000 deffffff")),   # ERANGE
    (P.Open(b"/", 0), P.FdReply(P.V9FS_FD_VALID), h("ffffff7f")),
    (P.Create(b"/", 0, 0, 0, 0), P.FdReply(-13), h("f3ffffff")),
]


@pytest.mark.parametrize("req,hexbytes", REQUEST_VECTORS, ids=lambda v: type(v).__name__
                         if not isinstance(v, str) else "")
def test_request_vectors(req, hexbytes):
    wire = h(hexbytes)
    assert P.encode_request(req) == wire
    d = P.RequestDecoder()
    d.feed(wire)
    assert d.next_message() == req
    assert d.next_message() is None and d.pending == 0


def test_every_request_type_has_a_vector():
    assert {type(r) for r, _ in REQUEST_VECTORS} == set(P.REQUEST_CLASSES.values())


@pytest.mark.parametrize("req,reply,wire", REPLY_VECTORS,
                         ids=[f"{type(r).__name__}-{type(p).__name__}" for r, p, _ in REPLY_VECTORS])
def test_reply_vectors(req, reply, wire):
    assert P.encode_reply(reply) == wire
    d = P.ReplyDecoder()
    d.expect(req)
    d.feed(wire)
    assert d.next_message() == reply
    assert d.next_message() is None and d.outstanding == 0


def test_type_numbers():
    assert [int(t) for t in (P.T_SUCCESS, P.T_ERROR, P.T_OPEN, P.T_CREATE, P.T_MKNOD, P.T_MKDIR,
                             P.T_SYMLINK, P.T_LINK, P.T_LSTAT, P.T_READLINK, P.T_STATFS,
                             P.T_CHMOD, P.T_CHOWN, P.T_TRUNCATE, P.T_UTIME, P.T_RENAME,
                             P.T_REMOVE, P.T_LGETXATTR, P.T_LLISTXATTR, P.T_LSETXATTR,
                             P.T_LREMOVEXATTR, P.T_GETVERSION)] == list(range(22))
    assert P.PROXY_MAX_IO_SZ == 65536 and P.V9FS_FD_VALID == 0x7FFFFFFF


# QEMU's v9fs_request() marshal strings, copied by hand from 9p-proxy.c.
QEMU_FORMATS = {
    P.T_OPEN: "sd", P.T_CREATE: "sdddd", P.T_MKNOD: "ddsdq", P.T_MKDIR: "ddsd",
    P.T_SYMLINK: "ddss", P.T_LINK: "ss", P.T_LSTAT: "s", P.T_READLINK: "sd", P.T_STATFS: "s",
    P.T_CHMOD: "sd", P.T_CHOWN: "sdd", P.T_TRUNCATE: "sq", P.T_UTIME: "sqqqq", P.T_RENAME: "ss",
    P.T_REMOVE: "s", P.T_LGETXATTR: "dss", P.T_LLISTXATTR: "ds", P.T_LSETXATTR: "sssdd",
    P.T_LREMOVEXATTR: "ss", P.T_GETVERSION: "s",
}


def test_formats_match_qemu():
    assert {t: c.FORMAT for t, c in P.REQUEST_CLASSES.items()} == QEMU_FORMATS
    assert P.ProxyStat.FORMAT == "qqqdddqqqqqqqqqq" and P.ProxyStatFS.FORMAT == "q" * 11


def test_reply_kinds():
    K = P.ReplyKind
    assert P.reply_kind(P.Open(b"", 0)) is K.FD and P.reply_kind(P.Create(b"", 0, 0, 0, 0)) is K.FD
    for r in (P.Mknod(0, 0, b"", 0, 0), P.Mkdir(0, 0, b"", 0), P.Symlink(0, 0, b"", b""),
              P.Link(b"", b""), P.Chmod(b"", 0), P.Chown(b"", 0, 0), P.Truncate(b"", 0),
              P.Utime(b"", 0, 0, 0, 0), P.Rename(b"", b""), P.Remove(b""),
              P.Lsetxattr(b"", b"", b"", 0, 0), P.Lremovexattr(b"", b""),
              P.Lgetxattr(0, b"", b""), P.Llistxattr(0, b"")):
        assert P.reply_kind(r) is K.STATUS, r
    for r in (P.Lstat(b""), P.Statfs(b""), P.Readlink(b"", 1), P.Getversion(b""),
              P.Lgetxattr(1, b"", b""), P.Llistxattr(1, b"")):
        assert P.reply_kind(r) is K.RESPONSE, r


# --- hypothesis round trips --------------------------------------------------------------

SIGNED_FIELDS = {"atime_sec", "atime_nsec", "mtime_sec", "mtime_nsec"}


def field_strategy(name: str, code: str):
    if code == "s":
        return st.binary(max_size=300)
    if code == "d":
        return st.integers(0, 2**32 - 1)
    if name in SIGNED_FIELDS:
        return st.integers(-2**63, 2**63 - 1)
    return st.integers(0, 2**64 - 1)


def request_strategy(cls):
    return st.builds(cls, **{f: field_strategy(f, c) for f, c in zip(cls._FIELDS, cls.FORMAT)})


any_request = st.one_of([request_strategy(c) for c in P.REQUEST_CLASSES.values()])


def reference_pack(msg) -> bytes:
    """An independent packer driven by QEMU's format string (struct, not construct)."""
    out = reference_payload(msg)
    return struct.pack("<II", msg.TYPE, len(out)) + out


def reference_payload(msg) -> bytes:
    out = b""
    for f, c in zip(msg._FIELDS, msg.FORMAT):
        v = getattr(msg, f)
        if c == "s":
            out += struct.pack("<H", len(v)) + v
        elif c == "d":
            out += struct.pack("<I" if v >= 0 else "<i", v)
        else:
            out += struct.pack("<Q" if v >= 0 else "<q", v)
    return out


@pytest.mark.parametrize("cls", list(P.REQUEST_CLASSES.values()), ids=lambda c: c.__name__)
@given(data=st.data())
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_request_round_trip(cls, data):
    req = data.draw(request_strategy(cls))
    wire = P.encode_request(req)
    assert wire == reference_pack(req)
    # fed in arbitrary pieces
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    d = P.RequestDecoder()
    got = []
    prev = 0
    for cut in cuts + [len(wire)]:
        assert d.needed() >= 1
        d.feed(wire[prev:cut])
        prev = cut
        got.extend(d)
    assert got == [req]
    assert d.pending == 0


@given(reqs=st.lists(any_request, min_size=1, max_size=8))
@settings(max_examples=50)
def test_request_stream_round_trip(reqs):
    d = P.RequestDecoder()
    d.feed(b"".join(P.encode_request(r) for r in reqs))
    assert list(d) == reqs


def reply_for(req):
    """A strategy of valid replies to *req*."""
    err = st.integers(-4095, -1).map(P.Status)
    kind = P.reply_kind(req)
    if kind is P.ReplyKind.FD:
        return st.one_of(st.just(P.FdReply(P.V9FS_FD_VALID)), st.integers(-4095, -1).map(P.FdReply))
    if kind is P.ReplyKind.STATUS:
        return st.one_of(err, st.integers(0, 2**31 - 1).map(P.Status))
    cls = {P.T_LSTAT: P.ProxyStat, P.T_STATFS: P.ProxyStatFS, P.T_READLINK: P.ReadlinkReply,
           P.T_GETVERSION: P.VersionReply, P.T_LGETXATTR: P.XattrReply,
           P.T_LLISTXATTR: P.XattrReply}[req.TYPE]
    signed = {"st_atim_sec", "st_atim_nsec", "st_mtim_sec", "st_mtim_nsec", "st_ctim_sec",
              "st_ctim_nsec"}
    ok = st.builds(cls, **{f: (st.integers(-2**63, 2**63 - 1) if f in signed
                               else field_strategy(f, c))
                           for f, c in zip(cls._FIELDS, cls.FORMAT)})
    return st.one_of(err, ok)


@given(data=st.data())
@settings(max_examples=200)
def test_reply_stream_round_trip(data):
    reqs = data.draw(st.lists(any_request, min_size=1, max_size=6))
    replies = [data.draw(reply_for(r)) for r in reqs]
    wire = b"".join(P.encode_reply(r) for r in replies)
    for r in replies:
        if not isinstance(r, P.FdReply):
            assert P.encode_reply(r) == reference_pack_reply(r)
    d = P.ReplyDecoder()
    for r in reqs:
        d.expect(r)
    got = []
    step = data.draw(st.integers(1, 64))
    for i in range(0, len(wire), step):
        d.feed(wire[i:i + step])
        got.extend(d)
    assert got == replies
    assert d.outstanding == 0 and d.pending == 0


def reference_pack_reply(msg) -> bytes:
    out = reference_payload(msg)
    t = P.T_ERROR if isinstance(msg, P.Status) and msg.status < 0 else P.T_SUCCESS
    return struct.pack("<II", t, len(out)) + out


# --- malformed input ----------------------------------------------------------------------

def hdr(t: int, size: int) -> bytes:
    return struct.pack("<II", t, size)


@pytest.mark.parametrize("wire,what", [
    (hdr(P.T_LSTAT, P.PROXY_MAX_IO_SZ + 1), "exceeds"),
    (hdr(P.T_OPEN, 0xFFFFFFFF), "exceeds"),
    (hdr(99, 0), "unknown request type 99"),
    (hdr(P.T_SUCCESS, 4) + b"\0" * 4, "unknown request type 0"),
    (hdr(P.T_ERROR, 4) + b"\0" * 4, "unknown request type 1"),
    (hdr(P.T_LSTAT, 5) + b"\x0a\x00abc", "Lstat"),                 # truncated string
    (hdr(P.T_LINK, 6) + b"\x01\x00a\x05\x00b", "Link"),            # second string truncated
    (hdr(P.T_CREATE, 6) + b"\x01\x00a\x01\x00\x00", "Create"),     # truncated ints
    (hdr(P.T_LSTAT, 4) + b"\x01\x00/x", "Lstat"),                  # trailing garbage
    (hdr(P.T_GETVERSION, 0), "Getversion"),                        # empty
    (hdr(P.T_UTIME, 33) + b"\x00\x00" + b"\x00" * 31, "Utime"),    # one byte short
])
def test_malformed_requests(wire, what):
    d = P.RequestDecoder()
    d.feed(wire)
    with pytest.raises(P.ProxyProtocolError, match=what):
        d.next_message()
    with pytest.raises(P.ProxyProtocolError):  # stays broken
        d.next_message()


def test_oversized_header_fails_before_payload_arrives():
    d = P.RequestDecoder()
    d.feed(hdr(P.T_LSTAT, P.PROXY_MAX_IO_SZ + 1))
    with pytest.raises(P.ProxyProtocolError):
        list(d)


def test_max_size_payload_is_accepted():
    value = b"v" * (P.PROXY_MAX_IO_SZ - 2 - 2 - 2 - 8)
    req = P.Lsetxattr(b"", b"", value, len(value), 0)
    wire = P.encode_request(req)
    assert len(wire) == P.PROXY_HDR_SZ + P.PROXY_MAX_IO_SZ
    d = P.RequestDecoder()
    d.feed(wire)
    assert d.next_message() == req


@pytest.mark.parametrize("bad", [
    P.Lstat(b"x" * 65536),                                   # string longer than u16
    P.Lsetxattr(b"a" * 30000, b"b" * 30000, b"c" * 30000, 0, 0),  # payload over 64 KiB
    P.Open(b"/", -1),
    P.Open(b"/", 2**32),
    P.Truncate(b"/", 2**64),
    P.Utime(b"/", 2**63, 0, 0, 0),
    P.Open("/str", 0),                                       # str, not bytes
])
def test_unencodable_requests(bad):
    with pytest.raises(P.ProxyProtocolError):
        P.encode_request(bad)


def test_encode_rejects_non_messages():
    with pytest.raises(P.ProxyProtocolError):
        P.encode_request(P.Status(0))
    with pytest.raises(P.ProxyProtocolError):
        P.encode_reply(P.Lstat(b"/"))


@pytest.mark.parametrize("req,wire", [
    (P.Lstat(b"/"), hdr(P.T_SUCCESS, 4) + b"\0" * 4),             # stat payload too short
    (P.Lstat(b"/"), hdr(P.T_ERROR, 0)),                            # error without status
    (P.Mkdir(0, 0, b"", 0), hdr(P.T_SUCCESS, 5) + b"\0" * 5),      # status with trailing byte
    (P.Mkdir(0, 0, b"", 0), hdr(7, 4) + b"\0" * 4),                 # not SUCCESS/ERROR
    (P.Readlink(b"", 9), hdr(P.T_SUCCESS, 3) + b"\x05\x00a"),       # truncated string
    (P.Statfs(b""), hdr(P.T_SUCCESS, 89) + b"\0" * 89),
    (P.Lgetxattr(0, b"", b""), hdr(P.T_SUCCESS, 2) + b"\0\0"),       # size 0 wants a status
    (P.Getversion(b""), hdr(P.T_SUCCESS, P.PROXY_MAX_IO_SZ + 1)),
])
def test_malformed_replies(req, wire):
    d = P.ReplyDecoder()
    d.expect(req)
    d.feed(wire)
    with pytest.raises(P.ProxyProtocolError):
        d.next_message()


def test_unsolicited_reply():
    d = P.ReplyDecoder()
    d.feed(P.encode_reply(P.Status(0)))
    with pytest.raises(P.ProxyProtocolError, match="no request outstanding"):
        d.next_message()


def test_decode_reply_refuses_fd_kind():
    with pytest.raises(P.ProxyProtocolError):
        P.decode_reply(P.Open(b"", 0), P.T_SUCCESS, b"\0\0\0\0")


def test_needed():
    d = P.RequestDecoder()
    assert d.needed() == 8
    wire = P.encode_request(P.Lstat(b"/abc"))
    d.feed(wire[:3])
    assert d.needed() == 5
    d.feed(wire[3:10])
    assert d.needed() == len(wire) - 10
    r = P.ReplyDecoder()
    r.expect(P.Open(b"/", 0))
    assert r.needed() == 4
    r.feed(b"\xff")
    assert r.needed() == 3


@given(st.binary(max_size=200), st.integers(1, 50))
@settings(max_examples=500)
def test_request_decoder_only_raises_protocol_errors(data, step):
    d = P.RequestDecoder()
    try:
        for i in range(0, len(data), step):
            d.feed(data[i:i + step])
            for m in d:
                assert type(m) in P.REQUEST_CLASSES.values()
    except P.ProxyProtocolError:
        pass


@given(st.binary(max_size=120), st.integers(0, 25))
@settings(max_examples=500)
def test_request_decoder_random_headers(payload, type_):
    d = P.RequestDecoder()
    d.feed(hdr(type_, len(payload)) + payload)
    try:
        m = d.next_message()
        assert m is None or type(m) in P.REQUEST_CLASSES.values()
    except P.ProxyProtocolError:
        pass


@given(any_request, st.data())
@settings(max_examples=300)
def test_mutated_requests_only_raise_protocol_errors(req, data):
    wire = bytearray(P.encode_request(req))
    op = data.draw(st.sampled_from(["truncate-size", "flip", "append", "grow-size"]))
    if op == "flip" and len(wire) > 8:
        i = data.draw(st.integers(8, len(wire) - 1))
        wire[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate-size" and len(wire) > 8:
        n = data.draw(st.integers(0, len(wire) - 9))
        wire = wire[:8 + n]
        wire[4:8] = struct.pack("<I", n)
    elif op == "append":
        wire += data.draw(st.binary(min_size=1, max_size=10))
        wire[4:8] = struct.pack("<I", len(wire) - 8)
    elif op == "grow-size":
        wire[4:8] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
    d = P.RequestDecoder()
    d.feed(bytes(wire))
    try:
        list(d)
    except P.ProxyProtocolError:
        pass


@given(any_request, st.binary(max_size=200), st.integers(1, 40))
@settings(max_examples=500)
def test_reply_decoder_only_raises_protocol_errors(req, data, step):
    d = P.ReplyDecoder()
    d.expect(req)
    d.expect(P.Lstat(b""))
    try:
        for i in range(0, len(data), step):
            d.feed(data[i:i + step])
            list(d)
    except P.ProxyProtocolError:
        pass


def test_decode_header():
    assert P.decode_header(hdr(8, 3)) == (8, 3)
    with pytest.raises(P.ProxyProtocolError):
        P.decode_header(b"\0" * 7)
    with pytest.raises(P.ProxyProtocolError):
        P.decode_header(hdr(8, P.PROXY_MAX_IO_SZ + 1))
