"""The ``ninep`` command: serve a directory over 9P2000.L.

Bad options or a missing export give one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from . import __version__
from .backends.base import Backend, RequestLoad
from .backends.local.secmodel import MODEL_CHOICES
from .backends.qid import MULTIDEVS_CHOICES
from .fsdev import FsdevError, parse_fsdev
from .sandbox.enter import confine, prepare
from .sandbox.mounts import SocketFiles
from .sandbox.options import add_confinement_options, id_translation, resolve_confinement
from .server.session import SessionConfig
from .server.stats import Stats
from .transport.metrics import MetricsServer, parse_stats_address
from .transport.stream import ListenAddress, StreamServer

log = logging.getLogger("ninep")

BACKENDS = ("local", "handle", "proxy")
LOG_LEVELS = ("debug", "info", "warning", "error")
INLINE_CHOICES = ("auto", "never")


class UsageError(Exception):
    """A bad command line; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an octal mode like 0644, not {text!r}") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"mode {text} is out of range")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}")
    return int(text)


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return check


def _choice_help(text: str, choices: tuple[str, ...], default: str | None) -> str:
    """Help that names every choice and the default."""
    shown = f"{text}. Choices: {', '.join(choices)}"
    return f"{shown} (default: {default})" if default is not None else shown


def add_transport_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("transports", "where guests connect (give at least one)")
    g.add_argument("--listen", action="append", default=[], metavar="ADDR",
                   help="serve the 9P stream on unix:PATH, tcp:HOST:PORT (host 127.0.0.1 "
                        "unless given) or fd:N, an inherited socket (repeatable)")
    g.add_argument("--socket-path", metavar="PATH",
                   help="vhost-user: create and listen on this Unix socket")
    g.add_argument("--fd", type=int, metavar="N",
                   help="vhost-user: an already-listening socket fd (socket activation)")
    g.add_argument("--tag", default="ninep",
                   help="vhost-user mount tag, at most 254 bytes (default: ninep)")
    g.add_argument("--vhost-poll-us", type=_non_negative, default=500, metavar="US",
                   help="vhost-user: after the last reply, look for the next request on every "
                        "loop pass for up to this long, with the guest's kicks suppressed, "
                        "before sleeping; the window adapts to how soon requests come "
                        "(0: never poll; default: 500)")


def add_backend_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("back end", "what is served, and how")
    g.add_argument("--export", metavar="DIR",
                   help="directory to serve (required unless --fsdev, --proxy-socket or "
                        "--proxy-fd supplies the back end)")
    g.add_argument("--backend", type=_choice(BACKENDS), metavar="NAME",
                   help=_choice_help("the file-system back end", BACKENDS, DEFAULTS["backend"]))
    g.add_argument("--fsdev", metavar="STRING",
                   help="QEMU -fsdev option string, e.g. local,path=DIR,security_model=mapped-xattr"
                        "[,readonly=on][,fmode=0600][,dmode=0700][,multidevs=remap] or "
                        "proxy,socket=PATH / proxy,sock_fd=N; sets the options above and below")
    g.add_argument("--proxy-socket", metavar="PATH",
                   help="proxy back end: connect to this helper socket (no --export needed)")
    g.add_argument("--proxy-fd", type=int, metavar="N",
                   help="proxy back end: a connected helper socket fd (no --export needed)")
    g.add_argument("--multidevs", type=_choice(MULTIDEVS_CHOICES), metavar="MODE",
                   help=_choice_help("host file systems mounted inside the export: remap "
                                     "their qid paths to keep them unique, forbid access, or "
                                     "warn",
                                     MULTIDEVS_CHOICES, DEFAULTS["multidevs"]))
    g.add_argument("--inline", type=_choice(INLINE_CHOICES), default="auto", metavar="WHEN",
                   help="run a back-end call on the event loop when it is the only request in "
                        "flight (auto: if the export and every mount inside it are local file "
                        "systems; never: always use a worker thread). Choices: "
                        f"{', '.join(INLINE_CHOICES)} (default: auto)")


def add_security_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("security", "how guest owners and modes map to the host")
    g.add_argument("--security-model", type=_choice(MODEL_CHOICES), metavar="MODEL",
                   help=_choice_help("local back end: passthrough sets host owners as the guest "
                                     "asks; mapped-xattr (alias mapped) and mapped-file store them "
                                     "aside; none ignores them", MODEL_CHOICES,
                                     "passthrough"))
    g.add_argument("--fmode", type=_mode, metavar="MODE",
                   help="host mode of new files, mapped models only (default: 0600)")
    g.add_argument("--dmode", type=_mode, metavar="MODE",
                   help="host mode of new directories, mapped models only (default: 0700)")
    g.add_argument("--readonly", action="store_const", const=True,
                   help="every modifying request gets EROFS (default: off)")


def add_limit_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("limits")
    g.add_argument("--msize", type=_positive, default=512000, metavar="N",
                   help="largest message accepted, at least 4096 (default: 512000)")
    threads = min(32, (os.cpu_count() or 1) * 4)
    g.add_argument("--threads", type=_positive, default=threads, metavar="N",
                   help=f"worker threads for blocking syscalls (default: 4 x cores, at most 32: "
                        f"{threads} here)")
    g.add_argument("--max-fids", type=_positive, default=65536, metavar="N",
                   help="fids per session (default: 65536)")
    g.add_argument("--max-inflight", type=_positive, default=1024, metavar="N",
                   help="requests per session read but not yet answered (default: 1024)")
    g.add_argument("--max-xattr-size", type=_positive, default=65536, metavar="N",
                   help="largest xattr value a guest may read or set (default: 65536)")


def add_logging_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("logging")
    g.add_argument("--log-level", type=_choice(LOG_LEVELS), default="info", metavar="LEVEL",
                   help=_choice_help("least severe message logged on stderr", LOG_LEVELS, "info"))


def add_statistics_options(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("statistics", "live counters; read them with: ninep stats ADDR "
                              "[--watch], or scrape http://ADDR/metrics (Prometheus text)")
    g.add_argument("--stats", metavar="ADDR",
                   help="serve statistics on unix:PATH or tcp:127.0.0.1:PORT (loopback only; "
                        "default: off, and then nothing is counted)")


#: The options that --fsdev may set too: None on the command line means "not given"
#: (security_model stays None unless given: only the local back end accepts one).
DEFAULTS: dict[str, Any] = {
    "backend": "local", "security_model": None, "multidevs": "warn", "readonly": False,
    "export": None, "fmode": None, "dmode": None, "proxy_socket": None, "proxy_fd": None,
}

#: One function per option group; a new group is one more function here.
OPTION_GROUPS: list[Callable[[argparse.ArgumentParser], None]] = [
    add_transport_options, add_backend_options, add_security_options, add_limit_options,
    add_logging_options, add_statistics_options, add_confinement_options,
]


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ninep", description="Serve a host directory to VMs over 9P2000.L.")
    ap.add_argument("--version", action="version", version=f"ninep {__version__}")
    for add_group in OPTION_GROUPS:
        add_group(ap)
    return ap


def _option(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def apply_fsdev(args: argparse.Namespace) -> None:
    """Fold ``--fsdev`` into the long options; one given both ways must agree."""
    if args.fsdev is None:
        return
    try:
        settings = parse_fsdev(args.fsdev)
    except FsdevError as exc:
        raise UsageError(f"--fsdev: {exc}") from None
    for attr, value in settings.items():
        given = getattr(args, attr)
        if given is not None and given != value:
            shown = (f"{value:#o}", f"{given:#o}") if attr in ("fmode", "dmode") else (value, given)
            raise UsageError(f"--fsdev sets {_option(attr)} to {shown[0]}, but {_option(attr)} "
                             f"{shown[1]} is also given: give it once")
        setattr(args, attr, value)


def make_backend(args: argparse.Namespace, load: RequestLoad | None = None) -> Backend:
    """Build the back end the options ask for; ValueError/OSError explain a refusal.
    *load* is the server's request count, which lets its worker pool run a lone
    request's calls on the event loop (``--inline auto``)."""
    if args.backend == "local":
        from .backends.local import LocalBackend, make_model
        model = make_model(args.security_model or "passthrough", args.fmode, args.dmode)
        return LocalBackend(args.export, model=model, multidevs=args.multidevs,
                            threads=args.threads, inline=None if args.inline == "auto" else False,
                            load=load)
    if args.backend == "handle":
        if args.security_model is not None:
            raise ValueError("Invalid argument security_model specified with handle fsdriver")
        from .backends.handle import HandleBackend
        return HandleBackend(args.export, multidevs=args.multidevs, threads=args.threads,
                             inline=None if args.inline == "auto" else False, load=load)
    from .backends.proxy import ProxyBackend
    return ProxyBackend.from_args(args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    apply_fsdev(args)
    for attr, default in DEFAULTS.items():
        if getattr(args, attr) is None:
            setattr(args, attr, default)
    helper_given = args.backend == "proxy" and (args.proxy_socket is not None
                                                or args.proxy_fd is not None)
    if args.export is None and not helper_given:
        raise UsageError("--export DIR is required (or --fsdev with path=, or --backend proxy "
                         "with --proxy-socket or --proxy-fd)")
    if args.export is not None and not os.path.isdir(args.export):
        raise UsageError(f"--export {args.export}: not a directory")
    if not args.listen and args.socket_path is None and args.fd is None:
        raise UsageError("nothing to serve on: give --listen, --socket-path or --fd")
    if args.msize < 4096:
        raise UsageError("--msize must be at least 4096")
    try:
        args.listen = [ListenAddress.parse(a) for a in args.listen]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        args.stats = None if args.stats is None else parse_stats_address(args.stats)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        resolve_confinement(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if len(args.tag.encode()) > 254:
        raise UsageError("--tag must be at most 254 bytes")
    return args


async def serve(args: argparse.Namespace, ready: Callable[[], None] | None = None,
                backend: Backend | None = None) -> None:
    """Serve until SIGINT/SIGTERM; *backend* replaces the one the options describe
    (built without this server's RequestLoad, its worker pool never runs a call inline)."""
    load = RequestLoad()  # counted by every session, read by the back end's worker pool
    backend = backend if backend is not None else make_backend(args, load)
    config = SessionConfig(msize=args.msize, readonly=args.readonly, max_fids=args.max_fids,
                           max_inflight=args.max_inflight, max_xattr_size=args.max_xattr_size,
                           stats=Stats() if args.stats is not None else None,
                           ids=id_translation(args), load=load)
    servers: list[StreamServer] = []
    metrics: MetricsServer | None = None
    tasks: list[asyncio.Task] = []
    socket_files: SocketFiles | None = None
    # Before anything listens: a SIGTERM from whoever saw the socket appear
    # must stop us cleanly, not kill us.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Before anything listens or the process is confined: a proxy back end
        # starts its helper here, which needs the host's file system.
        await backend.start()
        # Every socket is bound and listening before any is accepted from, and
        # nothing is accepted or served before the process is confined (no
        # await from the first start_serving to confine()): the sandbox hides
        # the host's file system, and the seccomp filter forbids bind and listen.
        if config.stats is not None:
            metrics = MetricsServer(config.stats.prometheus)
            try:
                await metrics.start(args.stats, serving=False)
            except OSError as exc:
                raise OSError(exc.errno, f"--stats {args.stats}: {exc.strerror or exc}") from None
        for address in args.listen:
            server = StreamServer(lambda: backend, config)
            servers.append(server)  # closed in the end even if it failed to start
            try:
                await server.start(address, serving=False)
            except OSError as exc:
                raise OSError(exc.errno, f"--listen {address}: {exc.strerror or exc}") from None
        # Accepting calls listen(2) again, so it starts before the seccomp
        # filter; the loop does not run (and accepts nothing) until confined.
        for server in servers:
            server.start_serving()
        if metrics is not None:
            metrics.start_serving()
        socket_paths = [a.path for a in args.listen if a.kind == "unix"]
        if args.stats is not None and args.stats.kind == "unix":
            socket_paths.append(args.stats.path)
        listening = None
        if args.socket_path is not None or args.fd is not None:
            from .transport.vhost.listener import listen
            from .transport.vhost_user import serve_vhost_user
            listening = listen(args.socket_path, args.fd)
            if listening.created_inode is not None:
                socket_paths.append(args.socket_path)
        socket_files = confine(args, backend, socket_paths)
        tasks = [asyncio.ensure_future(server.serve_forever()) for server in servers]
        if listening is not None:
            tasks.append(asyncio.ensure_future(serve_vhost_user(
                lambda: backend, socket_path=args.socket_path, listen_fd=args.fd, tag=args.tag,
                session_config=config, listening=listening, poll_us=args.vhost_poll_us)))
        log.info("serving %s (%s)", args.export or "the proxy helper's export", args.backend)
        for address in args.exposed:
            log.warning("%s is reachable from the network: anyone who connects gets %s "
                        "without authentication", address, args.export)
        if ready:
            ready()
        waiter = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in servers:
            await server.close()
        if metrics is not None:
            await metrics.close()
        await backend.close()
        if socket_files is not None:
            socket_files.remove()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _one_line(exc: BaseException) -> str:
    """An error as the one line the user sees (an OSError without "[Errno N]")."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def main(argv: list[str] | None = None,
         backend_factory: Callable[[argparse.Namespace], Backend] | None = None) -> int:
    """The ``ninep`` command; *backend_factory* (for benchmarks) builds the back end instead."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stats"]:
        from .statsview import main as stats_main
        return stats_main(argv[1:])
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"ninep: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="ninep: %(levelname)s %(message)s")
    prepare(args)
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        runner(serve(args, backend=backend_factory(args) if backend_factory else None))
    except (ValueError, OSError) as exc:
        print(f"ninep: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
