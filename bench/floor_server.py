"""ninep with the in-memory floor back end (bench/floor_backend.py).

    python -m bench.floor_server --export DIR --socket-path SOCK --tag TAG

Takes ninep's own options; the tree starts with the names and sizes found
under ``--export`` (no data), and nothing is ever written to the host.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.floor_backend import FloorBackend  # noqa: E402
from ninep import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main(backend_factory=lambda args: FloorBackend(seed=args.export)))
