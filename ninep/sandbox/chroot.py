"""--sandbox chroot: the process's root becomes the export (virtiofsd's chroot mode).

Lighter than the namespace sandbox and weaker (see the README): no new
namespaces, just chroot(2) into the export.  Two things follow from the new
root being the export, which a guest writes:

* The back ends reach pinned inodes through ``/proc/self/fd/N``; in the new
  root that path is whatever a guest planted at ``export/proc/self/fd/N``.
  So the real ``/proc/self/fd`` is opened before the chroot and made the
  working directory, and ``fdnames.fd_path`` names fds relative to it.
* Anything loaded by path after the chroot would come from the guest.  So
  every module the server may import is imported first, the import system
  then finds nothing by path (a late import fails instead of running a
  planted file), and libgcc_s, which glibc loads on a thread's unwinding,
  is loaded now.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.machinery
import os
import pkgutil
import sys

from .. import fdnames
from .mounts import SandboxError, enter_user_namespace

#: Parts of the ninep package the server never imports.
_NOT_SERVING = ("ninep.__main__", "ninep.helper", "ninep.testing", "ninep.statsview")


def import_everything() -> None:
    """Import every ninep module the server may use.

    No standard-library module needs importing too: with an import spy in
    place of the path finder, the suites that spawn the server (test_cli,
    sandbox, stats, faults, load, vhost CLI, the e2e smoke over trans=fd and
    vhost-user) imported nothing after the chroot.
    """
    import ninep

    for info in pkgutil.walk_packages(ninep.__path__, "ninep."):
        if not info.name.startswith(_NOT_SERVING) and not info.name.endswith(".__main__"):
            importlib.import_module(info.name)


def forbid_imports_by_path() -> None:
    """Only built-in and frozen modules may be imported from now on."""
    keep = (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter)
    sys.meta_path[:] = [finder for finder in sys.meta_path if finder in keep]
    sys.path_importer_cache.clear()
    sys.path[:] = []


def _preload_libgcc_s() -> None:
    try:
        ctypes.CDLL("libgcc_s.so.1")
    except OSError:
        pass  # a libc that never loads it


def enter_chroot(export: str) -> None:
    """chroot into *export* (through a user namespace when not root); see the module doc."""
    export = os.path.realpath(export)
    if export == "/":
        raise SandboxError(0, "--sandbox chroot: the export is the whole file system; "
                           "use --sandbox none")
    import_everything()
    _preload_libgcc_s()
    fd_dir = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            if os.geteuid() != 0:
                enter_user_namespace()
            os.chroot(export)
        except OSError as exc:
            raise SandboxError(exc.errno, f"--sandbox chroot: cannot chroot into the export "
                               f"({exc.strerror}); run with --sandbox none") from None
        os.fchdir(fd_dir)
    finally:
        os.close(fd_dir)
    fdnames.name_fds_from_cwd()
    forbid_imports_by_path()


__all__ = ["enter_chroot", "forbid_imports_by_path", "import_everything"]
