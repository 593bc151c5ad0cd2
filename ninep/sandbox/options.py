"""The command line's confinement options, as one group."""

from __future__ import annotations

import argparse

from ..server.idmap import ID_MAX, IdRule, IdTranslation
from .network import ALLOW_FLAG


def _uid_gid(text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    if not sep or not uid.isdigit() or not gid.isdigit() or max(int(uid), int(gid)) >= ID_MAX:
        raise argparse.ArgumentTypeError(f"expected UID:GID (numbers), not {text!r}")
    return int(uid), int(gid)


def _id_rule(text: str) -> str:
    try:
        IdRule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_confinement_options(ap: argparse.ArgumentParser) -> None:
    """--allow-network-share, --all-squash, --translate-uid/gid."""
    g = ap.add_argument_group("confinement")
    g.add_argument(ALLOW_FLAG, action="store_true",
                   help="accept a --listen tcp: address that is not loopback (an "
                        "unauthenticated share that anyone who reaches it can use)")
    g.add_argument("--all-squash", type=_uid_gid, metavar="UID:GID",
                   help="every guest uid and gid acts as this one host uid and gid")
    g.add_argument("--translate-uid", type=_id_rule, action="append", default=[], metavar="RULE",
                   help="map|squash-guest|squash-host:GUEST:HOST:COUNT or "
                        "forbid-guest:GUEST:COUNT (repeatable, first match wins)")
    g.add_argument("--translate-gid", type=_id_rule, action="append", default=[], metavar="RULE",
                   help="as --translate-uid, for gids")


def id_translation(args: argparse.Namespace) -> IdTranslation | None:
    """The session's id translation from the parsed options."""
    return IdTranslation.from_options(args.translate_uid, args.translate_gid, args.all_squash)


__all__ = ["add_confinement_options", "id_translation"]
