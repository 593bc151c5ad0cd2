"""The benchmark scripts live in bench/ at the repository root (not installed)."""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # "bench" and "tests.e2e" import from any rootdir
    sys.path.insert(0, str(_REPO))
