"""Least privilege: the running server keeps only its model's capabilities, and no_new_privs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ninep import syscalls as sc
from ninep.client import Client
from ninep.sandbox.caps import CAP_NAMES, mask_of, parse_modcaps

from .conftest import StartServer, status_mask

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs the capabilities to drop")

PASSTHROUGH = {sc.CAP_CHOWN, sc.CAP_DAC_OVERRIDE, sc.CAP_FOWNER, sc.CAP_FSETID, sc.CAP_SETGID,
               sc.CAP_SETUID, sc.CAP_MKNOD}
NONE = PASSTHROUGH - {sc.CAP_SETGID, sc.CAP_SETUID}
MAPPED = {sc.CAP_DAC_OVERRIDE, sc.CAP_FOWNER}


def test_modcaps_parse() -> None:
    assert parse_modcaps("+sys_admin,-CAP_MKNOD,+cap_kill") == (
        frozenset({CAP_NAMES.index("sys_admin"), CAP_NAMES.index("kill")}),
        frozenset({sc.CAP_MKNOD}))
    for bad in ("sys_admin", "+nope", "", "+"):
        with pytest.raises(ValueError, match="--modcaps"):
            parse_modcaps(bad)


@root_only
@pytest.mark.parametrize("options,caps", [
    ([], PASSTHROUGH),
    (["--security-model", "passthrough"], PASSTHROUGH),
    (["--security-model", "mapped-xattr"], MAPPED),
    (["--security-model", "mapped-file"], MAPPED),
    (["--security-model", "none"], NONE),
    (["--backend", "handle"], PASSTHROUGH | {sc.CAP_DAC_READ_SEARCH}),
    # The proxy's helper does the privileged work; a root guest's writes keep set-id bits.
    (["--backend", "proxy"], {sc.CAP_FSETID}),
    (["--modcaps", "+sys_admin,-mknod"], PASSTHROUGH - {sc.CAP_MKNOD} | {21}),
])
async def test_the_running_server_keeps_only_what_its_model_needs(
        start_server: StartServer, options: list[str], caps: set[int]) -> None:
    async with start_server(*options) as running:
        status = running.status()
    assert status_mask(status["CapEff"]) == mask_of(caps), status["CapEff"]
    assert status_mask(status["CapPrm"]) == mask_of(caps)
    assert status_mask(status["CapBnd"]) == mask_of(caps)
    assert status_mask(status["CapInh"]) == 0 and status_mask(status["CapAmb"]) == 0
    assert status["NoNewPrivs"].strip() == "1"


@root_only
async def test_passthrough_still_gives_new_files_to_the_guest_user(
        start_server: StartServer, export: Path) -> None:
    (export / "other").write_text("x")
    os.chown(export / "other", 4000, 4000)
    os.chmod(export / "other", 0o600)
    async with start_server() as running:
        async with await Client.connect_unix(running.socket, msize=8192) as client:
            root = await client.attach(n_uname=1234)
            await client.create(root, "mine", gid=5678)
            # CAP_DAC_OVERRIDE is kept: another user's 0600 file is readable
            assert await client.read(await client.walk_open(root, ["other"]), 0, 10) == b"x"
    st = os.lstat(export / "mine")
    assert (st.st_uid, st.st_gid) == (1234, 5678)


async def test_rlimit_nofile_reaches_the_server(start_server: StartServer) -> None:
    async with start_server("--rlimit-nofile", "300") as running:
        limits = Path(f"/proc/{running.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == ["300", "300"], line


@pytest.mark.parametrize("option,value", [("--modcaps", "+bogus"), ("--modcaps", "chown"),
                                          ("--rlimit-nofile", "lots"), ("--rlimit-nofile", "3")])
def test_bad_values_are_one_line_naming_the_option(export: Path, option: str,
                                                   value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "ninep", "--export", str(export), "--listen",
                             "unix:/nonexistent/s", option, value], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and option in result.stderr, result.stderr
