"""Network exposure: no unauthenticated share on a non-loopback address by accident.

9P2000.L as ninep speaks it has no authentication, so whoever reaches a TCP
listener gets the export with the server's privileges.  Like diod (which
wants ``-n``), a listener that is not loopback is refused unless the user
says, with ``--allow-network-share``, that this is what they want.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from ..transport.stream import ListenAddress

ALLOW_FLAG = "--allow-network-share"


def _is_loopback(host: str) -> bool:
    """True when every address the host name stands for is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return True  # unresolvable: binding fails later with its own message
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def _exposed_host(address: ListenAddress) -> str | None:
    """The non-loopback host an address listens on, or None."""
    if address.kind == "tcp":
        return None if _is_loopback(address.host) else address.host
    if address.kind == "fd":
        try:
            sock = socket.socket(fileno=address.fd)
        except OSError:
            return None  # not a socket: the transport reports it
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                host = sock.getsockname()[0]
                return None if ipaddress.ip_address(host.split("%")[0]).is_loopback else host
        finally:
            sock.detach()
    return None


def exposed_listeners(addresses: Iterable[ListenAddress]) -> list[str]:
    """The listeners that a remote machine could reach, as the user wrote them."""
    return [str(a) for a in addresses if _exposed_host(a) is not None]


def check_exposure(addresses: Iterable[ListenAddress], allowed: bool) -> list[str]:
    """Refuse (ValueError) an exposed listener unless allowed; else return them for a warning."""
    exposed = exposed_listeners(addresses)
    if exposed and not allowed:
        raise ValueError(f"--listen {exposed[0]} is not loopback: anyone who reaches it gets the "
                         f"export with no authentication; give {ALLOW_FLAG} if that is intended")
    return exposed


__all__ = ["ALLOW_FLAG", "check_exposure", "exposed_listeners"]
