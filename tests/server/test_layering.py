"""The layering: the server knows nothing of the transports above it, and
no byte offset of a 9P frame is read outside ninep/protocol/."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import ninep

PACKAGE = Path(ninep.__file__).parent


def test_the_server_loads_without_any_transport() -> None:
    code = ("import sys, ninep.server.session, ninep.server.dialect_u, ninep.server.stats\n"
            "print(sorted(m for m in sys.modules if m.startswith('ninep.transport')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent, env={**os.environ,
                                                              "PYTHONPATH": str(PACKAGE.parent)})
    assert out.stdout.strip() == "[]"


def _reads_frame_bytes(tree: ast.AST) -> list[str]:
    """Subscripts of a frame-like name by a constant (``frame[4]``, ``tflush[7:9]``)
    and the header's offsets (``HEADER_SIZE``, ``HEADER``) used as positions."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in ("frame", "tflush", "head", "body", "request", "buf",
                                   "data", "reply"):
            index = node.slice
            parts = [index.lower, index.upper] if isinstance(index, ast.Slice) else [index]
            if any(isinstance(x, ast.Constant) and isinstance(x.value, int) for x in parts):
                found.append(f"{node.value.id}[...] at line {node.lineno}")
        if isinstance(node, ast.Attribute) and node.attr in ("HEADER_SIZE", "HEADER",
                                                             "FAST_TWRITE_HEAD",
                                                             "FAST_FID_OFFSET_COUNT"):
            found.append(f"{node.attr} at line {node.lineno}")
    return found


def test_no_frame_offsets_outside_the_protocol() -> None:
    offenders = {}
    for path in [*(PACKAGE / "server").glob("*.py"), PACKAGE / "transport" / "stream.py",
                 PACKAGE / "transport" / "vhost_user.py"]:
        found = _reads_frame_bytes(ast.parse(path.read_text()))
        if found:
            offenders[path.name] = found
    assert offenders == {}
