"""Guest-id <-> host-id translation (``--translate-uid/gid``, ``--all-squash``).

The session applies it where ids cross the protocol: the attach uid, the gid
of a create-type request and Tsetattr's owner go guest -> host; Rgetattr's
owner goes host -> guest.  Rules follow virtiofsd's forms and are tried in
order; an id no rule matches passes through unchanged.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

ID_MAX = 0xFFFFFFFF

RULE_KINDS = ("map", "squash-guest", "squash-host", "forbid-guest")


@dataclass(frozen=True, slots=True)
class IdRule:
    """One rule: guest range [guest, guest+count) and/or host range [host, host+count)."""

    kind: str
    guest: int
    host: int
    count: int

    @classmethod
    def parse(cls, text: str) -> IdRule:
        """``map:GUEST:HOST:COUNT``, ``squash-guest:GUEST:HOST:COUNT``,
        ``squash-host:GUEST:HOST:COUNT`` or ``forbid-guest:GUEST:COUNT``."""
        kind, _, rest = text.partition(":")
        fields = rest.split(":")
        want = 2 if kind == "forbid-guest" else 3
        if kind not in RULE_KINDS or len(fields) != want or not all(f.isdigit() for f in fields):
            raise ValueError(f"expected map|squash-guest|squash-host:GUEST:HOST:COUNT or "
                             f"forbid-guest:GUEST:COUNT, not {text!r}")
        numbers = [int(f) for f in fields]
        if kind == "forbid-guest":
            numbers.insert(1, 0)
        guest, host, count = numbers
        if count == 0 or guest + count - 1 > ID_MAX or host > ID_MAX or (
                kind == "map" and host + count - 1 > ID_MAX) or (
                kind == "squash-host" and host + count - 1 > ID_MAX):
            raise ValueError(f"{text!r}: COUNT must be at least 1 and the ranges within 32 bits")
        return cls(kind, guest, host, count)


class IdMap:
    """Ordered rules for one kind of id (uids or gids)."""

    def __init__(self, rules: list[IdRule]) -> None:
        self.rules = tuple(rules)

    def to_host(self, guest_id: int) -> int:
        """The host id a guest id stands for; EPERM for a forbidden one."""
        for r in self.rules:
            if r.kind == "map" and r.guest <= guest_id < r.guest + r.count:
                return r.host + guest_id - r.guest
            if r.kind == "squash-guest" and r.guest <= guest_id < r.guest + r.count:
                return r.host
            if r.kind == "forbid-guest" and r.guest <= guest_id < r.guest + r.count:
                raise OSError(errno.EPERM, f"guest id {guest_id} is forbidden")
        return guest_id

    def to_guest(self, host_id: int) -> int:
        """The id a guest sees for a host id."""
        for r in self.rules:
            if r.kind == "map" and r.host <= host_id < r.host + r.count:
                return r.guest + host_id - r.host
            if r.kind == "squash-host" and r.host <= host_id < r.host + r.count:
                return r.guest
        return host_id


@dataclass(frozen=True, slots=True)
class IdTranslation:
    """The uid and gid maps a session applies."""

    uids: IdMap
    gids: IdMap

    @classmethod
    def from_options(cls, translate_uid: list[str], translate_gid: list[str],
                     all_squash: tuple[int, int] | None) -> IdTranslation | None:
        """None when there is nothing to translate (the session then skips the work)."""
        uid_rules = [IdRule.parse(t) for t in translate_uid]
        gid_rules = [IdRule.parse(t) for t in translate_gid]
        if all_squash is not None:
            # diod's allsquash: every guest id becomes this one host id.
            uid_rules.append(IdRule("squash-guest", 0, all_squash[0], ID_MAX + 1))
            gid_rules.append(IdRule("squash-guest", 0, all_squash[1], ID_MAX + 1))
        if not uid_rules and not gid_rules:
            return None
        return cls(IdMap(uid_rules), IdMap(gid_rules))


__all__ = ["IdMap", "IdRule", "IdTranslation", "RULE_KINDS"]
