"""Fixtures for the real-kernel e2e tests (QEMU guest, see guest.py).

Missing host packages skip the tests with a reason on a developer's
machine, but fail them loudly when ``CI=true`` (see servers.require).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # so "tests.e2e.*" and "ninep" import from any rootdir
    sys.path.insert(0, str(_REPO))

from tests.e2e.guest import GuestError, GuestImage, missing_host_tools  # noqa: E402
from tests.e2e.servers import (  # noqa: E402
    DiodServer,
    NinepServer,
    Serve,
    free_tcp_port,
    require,
    require_vhost_qemu,
    start_diod,
    start_proxy_helper,
    stop,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: boots a real Linux guest under QEMU (slow, needs qemu/kernel packages)")


@pytest.fixture(scope="session")
def e2e_image() -> GuestImage:
    """The cached guest image (built on first use)."""
    missing = missing_host_tools()
    require(not missing, f"missing host tools: {', '.join(missing)}")
    try:
        return GuestImage.ensure()
    except GuestError as e:
        require(False, f"cannot build the guest image: {e}")
        raise


@pytest.fixture
def export_dir(export: Path) -> Path:
    """An empty directory for a server to export (the root conftest's ``export``)."""
    return export


@pytest.fixture
def sock_dir(sockdir: Path) -> Path:
    """A short-path directory for Unix sockets (the root conftest's ``sockdir``)."""
    return sockdir


@pytest.fixture
def diod_tcp(export_dir: Path, tmp_path: Path) -> Iterator[DiodServer]:
    """diod serving ``export_dir`` on a loopback TCP port."""
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken between probe and bind
        try:
            server = start_diod(export_dir, ("127.0.0.1", free_tcp_port()), tmp_path / "diod.log")
            break
        except GuestError as e:
            last = e
    else:
        raise AssertionError(f"diod did not start: {last}")
    yield server
    stop(server.proc)


@pytest.fixture
def diod_unix(export_dir: Path, tmp_path: Path, sock_dir: Path) -> Iterator[DiodServer]:
    """diod serving ``export_dir`` on a Unix socket."""
    server = start_diod(export_dir, str(sock_dir / "diod.sock"), tmp_path / "diod.log")
    yield server
    stop(server.proc)


@pytest.fixture
def proxy_helper(export_dir: Path, sock_dir: Path) -> Iterator[str]:
    """QEMU's virtfs-proxy-helper exporting ``export_dir``; yields its socket path."""
    sock = str(sock_dir / "proxy.sock")
    proc = start_proxy_helper(export_dir, sock)
    yield sock
    stop(proc)


@pytest.fixture
def ninep_server(export_dir: Path, sock_dir: Path, tmp_path: Path,
                 request: pytest.FixtureRequest) -> Iterator[NinepServer]:
    """ninep serving ``export_dir`` on a Unix socket; the indirect param is its
    extra CLI args, or a :class:`Serve` (args and transport, e.g. ``vhost(...)``).

    It must exit 0 on SIGTERM and never log a traceback.
    """
    param = getattr(request, "param", ())
    spec = param if isinstance(param, Serve) else Serve(tuple(param))
    if spec.transport == "vhost":
        require_vhost_qemu()
    server = NinepServer(export_dir, sock_dir / "ninep.sock", tmp_path / "ninep.log", *spec.args,
                         transport=spec.transport)
    yield server
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output(), server.output()
