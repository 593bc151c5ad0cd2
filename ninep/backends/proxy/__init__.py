"""The proxy back end: a privileged helper does the file system work.

ninep is the unprivileged client of a helper that speaks QEMU's virtfs proxy
protocol (:mod:`ninep.protocol.proxy`): ours (``ninep-proxy-helper``) or
QEMU's ``virtfs-proxy-helper``.  The helper chroots into the export, so a
node is a path *inside that chroot* (``/a/b``), kept as checked components;
``..`` is path arithmetic clamped at the root and is never sent.  Walks are
one ``T_LSTAT`` per component (pipelined on one connection), and they never
go through a symlink: a component that is not a directory ends the walk.

What goes where:

* Namespace and metadata requests (lstat, create, mkdir, symlink, mknod,
  link, rename, remove, chmod, chown, truncate, utimes, readlink, statfs,
  xattrs) go to the helper by path.  Creating requests carry the caller's
  uid/gid and the helper runs them under that fsuid/fsgid.
* Files the guest opens are opened by the helper, which passes the fd back
  (``SCM_RIGHTS``).  Reads, writes, readdir (``O_DIRECTORY`` opens), fsync,
  fstat and locks then use that fd here, through the shared
  :mod:`ninep.backends.fdops` code.
* An open file whose name is gone (unlinked, replaced, moved on the host) has
  no path the helper could use: its setattr and xattr requests are done on
  its fd here, with the server's own credentials.  That works for a root
  server; an unprivileged one gets EPERM/EACCES where it lacks the right
  (the protocol has no fd-based requests: no fchown, no link of an unlinked
  file).

Opens always add ``O_NOFOLLOW | O_NONBLOCK`` and check the passed fd: only
regular files and directories are served (a FIFO or device gives ENXIO, a
symlink ELOOP), and a FIFO renamed into place can never block a helper
thread.  ``O_NONBLOCK`` is cleared again unless the guest asked for it.

Deliberate differences from the local passthrough back end:

* mknod of a device by a non-root caller fails (EPERM): the helper switches
  to the caller's fsuid, which drops CAP_MKNOD, as QEMU's helper does.
* The helper resolves intermediate path components itself (inside its
  chroot): a directory that the host replaces by a symlink after a walk is
  followed, but never out of the export.
* The protocol names files by whole paths.  Paths of PATH_MAX (4096 bytes)
  and more, which the guest's kernel accepts, are sent as they are (up to
  32 KiB, so that two fit in one request); ninep-proxy-helper resolves them
  piece by piece.  QEMU's virtfs-proxy-helper hands each path to one
  syscall, so through it they still give ENAMETOOLONG, as with QEMU's own
  proxy driver.

One module per concern: :mod:`.channel` (one connection: requests out,
replies and passed fds in), :mod:`.connectors` (how connections are made),
:mod:`.helper_process` (helpers this back end starts, and starts again),
:mod:`.pool` (the connections that concurrent requests share) and
:mod:`.backend` (the :class:`~ninep.backends.base.Backend`).  Building a
:class:`ProxyBackend` starts nothing: its ``start()``, on the server's event
loop, reaches the helper (or starts it).
"""

from .backend import ProxyBackend, ProxyNode, stat_from_proxy, statfs_from_proxy
from .channel import HelperConnection, HelperLost
from .connectors import Connector, FdConnector, SocketConnector
from .helper_process import SpawnedHelper
from .pool import HelperPool

__all__ = ["Connector", "FdConnector", "HelperConnection", "HelperLost", "HelperPool",
           "ProxyBackend", "ProxyNode", "SocketConnector", "SpawnedHelper", "stat_from_proxy",
           "statfs_from_proxy"]
