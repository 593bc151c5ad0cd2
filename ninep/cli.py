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
from collections.abc import Callable
from typing import NoReturn

from .backends.base import Backend
from .backends.local.secmodel import MODEL_CHOICES
from .backends.qid import MULTIDEVS_CHOICES
from .sandbox.enter import confine, prepare
from .sandbox.mounts import SocketFiles
from .sandbox.options import add_confinement_options, id_translation, resolve_confinement
from .server.session import SessionConfig
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
        raise argparse.ArgumentTypeError(f"expected an octal mode like 0644, not {text!r}") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"mode {text} is out of range")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return int(text)


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text
    return check


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ninep", description="Serve a host directory to VMs over 9P2000.L.")
    ap.add_argument("--export", required=True, help="directory to serve")
    ap.add_argument("--listen", action="append", default=[], metavar="ADDR",
                    help="unix:PATH, tcp:HOST:PORT or fd:N (repeatable)")
    ap.add_argument("--socket-path", help="vhost-user: create and listen on this Unix socket")
    ap.add_argument("--fd", type=int, help="vhost-user: an already-listening socket fd")
    ap.add_argument("--tag", default="ninep", help="vhost-user mount tag (at most 254 bytes)")
    ap.add_argument("--backend", type=_choice(BACKENDS), default="local")
    ap.add_argument("--security-model", type=_choice(MODEL_CHOICES), default=None)
    ap.add_argument("--fmode", type=_mode, help="mode of new files (mapped models)")
    ap.add_argument("--dmode", type=_mode, help="mode of new directories (mapped models)")
    ap.add_argument("--multidevs", type=_choice(MULTIDEVS_CHOICES), default="warn")
    ap.add_argument("--readonly", action="store_true")
    ap.add_argument("--msize", type=_positive, default=512000)
    ap.add_argument("--threads", type=_positive, default=min(32, (os.cpu_count() or 1) * 4))
    ap.add_argument("--inline", type=_choice(INLINE_CHOICES), default="auto",
                    help="run a back-end call on the event loop when it is the only request in "
                         "flight (auto: if the export and every mount inside it are local file "
                         "systems; never: always use a worker thread)")
    ap.add_argument("--max-fids", type=_positive, default=65536)
    ap.add_argument("--max-inflight", type=_positive, default=1024,
                    help="requests per session read but not yet answered")
    ap.add_argument("--max-xattr-size", type=_positive, default=65536,
                    help="largest xattr value a guest may read or set")
    ap.add_argument("--proxy-socket", help="proxy back end: connect to this helper socket")
    ap.add_argument("--proxy-fd", type=int, help="proxy back end: a connected helper socket fd")
    ap.add_argument("--log-level", type=_choice(LOG_LEVELS), default="info")
    add_confinement_options(ap)
    return ap


def make_backend(args: argparse.Namespace) -> Backend:
    """Build the back end the options ask for; ValueError/OSError explain a refusal."""
    if args.backend == "local":
        from .backends.local import LocalBackend, make_model
        model = make_model(args.security_model or "passthrough", args.fmode, args.dmode)
        return LocalBackend(args.export, model=model, multidevs=args.multidevs, threads=args.threads,
                            inline=None if args.inline == "auto" else False)
    if args.backend == "handle":
        if args.security_model is not None:
            raise ValueError("Invalid argument security_model specified with handle fsdriver")
        from .backends.handle import HandleBackend  # type: ignore[import-not-found]
        return HandleBackend(args.export, multidevs=args.multidevs, threads=args.threads,
                             inline=None if args.inline == "auto" else False)
    from .backends.proxy import ProxyBackend
    return ProxyBackend.from_args(args)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.export):
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
        resolve_confinement(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if len(args.tag.encode()) > 254:
        raise UsageError("--tag must be at most 254 bytes")
    return args


async def serve(args: argparse.Namespace, ready: Callable[[], None] | None = None) -> None:
    backend = make_backend(args)
    config = SessionConfig(msize=args.msize, readonly=args.readonly, max_fids=args.max_fids,
                           max_inflight=args.max_inflight, max_xattr_size=args.max_xattr_size,
                           ids=id_translation(args))
    servers: list[StreamServer] = []
    tasks: list[asyncio.Task] = []
    socket_files: SocketFiles | None = None
    # Before anything listens: a SIGTERM from whoever saw the socket appear
    # must stop us cleanly, not kill us.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for address in args.listen:
            server = StreamServer(lambda: backend, config)
            try:
                await server.start(address)
            except OSError as exc:
                raise OSError(exc.errno, f"--listen {address}: {exc.strerror or exc}") from None
            servers.append(server)
            tasks.append(asyncio.ensure_future(server.serve_forever()))
        socket_paths = [a.path for a in args.listen if a.kind == "unix"]
        if args.socket_path is not None or args.fd is not None:
            from .transport.vhost_user import listen, serve_vhost_user
            listening = listen(args.socket_path, args.fd)
            if listening.created_inode is not None:
                socket_paths.append(args.socket_path)
            tasks.append(asyncio.ensure_future(serve_vhost_user(
                lambda: backend, socket_path=args.socket_path, listen_fd=args.fd, tag=args.tag,
                session_config=config, listening=listening)))
        socket_files = confine(args, backend, socket_paths)
        log.info("serving %s (%s)", args.export, args.backend)
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


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"ninep: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="ninep: %(levelname)s %(message)s")
    prepare(args)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        runner(serve(args))
    except (ValueError, OSError) as exc:
        print(f"ninep: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
