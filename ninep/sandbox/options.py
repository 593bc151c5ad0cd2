"""The command line's confinement options, as one group."""

from __future__ import annotations

import argparse

from ..server.idmap import ID_MAX, IdRule, IdTranslation
from .caps import parse_modcaps
from .mounts import SANDBOX_CHOICES
from .network import ALLOW_FLAG, check_exposure
from .seccomp import SECCOMP_CHOICES


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


def _modcaps(text: str) -> tuple[frozenset[int], frozenset[int]]:
    try:
        return parse_modcaps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--modcaps: ")) from None


def _nofile(text: str) -> int:
    if not text.isdigit() or int(text) < 16:
        raise argparse.ArgumentTypeError(f"expected a number of fds (at least 16), not {text!r}")
    return int(text)


def add_confinement_options(ap: argparse.ArgumentParser) -> None:
    """--allow-network-share, --all-squash, --translate-uid/gid, --sandbox,
    --pid-namespace, --seccomp, --modcaps, --rlimit-nofile."""
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
    g.add_argument("--sandbox", choices=SANDBOX_CHOICES, default=None,
                   help="namespace: the process's root holds only the export and the Python "
                        "runtime, in new mount/ipc/net namespaces (default; none for --backend "
                        "proxy, whose helper confines itself); chroot: the root is the export "
                        "(lighter, weaker: no namespaces); none: no sandbox")
    g.add_argument("--pid-namespace", action=argparse.BooleanOptionalAction, default=None,
                   help="with --sandbox namespace: serve as pid 1 of a new pid namespace, "
                        "under a supervisor process that holds nothing (default: on with "
                        "--sandbox namespace)")
    g.add_argument("--seccomp", choices=SECCOMP_CHOICES, default="kill",
                   help="allow-list of system calls: kill ends the process on any other call, "
                        "log only logs it (kernel audit log), none: no filter")
    g.add_argument("--modcaps", type=_modcaps, action="append", default=[], metavar="+CAP,-CAP",
                   help="capabilities to keep beyond (+) or drop from (-) what the back end "
                        "and security model need, e.g. +sys_admin,-mknod")
    g.add_argument("--rlimit-nofile", type=_nofile, metavar="N",
                   help="set the open-file limit (soft and hard) to N before dropping privileges")


def resolve_confinement(args: argparse.Namespace) -> None:
    """Check the group against the rest of the command line (ValueError names the option);
    sets ``args.exposed`` (listeners to warn about), ``args.sandbox`` and
    ``args.pid_namespace`` (their defaults)."""
    args.exposed = check_exposure(args.listen, args.allow_network_share)
    if args.sandbox in ("namespace", "chroot") and args.backend == "proxy":
        raise ValueError(f"--sandbox {args.sandbox}: the proxy back end's helper does the "
                         "confining; use --sandbox none")
    if args.sandbox is None:
        # The proxy back end reaches its helper by a socket path, and the
        # helper confines the export itself.
        args.sandbox = "none" if args.backend == "proxy" else "namespace"
    if args.pid_namespace is None:
        args.pid_namespace = args.sandbox == "namespace"
    elif args.pid_namespace and args.sandbox != "namespace":
        raise ValueError(f"--pid-namespace needs --sandbox namespace, not {args.sandbox}")


def id_translation(args: argparse.Namespace) -> IdTranslation | None:
    """The session's id translation from the parsed options."""
    return IdTranslation.from_options(args.translate_uid, args.translate_gid, args.all_squash)


__all__ = ["add_confinement_options", "id_translation", "resolve_confinement"]
