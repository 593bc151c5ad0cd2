"""QEMU's -fsdev option strings (ninep/fsdev.py), with QEMU's own refusals."""

from __future__ import annotations

import pytest

from ninep.fsdev import FsdevError, parse_fsdev, split_options


@pytest.mark.parametrize("text,pairs", [
    ("local,path=/srv,security_model=none",
     [("fsdriver", "local"), ("path", "/srv"), ("security_model", "none")]),
    ("local,path=/a,,b,,,security_model=none",
     [("fsdriver", "local"), ("path", "/a,b,"), ("security_model", "none")]),
    ("fsdriver=proxy,sock_fd=3", [("fsdriver", "proxy"), ("sock_fd", "3")]),
    ("local,readonly,path=/x", [("fsdriver", "local"), ("readonly", "on"), ("path", "/x")]),
    ("local,path=a=b", [("fsdriver", "local"), ("path", "a=b")]),
    ("local,path=", [("fsdriver", "local"), ("path", "")]),
])
def test_split_options(text: str, pairs: list[tuple[str, str]]) -> None:
    assert split_options(text) == pairs


@pytest.mark.parametrize("text,expected", [
    ("local,path=/srv,security_model=passthrough",
     {"backend": "local", "export": "/srv", "security_model": "passthrough"}),
    (("local,id=fs0,path=/srv,security_model=mapped,readonly=on,fmode=0644,dmode=0755,"
      "multidevs=forbid,writeout=none"),
     {"backend": "local", "export": "/srv", "security_model": "mapped", "readonly": True,
      "fmode": 0o644, "dmode": 0o755, "multidevs": "forbid"}),
    # QEMU reads numbers as strtoull(…, 0) and keeps the permission bits.
    ("local,path=/s,security_model=mapped-file,fmode=0x1ff,dmode=420",
     {"backend": "local", "export": "/s", "security_model": "mapped-file", "fmode": 0o777,
      "dmode": 420 & 0o777}),
    ("local,path=/s,security_model=none,readonly=off",
     {"backend": "local", "export": "/s", "security_model": "none", "readonly": False}),
    ("local,path=/a,path=/b,security_model=none",
     {"backend": "local", "export": "/b", "security_model": "none"}),
    ("handle,path=/srv,readonly=on", {"backend": "handle", "export": "/srv", "readonly": True}),
    ("proxy,id=p,socket=/run/h.sock", {"backend": "proxy", "proxy_socket": "/run/h.sock"}),
    ("proxy,sock_fd=7", {"backend": "proxy", "proxy_fd": 7}),
])
def test_parse_fsdev(text: str, expected: dict[str, object]) -> None:
    assert parse_fsdev(text) == expected


@pytest.mark.parametrize("text,message", [
    ("path=/srv,security_model=none", "fsdev: No fsdriver specified"),
    ("nfs,path=/srv", "fsdev: fsdriver nfs not found"),
    ("local,path=/srv,security_model=none,colour=blue", "Invalid parameter 'colour'"),
    ("local,path=/srv,security_model=none,socket=/s", "'socket' is invalid for fsdriver 'local'"),
    ("proxy,socket=/s,path=/srv", "'path' is invalid for fsdriver 'proxy'"),
    ("handle,path=/srv,multidevs=remap", "'multidevs' is invalid for fsdriver 'handle'"),
    ("local,path=/srv", "security_model property not set"),
    ("local,path=/srv,security_model=squash", "invalid security_model property 'squash'"),
    ("local,path=/srv,security_model=none,multidevs=merge", "invalid multidevs property 'merge'"),
    ("local,security_model=none", "path property not set"),
    ("local,path=/srv,security_model=passthrough,fmode=0600",
     "fmode is only valid for mapped security modes"),
    ("local,path=/srv,security_model=none,dmode=0700",
     "dmode is only valid for mapped security modes"),
    ("local,path=/srv,security_model=mapped,fmode=rw", "Parameter 'fmode' expects a number"),
    ("local,path=/srv,security_model=none,readonly=maybe",
     "Parameter 'readonly' expects 'on' or 'off'"),
    ("handle,path=/srv,security_model=none",
     "Invalid argument security_model specified with handle fsdriver"),
    ("handle,readonly=on", "fsdev: No path specified"),
    ("proxy,readonly=on", "Must specify either socket or sock_fd"),
    ("proxy,socket=/s,sock_fd=3", "Both socket and sock_fd options specified"),
    ("proxy,sock_fd=-1", "Parameter 'sock_fd' expects a number"),
    ("local,path=/srv,security_model=none,writeout=immediate", "writeout=immediate"),
    ("local,path=/srv,security_model=none,throttling.bps-total=1", "'throttling.bps-total'"),
])
def test_refusals_use_qemus_words(text: str, message: str) -> None:
    with pytest.raises(FsdevError) as info:
        parse_fsdev(text)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_hints_name_the_valid_values() -> None:
    with pytest.raises(FsdevError, match=r"security_model=\[passthrough\|mapped-xattr"):
        parse_fsdev("local,path=/x,security_model=bad")
    with pytest.raises(FsdevError, match=r"multidevs=\[remap\|forbid\|warn\]"):
        parse_fsdev("local,path=/x,security_model=none,multidevs=bad")
