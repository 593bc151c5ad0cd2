"""``ninep-proxy-helper``: a privileged helper wire-compatible with QEMU's
``virtfs-proxy-helper``.

    ninep-proxy-helper -p DIR (-f FD | -s SOCKET -u UID -g GID) [-n]

Options are virtfs-proxy-helper's.  The helper chroots into DIR, sets umask 0,
keeps only CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_SETGID,
CAP_MKNOD and CAP_SETUID (effective, permitted and, where it may, bounding set),
and serves QEMU's proxy protocol.  With ``--fd`` it serves that one inherited
socket and exits at EOF; with ``--socket`` it keeps accepting connections, one
thread each.  Without ``-n`` it daemonizes and logs to syslog.
"""

from __future__ import annotations

import errno
import getopt
import os
import socket
import stat
import sys
import syslog
import threading
import time

from ninep import syscalls
from ninep.helper.server import (ALLOWED_CAPS, ALLOWED_MASK, GETVERSION_FS_MAGIC, Connection,
                                 Export, serve_in_thread)
from ninep.sandbox.caps import limit_capabilities

PROG = "ninep-proxy-helper"
USAGE = f"""usage: {PROG} -p DIR (-f FD | -s SOCKET -u UID -g GID) [-n]
  -p, --path DIR       directory to export (the helper chroots into it)
  -f, --fd FD          serve this inherited, connected socket
  -s, --socket PATH    create this unix socket and serve connections on it
  -u, --uid UID        owner uid of the socket (with -s, together with -g)
  -g, --gid GID        owner gid of the socket (with -s, together with -u)
  -n, --nodaemon       stay in the foreground and log to stderr
"""


class UsageError(Exception):
    pass


class Options:
    path: str
    fd: int | None = None
    socket: str | None = None
    uid: int | None = None
    gid: int | None = None
    daemon: bool = True


def _int(opt: str, value: str, minimum: int = 0) -> int:
    try:
        n = int(value, 10)
    except ValueError:
        raise UsageError(f"{opt} needs a number, not {value!r}") from None
    if n < minimum:
        raise UsageError(f"{opt} must be >= {minimum}, not {value!r}")
    return n


def parse_args(argv: list[str]) -> Options:
    try:
        opts, rest = getopt.gnu_getopt(
            argv, "p:f:s:u:g:nh",
            ["path=", "fd=", "socket=", "uid=", "gid=", "nodaemon", "help"])
    except getopt.GetoptError as e:
        raise UsageError(str(e)) from None
    if rest:
        raise UsageError(f"unexpected argument {rest[0]!r}")
    o = Options()
    path = None
    for opt, val in opts:
        if opt in ("-h", "--help"):
            raise SystemExit(_help())
        if opt in ("-p", "--path"):
            path = val
        elif opt in ("-f", "--fd"):
            o.fd = _int(opt, val)
        elif opt in ("-s", "--socket"):
            o.socket = val
        elif opt in ("-u", "--uid"):
            o.uid = _int(opt, val)
        elif opt in ("-g", "--gid"):
            o.gid = _int(opt, val)
        elif opt in ("-n", "--nodaemon"):
            o.daemon = False
    if not path:
        raise UsageError("-p/--path is required")
    if o.fd is None and o.socket is None:
        raise UsageError("one of -f/--fd or -s/--socket is required")
    if o.fd is not None and o.socket is not None:
        raise UsageError("-f/--fd and -s/--socket cannot be used together")
    if o.socket is not None and (o.uid is None or o.gid is None):
        raise UsageError("-s/--socket needs both -u/--uid and -g/--gid (owner of the socket)")
    if (o.uid is None) != (o.gid is None):
        raise UsageError("-u/--uid and -g/--gid must be given together")
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"invalid path {path!r}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"path {path!r} is not a directory")
    o.path = os.path.abspath(path)
    if o.socket is not None:
        o.socket = os.path.abspath(o.socket)
        if os.path.lexists(o.socket):
            raise UsageError(f"socket {o.socket!r} already exists")
        if len(os.fsencode(o.socket)) >= 108:
            raise UsageError(f"socket path {o.socket!r} is too long")
    if o.fd is not None:
        try:
            if not stat.S_ISSOCK(os.fstat(o.fd).st_mode):
                raise UsageError(f"fd {o.fd} is not a socket")
        except OSError as e:
            raise UsageError(f"fd {o.fd}: {e.strerror}") from None
    return o


def _help() -> int:
    sys.stdout.write(USAGE)
    return 0


class Logger:
    """One line per message: syslog when daemonized, else stderr."""

    def __init__(self) -> None:
        self.syslog = False
        self._lock = threading.Lock()

    def use_syslog(self) -> None:
        syslog.openlog(PROG, syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_DAEMON)
        self.syslog = True

    def __call__(self, msg: str) -> None:
        msg = msg.replace("\n", " ")
        if self.syslog:
            syslog.syslog(syslog.LOG_ERR, msg)
            return
        with self._lock:
            try:
                sys.stderr.write(f"{PROG}: {msg}\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


class SetupError(Exception):
    pass


def close_stray_fds(keep: set[int]) -> None:
    """Close every fd but stdio and *keep*: an inherited directory fd would be a
    way out of the chroot."""
    keep = set(keep) | {0, 1, 2}
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def make_listener(path: str, uid: int, gid: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o007)  # like QEMU: srwxrwx---
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise SetupError(f"bind {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    try:
        sock.listen(64)
        os.chown(path, uid, gid)
    except OSError as e:
        sock.close()
        raise SetupError(f"socket {path}: {e.strerror}") from None
    return sock


def daemonize() -> None:
    """daemon(0, 0): fork, new session, cwd /, stdio on /dev/null."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def drop_capabilities(log: Logger) -> None:
    """Keep ALLOWED_CAPS in effective+permitted, nothing inheritable or ambient,
    and (given CAP_SETPCAP) nothing else in the bounding set; no new privileges.

    The helper stays uid 0 and only switches fsuid/fsgid per request, so
    PR_SET_KEEPCAPS is not needed.
    """
    try:
        bounding_kept = limit_capabilities(frozenset(ALLOWED_CAPS))
    except OSError as e:
        raise SetupError(f"capset: {e.strerror} (the helper must run as root)") from None
    if bounding_kept:
        log(f"could not drop {len(bounding_kept)} capabilities from the bounding set "
            f"(no CAP_SETPCAP?)")
    eff, prm, inh = syscalls.capget()
    if (eff, prm, inh) != (ALLOWED_MASK, ALLOWED_MASK, 0):
        raise SetupError(f"capabilities are {eff:#x}/{prm:#x}/{inh:#x} after capset "
                         f"(the helper must run as root)")


def enter_export(path: str) -> Export:
    """Open /proc, chroot into *path*, and return the Export."""
    try:
        proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"/proc: {e.strerror} (procfs is required)") from None
    try:
        os.chdir(path)
        os.chroot(".")
        os.chdir("/")
    except OSError as e:
        raise SetupError(f"chroot {path}: {e.strerror}") from None
    root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        probe = os.open(b"self/fd/%d" % root_fd, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                        dir_fd=proc_fd)
        os.close(probe)
    except OSError as e:
        raise SetupError(f"/proc/self/fd is unusable: {e.strerror}") from None
    try:
        fd = syscalls.openat2(root_fd, ".", os.O_PATH | os.O_CLOEXEC, 0,
                              syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS)
        os.close(fd)
    except OSError as e:
        raise SetupError(f"openat2 is unavailable ({e.strerror}); Linux >= 5.6 is required") \
            from None
    try:
        get_version = syscalls.fstatfs(root_fd)[0] in GETVERSION_FS_MAGIC
    except OSError:
        get_version = False
    os.umask(0)
    return Export(root_fd, proc_fd, get_version)


def run(o: Options, log: Logger) -> int:
    close_stray_fds({o.fd} if o.fd is not None else set())
    listener = None
    if o.socket is not None:
        assert o.uid is not None and o.gid is not None  # parse_options insists on -u and -g
        listener = make_listener(o.socket, o.uid, o.gid)
    if o.daemon:
        daemonize()
        log.use_syslog()
    export = enter_export(o.path)
    drop_capabilities(log)
    log(f"started, exporting {o.path}")
    if listener is None:
        sock = socket.socket(fileno=o.fd)
        Connection(sock, export, log).serve()
        log("done")
        return 0
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log(f"accept: {e.strerror}")
                time.sleep(0.1)
                continue
            log(f"accept: {e.strerror}; exiting")
            return 1
        serve_in_thread(conn, export, log)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        o = parse_args(argv)
    except UsageError as e:
        sys.stderr.write(f"{PROG}: {e} (see --help)\n")
        return 2
    log = Logger()
    try:
        return run(o, log)
    except SetupError as e:
        log(str(e))
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # never a traceback
        log(f"fatal: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
