"""QEMU's ``-fsdev`` option string, read into ninep's own options.

Someone moving from QEMU's built-in 9p has a string such as
``local,id=fs0,path=/srv,security_model=mapped-xattr,readonly=on`` in hand;
``ninep --fsdev STRING`` takes it as is.  The syntax is QEMU's QemuOpts one
(comma-separated ``key=value``, ``,,`` for a comma inside a value, a leading
bare word for the driver), and a string QEMU would refuse is refused with
QEMU's own words.  The result is a dict of the attributes the long options
(``--export``, ``--security-model``, ...) would have set.
"""

from __future__ import annotations

from typing import Any

#: Every key QEMU's -fsdev knows (throttling.* aside); any other is "Invalid parameter".
_KNOWN = frozenset({"fsdriver", "id", "path", "security_model", "writeout", "readonly",
                    "socket", "sock_fd", "fmode", "dmode", "multidevs"})
#: The keys each driver accepts, as QEMU's per-driver option lists say.
_DRIVER_KEYS = {
    "local": frozenset({"fsdriver", "id", "readonly", "security_model", "path", "writeout",
                        "fmode", "dmode", "multidevs"}),
    "handle": frozenset({"fsdriver", "id", "readonly", "security_model", "path", "writeout"}),
    "proxy": frozenset({"fsdriver", "id", "readonly", "socket", "sock_fd", "writeout"}),
}
_SECURITY_MODELS = ("passthrough", "mapped", "mapped-xattr", "mapped-file", "none")
_SECURITY_MODEL_HINT = ("Valid options are: "
                        "security_model=[passthrough|mapped-xattr|mapped-file|none]")
_MULTIDEVS = ("remap", "forbid", "warn")
_MULTIDEVS_HINT = "Valid options are: multidevs=[remap|forbid|warn]"
_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


class FsdevError(ValueError):
    """A -fsdev string QEMU would refuse (QEMU's message), or one ninep cannot honour."""


def split_options(text: str) -> list[tuple[str, str]]:
    """``key=value`` pairs in order; a leading bare word is ``("fsdriver", word)``
    and any other bare word a flag set to ``"on"``; ``,,`` is a literal comma."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        key_end = i
        while key_end < n and text[key_end] not in ",=":
            key_end += 1
        key = text[i:key_end]
        if key_end < n and text[key_end] == "=":
            value, i = _value(text, key_end + 1)
            pairs.append((key, value))
        else:
            value, i = _value(text, i)  # a bare word may hold ",," too
            pairs.append(("fsdriver", value) if not pairs else (value, "on"))
    return pairs


def _value(text: str, i: int) -> tuple[str, int]:
    """The value starting at *i* up to the first lone comma, and where the next key starts."""
    out: list[str] = []
    n = len(text)
    while i < n:
        if text[i] == ",":
            if i + 1 < n and text[i + 1] == ",":
                out.append(",")
                i += 2
                continue
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    return "".join(out), i


def _number(key: str, value: str) -> int:
    """A QemuOpts number: decimal, 0x hex or 0-prefixed octal, as strtoull(…, 0)."""
    try:
        if value.startswith(("-", "+")):
            raise ValueError(value)
        return int(value, 8) if len(value) > 1 and value[0] == "0" and value[1].isdigit() \
            else int(value, 0)
    except ValueError:
        raise FsdevError(f"Parameter '{key}' expects a number") from None


def _bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise FsdevError(f"Parameter '{key}' expects 'on' or 'off'")


def parse_fsdev(text: str) -> dict[str, Any]:
    """The options *text* sets, under the names of the CLI's attributes
    (``backend``, ``export``, ``security_model``, ``readonly``, ``fmode``,
    ``dmode``, ``multidevs``, ``proxy_socket``, ``proxy_fd``)."""
    opts: dict[str, str] = {}
    for key, value in split_options(text):
        if key.startswith("throttling."):
            raise FsdevError(f"'{key}': ninep has no I/O throttling")
        if key not in _KNOWN:
            raise FsdevError(f"Invalid parameter '{key}'")
        opts[key] = value  # as in QEMU, the last of a repeated key wins
    driver = opts.get("fsdriver")
    if not driver:
        raise FsdevError("fsdev: No fsdriver specified")
    if driver not in _DRIVER_KEYS:
        raise FsdevError(f"fsdev: fsdriver {driver} not found")
    for key in opts:
        if key not in _DRIVER_KEYS[driver]:
            raise FsdevError(f"'{key}' is invalid for fsdriver '{driver}'")
    for key in ("sock_fd", "fmode", "dmode"):
        if key in opts:
            _number(key, opts[key])  # QemuOpts checks the type before the driver looks
    out: dict[str, Any] = {"backend": driver}
    if "readonly" in opts:
        out["readonly"] = _bool("readonly", opts["readonly"])
    if opts.get("writeout") == "immediate":  # QEMU ignores any other value
        raise FsdevError("writeout=immediate: ninep does not sync each write")
    if driver == "local":
        out.update(_local(opts))
    elif driver == "handle":
        if "security_model" in opts:
            raise FsdevError("Invalid argument security_model specified with handle fsdriver")
        if "path" not in opts:
            raise FsdevError("fsdev: No path specified")
        out["export"] = opts["path"]
    else:
        out.update(_proxy(opts))
    return out


def _local(opts: dict[str, str]) -> dict[str, Any]:
    """The checks of QEMU's local driver, in its order."""
    model = opts.get("security_model")
    if model is None:
        raise FsdevError(f"security_model property not set; {_SECURITY_MODEL_HINT}")
    if model not in _SECURITY_MODELS:
        raise FsdevError(f"invalid security_model property '{model}'; {_SECURITY_MODEL_HINT}")
    out: dict[str, Any] = {"security_model": model}
    if "multidevs" in opts:
        if opts["multidevs"] not in _MULTIDEVS:
            raise FsdevError(f"invalid multidevs property '{opts['multidevs']}'; {_MULTIDEVS_HINT}")
        out["multidevs"] = opts["multidevs"]
    if "path" not in opts:
        raise FsdevError("path property not set")
    out["export"] = opts["path"]
    for key in ("fmode", "dmode"):
        if key not in opts:
            continue
        if model not in ("mapped", "mapped-xattr", "mapped-file"):
            raise FsdevError(f"{key} is only valid for mapped security modes")
        out[key] = _number(key, opts[key]) & 0o777
    return out


def _proxy(opts: dict[str, str]) -> dict[str, Any]:
    if "socket" not in opts and "sock_fd" not in opts:
        raise FsdevError("Must specify either socket or sock_fd")
    if "socket" in opts and "sock_fd" in opts:
        raise FsdevError("Both socket and sock_fd options specified")
    if "socket" in opts:
        return {"proxy_socket": opts["socket"]}
    return {"proxy_fd": _number("sock_fd", opts["sock_fd"])}


__all__ = ["FsdevError", "parse_fsdev", "split_options"]
