"""Least privilege: keep only the capabilities the back end needs, and no_new_privs.

Run after start-up (sockets open, export open, sandbox entered): from then on
a compromised server holds only what serving the model requires, can gain
nothing back through execve (no_new_privs, an emptied bounding set), and
passes nothing on (no inheritable or ambient capabilities).
"""

from __future__ import annotations

import resource

from .. import syscalls

#: Capability names by number (linux/capability.h), as --modcaps spells them.
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)
CAP_SETPCAP = CAP_NAMES.index("setpcap")


def mask_of(caps: frozenset[int] | set[int]) -> int:
    return sum(1 << c for c in caps)


def parse_modcaps(text: str) -> tuple[frozenset[int], frozenset[int]]:
    """``+cap,-cap,...`` (names with or without ``cap_``) -> (added, removed)."""
    added: set[int] = set()
    removed: set[int] = set()
    for item in text.split(","):
        sign, name = item[:1], item[1:].strip().lower().removeprefix("cap_")
        if sign not in "+-" or not sign or name not in CAP_NAMES:
            raise ValueError(f"--modcaps: expected +name or -name (e.g. +sys_admin,-mknod), "
                             f"not {item!r}")
        (added if sign == "+" else removed).add(CAP_NAMES.index(name))
    return frozenset(added), frozenset(removed)


def limit_capabilities(keep: frozenset[int]) -> list[int]:
    """Keep *keep* (as far as we hold it) in effective and permitted, nothing
    inheritable or ambient, no_new_privs; drop the rest of the bounding set
    if we may.  Returns the capabilities left in the bounding set."""
    _, permitted, _ = syscalls.capget()
    kept = mask_of(keep) & permitted
    bounding_left = []
    for cap in range(syscalls.cap_last_cap() + 1):
        if cap in keep:
            continue
        try:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
        except OSError:
            bounding_left.append(cap)  # no CAP_SETPCAP (an unprivileged server)
    try:
        syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # a kernel without ambient capabilities
    syscalls.capset(kept, kept, 0)
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    return bounding_left


def set_nofile_limit(limit: int) -> None:
    """``--rlimit-nofile``: soft and hard limit of open fds (raising needs CAP_SYS_RESOURCE)."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--rlimit-nofile {limit}: {getattr(exc, 'strerror', None) or exc}") \
            from None


__all__ = ["CAP_NAMES", "limit_capabilities", "mask_of", "parse_modcaps", "set_nofile_limit"]
