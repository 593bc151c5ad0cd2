"""How this process names its own fds by path: ``/proc/self/fd/N``.

Following such a name lands on the fd's own inode, which is how the back ends
reach pinned inodes for the calls that have no fd form (see backends/fdops),
and reading its link says what an fd is (the vhost-user layer checks eventfds
so).  One place, because ``--sandbox chroot`` changes it (name_fds_from_cwd).
"""

from __future__ import annotations

#: What prefixes an fd number: ``/proc/self/fd/``, or nothing once
#: :func:`name_fds_from_cwd` has made the working directory that directory.
_fd_dir = "/proc/self/fd/"


def fd_path(fd: int) -> str:
    """``/proc/self/fd/N``: following it lands on *fd*'s own inode."""
    return f"{_fd_dir}{fd}"


def name_fds_from_cwd() -> None:
    """From now on :func:`fd_path` is ``"N"``, relative to the working directory.

    For ``--sandbox chroot``: the root is then the export, whose
    ``proc/self/fd/N`` a guest may have planted, so the working directory
    is this process's real ``/proc/self/fd``, held from before the chroot.
    """
    global _fd_dir
    _fd_dir = ""


__all__ = ["fd_path", "name_fds_from_cwd"]
