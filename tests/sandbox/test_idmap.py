"""--all-squash and --translate-uid/gid: guest ids become host ids, and back."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from ninep.protocol import dotu as u
from ninep.protocol import ninep as p
from ninep.sandbox.options import id_translation
from ninep.server.idmap import IdRule, IdTranslation
from ninep.server.session import SessionConfig

ServeFactory = Any  # the root conftest's serve fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other ids needs root")


def translation(uids: list[str] = [], gids: list[str] = [],  # noqa: B006
                squash: tuple[int, int] | None = None) -> IdTranslation:
    result = IdTranslation.from_options(uids, gids, squash)
    assert result is not None
    return result


@pytest.mark.parametrize("text", ["map:1:2", "map:a:b:c", "bogus:1:2:3", "map:1:2:0",
                                  "forbid-guest:1:2:3", "map:4294967295:0:2"])
def test_bad_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        IdRule.parse(text)


def test_rules_in_both_directions() -> None:
    ids = translation(["map:1000:100000:100", "squash-guest:2000:5:10",
                       "squash-host:7:0:3", "forbid-guest:3000:2"])
    assert [ids.uids.to_host(g) for g in (999, 1000, 1099, 1100, 2009, 2010)] == \
        [999, 100000, 100099, 1100, 5, 2010]
    assert [ids.uids.to_guest(h) for h in (100000, 100050, 0, 2, 3)] == [1000, 1050, 7, 7, 3]
    with pytest.raises(OSError) as info:
        ids.uids.to_host(3001)
    assert info.value.errno == errno.EPERM
    assert ids.gids.to_host(1000) == 1000  # gids untouched


async def test_all_squash_owns_every_new_file_by_one_host_id(serve: ServeFactory,
                                                            export: Path) -> None:
    served = await serve(config=SessionConfig(ids=translation(squash=(4321, 8765))))
    client = await served.connect()
    root = await client.attach(n_uname=0)
    fid, _ = await client.create(root, "f", gid=0)
    await client.mkdir(root, "d", gid=1234)
    for name in ("f", "d"):
        st = os.lstat(export / name)
        assert (st.st_uid, st.st_gid) == (4321, 8765), name
    await client.rpc(p.Tsetattr(fid, p.SETATTR_UID | p.SETATTR_GID, 0, 0, 99, 0, 0, 0, 0, 0))
    assert (os.lstat(export / "f").st_uid, os.lstat(export / "f").st_gid) == (4321, 8765)


async def test_translate_maps_guest_ids_to_host_ids_and_back(serve: ServeFactory,
                                                            export: Path) -> None:
    ids = translation(["map:1000:200000:10"], ["map:1000:300000:10", "forbid-guest:50:1"])
    served = await serve(config=SessionConfig(ids=ids))
    client = await served.connect()
    root = await client.attach(n_uname=1003)
    fid, _ = await client.create(root, "f", gid=1004)
    st = os.lstat(export / "f")
    assert (st.st_uid, st.st_gid) == (200003, 300004)
    reply = await client.getattr(fid)
    assert (reply.uid, reply.gid) == (1003, 1004)
    with pytest.raises(OSError) as info:
        await client.mkdir(root, "d", gid=50)
    assert info.value.errno == errno.EPERM
    assert not (export / "d").exists()


async def test_translate_applies_to_9p2000u_stats_and_wstats(serve: ServeFactory,
                                                             export: Path) -> None:
    """A .u Rstat shows guest ids and a Twstat's n_uid/n_gid are guest ids, as in .L."""
    ids = translation(["map:1000:200000:10"], ["map:1000:300000:10"])
    served = await serve(config=SessionConfig(ids=ids))
    client = await served.connect(version=u.VERSION_9P2000U)
    root = await client.attach(n_uname=1003)
    fid, _ = await client.tcreate(root, "f", 0o644)
    os.chown(export / "f", 200005, 300006)
    d = await client.stat(fid)
    assert (d.n_uid, d.n_gid, d.uid, d.gid) == (1005, 1006, "1005", "1006")
    await client.wstat(fid, n_uid=1007, n_gid=1008)
    st = os.lstat(export / "f")
    assert (st.st_uid, st.st_gid) == (200007, 300008)


def test_options_reach_the_translation(export: Path) -> None:
    from ninep.cli import parse_args
    args = parse_args(["--export", str(export), "--listen", "unix:/x", "--all-squash", "7:8",
                       "--translate-uid", "map:0:100:1"])
    ids = id_translation(args)
    assert ids is not None and ids.uids.to_host(0) == 100 and ids.uids.to_host(5) == 7
    assert ids.gids.to_host(5) == 8
    assert id_translation(parse_args(["--export", str(export), "--listen", "unix:/x"])) is None
