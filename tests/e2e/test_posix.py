"""POSIX semantics the real Linux client needs from the server (issue 14).

One guest boot per back end / security model runs the cases the POSIX
conformance suite found:

* a write by uid 65534 to a file of mode 04777, 02777 or 06777 that user
  1000 owns, through O_WRONLY (``>>``) and O_RDWR (``1<>``), clears the
  set-id bits as Linux does; root's write keeps them;
* a file a non-root guest user creates is that user's (``none`` included);
* create, chmod, chown, link, rename, mkfifo, symlink, truncate, unlink and
  rmdir under a 32-component, ~4,000-byte relative path, below a directory
  that puts the whole path past PATH_MAX inside the export;
* sub-second times set on the host reach the guest.  (Sub-second times the
  guest sets do not reach any server: the Linux 6.1 client truncates them to
  whole seconds before its Tsetattr, as a 9P trace shows; see the report of
  issue 14.)

``runas`` (tests/e2e/tools/runas.c, built statically) switches the guest
user: busybox has no applet that does it for a uid outside /etc/passwd.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.guest import FdSocketShare, GuestImage, run_guest
from tests.e2e.servers import NinepServer, require

pytestmark = pytest.mark.e2e

TOOL_SRC = Path(__file__).parent / "tools" / "runas.c"
SETID_MODES = ("4777", "2777", "6777")
#: (atime, mtime) of the host file whose sub-second times the guest reads.
HOST_TIMES_NS = (1_600_000_000_123_456_789, 1_600_000_001_987_654_321)

SERVERS = {
    "passthrough": ("--security-model", "passthrough"),
    "mapped-file": ("--security-model", "mapped-file"),
    "none": ("--security-model", "none"),
    "handle": ("--backend", "handle"),
    "proxy": ("--backend", "proxy"),
}

_SCRIPT = r"""
cd /mnt
# --- set-id bits: the suite's six cases, then root's write
for m in 4777 2777 6777; do
    for how in wronly rdwr; do
        f=setid-$m-$how
        echo data > $f && chown 1000:1000 $f && chmod $m $f
        if [ $how = wronly ]; then
            check "uid 65534 appends to $f" runas 65534 65534 sh -c "printf x >> $f"
        else
            check "uid 65534 writes $f read-write" runas 65534 65534 sh -c "printf x 1<> $f"
        fi
        echo "MODE $f $(stat -c %a $f)"
    done
done
echo data > setid-root && chmod 6777 setid-root && printf x >> setid-root
echo "MODE setid-root $(stat -c %a setid-root)"

# --- a non-root user's new files are that user's
mkdir shared && chmod 1777 shared
check "uid 1000 creates" runas 1000 1000 sh -c "echo x > shared/file && mkdir shared/dir"
echo "OWNER file $(stat -c '%u:%g' shared/file)"
echo "OWNER dir $(stat -c '%u:%g' shared/dir)"

# --- sub-second times from the host
echo "TIMES $(stat -c '%x|%y' subsec)"

# --- a ~4,000-byte relative path, past PATH_MAX inside the export
seg=$(printf '%0125d' 0)
mkdir deep && cd deep
i=0; while [ $i -lt 8 ]; do mkdir $seg && cd $seg; i=$((i + 1)); done
rel=$seg; i=1; while [ $i -lt 31 ]; do rel=$rel/$seg; i=$((i + 1)); done
echo "RELPATH ${#rel}"
check "mkdir -p a long path" mkdir -p $rel
check "create under it" sh -c "echo hello > $rel/file"
check "chmod" chmod 640 $rel/file
check "chown" chown 1000:1000 $rel/file
check "link" ln $rel/file $rel/hard
check "rename" mv $rel/hard $rel/moved
check "mkfifo" mkfifo $rel/fifo
check "symlink" ln -s file $rel/sym
check_eq "readlink" "$(readlink $rel/sym)" "file"
check "truncate" truncate -s 2 $rel/file
check_eq "read back" "$(cat $rel/file)" "he"
check_eq "attributes" "$(stat -c '%a %u %g %h' $rel/file)" "640 1000 1000 2"
check "mkdir" mkdir $rel/dir
check "unlink" rm $rel/moved $rel/fifo $rel/sym $rel/file
check "rmdir" rmdir $rel/dir
echo LONG-PATHS-OK
"""


def _lines(output: str, tag: str) -> dict[str, str]:
    """``{key: value}`` of the workload's ``TAG key value`` lines."""
    return {parts[1]: parts[2] for line in output.splitlines()
            if (parts := line.split(" ", 2))[0] == tag and len(parts) == 3}


@pytest.mark.parametrize("ninep_server", list(SERVERS.values()), ids=list(SERVERS),
                         indirect=True)
def test_posix_cases_from_the_conformance_suite(ninep_server: NinepServer, export_dir: Path,
                                                tmp_path: Path) -> None:
    require(shutil.which("gcc") is not None, "gcc is needed to build the guest's runas tool")
    tool = tmp_path / "runas"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(tool), str(TOOL_SRC)], check=True)
    image = GuestImage.ensure(extra_binaries=(str(tool),))
    (export_dir / "subsec").write_text("x")
    os.utime(export_dir / "subsec", ns=HOST_TIMES_NS)

    res = run_guest(_SCRIPT, share=FdSocketShare(ninep_server.sock), image=image, timeout=1200)
    out = res.workload_output
    described = res.describe() + "\n--- ninep ---\n" + ninep_server.output()
    assert res.exit_status == 0 and "LONG-PATHS-OK" in out, described

    modes = _lines(out, "MODE")
    for m in SETID_MODES:
        for how in ("wronly", "rdwr"):
            assert modes[f"setid-{m}-{how}"] == "777", described
    assert modes["setid-root"] == "6777", described
    assert _lines(out, "OWNER") == {"file": "1000:1000", "dir": "1000:1000"}, described
    times = re.search(r"^TIMES (.*)$", out, re.MULTILINE)
    assert times and times.group(1) == ("2020-09-13 12:26:40.123456789 +0000|"
                                        "2020-09-13 12:26:41.987654321 +0000"), described
    relpath = re.search(r"^RELPATH (\d+)$", out, re.MULTILINE)
    assert relpath and 3900 < int(relpath.group(1)) < 4096, described

    if "mapped-file" not in ninep_server.proc.args:  # the host files themselves
        assert stat.S_IMODE(os.stat(export_dir / "setid-6777-rdwr").st_mode) == 0o777
        assert stat.S_IMODE(os.stat(export_dir / "setid-root").st_mode) == 0o6777
        owned = os.stat(export_dir / "shared" / "file")
        assert (owned.st_uid, owned.st_gid) == (1000, 1000)
