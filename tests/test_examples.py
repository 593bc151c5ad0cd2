"""The files in examples/ say what they must: valid XML, a config_size that
fits the tag, a unit systemd accepts, and references to documents that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def test_libvirt_domain_passes_a_vhost_user_9p_device_with_the_right_config_size() -> None:
    domain = ET.parse(EXAMPLES / "libvirt-domain.xml").getroot()
    args = [a.get("value") for a in domain.iter(f"{QEMU_NS}arg")]
    device = dict(kv.split("=", 1) for kv in args[args.index("-device") + 1].split(",")[1:])
    assert args[args.index("-device") + 1].startswith("vhost-user-test-device-pci,")
    assert device["virtio-id"] == "9"
    tag = re.search(r'tag "([^"]+)"', (EXAMPLES / "libvirt-domain.xml").read_text()).group(1)
    assert int(device["config_size"]) == 2 + len(tag.encode())
    chardev = dict(kv.split("=", 1) for kv in args[args.index("-chardev") + 1].split(",")[1:])
    assert chardev["id"] == device["chardev"]
    backing = domain.find("memoryBacking")
    assert backing.find("source").get("type") == "memfd"
    assert backing.find("access").get("mode") == "shared"


def test_no_example_points_at_a_missing_document() -> None:
    repo = EXAMPLES.parent
    for path in EXAMPLES.iterdir():
        for name in re.findall(r"\b([\w-]+\.md)\b", path.read_text()):
            assert (repo / name).exists(), f"{path.name} mentions {name}"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # ninep need not be installed where the unit expects it: point ExecStart at a binary that is.
    unit = tmp_path / "ninep-vhost-user.service"
    unit.write_text((EXAMPLES / "ninep-vhost-user.service").read_text()
                    .replace("/usr/local/bin/ninep", shutil.which("true") or "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
