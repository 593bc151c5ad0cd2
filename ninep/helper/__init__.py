"""ninep's privileged proxy helper, wire-compatible with QEMU's virtfs-proxy-helper.

Run it as ``ninep-proxy-helper`` or ``python -m ninep.helper``; see
:mod:`ninep.helper.main`.  It imports :mod:`ninep.protocol.proxy` and nothing
from ``ninep.server``.
"""
