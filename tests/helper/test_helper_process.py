"""The helper as a process: options, capabilities, malformed input, daemon mode."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import pytest

from proxy_helper_support import OUR_HELPER, Helper, helper_env
from ninep.protocol import proxy as P

# CAP_CHOWN 0, CAP_DAC_OVERRIDE 1, CAP_FOWNER 3, CAP_FSETID 4, CAP_SETGID 6, CAP_SETUID 7,
# CAP_MKNOD 27 -- written out here independently of the helper's own table.
ALLOWED = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 27)


def proc_status(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def can_drop_bounding_set() -> bool:
    return bool(int(proc_status("/proc/self/status")["CapEff"], 16) & (1 << 8))  # CAP_SETPCAP


# --- capabilities ---------------------------------------------------------------------

def test_capabilities_are_exactly_the_allowed_set(socket_helper):
    c = socket_helper.connect()
    try:
        c.ok(P.Lstat(b"/"))  # the helper is past its setup
        # a create as another user switches this connection's thread and back
        c.ok(P.Create(b"/as-user", os.O_CREAT | os.O_WRONLY, 0o600, 1234, 5678))
        c.ok(P.Mkdir(1234, 5678, b"/dir-as-user", 0o700))
        pid = socket_helper.pid
        st = proc_status(f"/proc/{pid}/status")
        assert int(st["CapEff"], 16) == ALLOWED
        assert int(st["CapPrm"], 16) == ALLOWED
        assert int(st["CapInh"], 16) == 0
        assert int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"] == "1"
        if can_drop_bounding_set():
            assert int(st["CapBnd"], 16) == ALLOWED
        tasks = os.listdir(f"/proc/{pid}/task")
        assert len(tasks) >= 2  # the accept loop and this connection's thread
        for tid in tasks:
            ts = proc_status(f"/proc/{pid}/task/{tid}/status")
            assert int(ts["CapEff"], 16) == ALLOWED, tid
            assert int(ts["CapPrm"], 16) == ALLOWED, tid
        assert (st["Uid"].split(), st["Gid"].split()) == (["0"] * 4, ["0"] * 4)
    finally:
        c.close()


def test_helper_is_chrooted(socket_helper, tree):
    c = socket_helper.connect()
    c.ok(P.Lstat(b"/"))  # past its setup
    c.close()
    assert os.readlink(f"/proc/{socket_helper.pid}/root") == str(tree[0])
    assert os.readlink(f"/proc/{socket_helper.pid}/cwd") == str(tree[0])


def test_socket_is_owned_and_mode_0770(tree):
    h = Helper(tree[0], "socket", extra=[])
    try:
        st = os.stat(h.sock_path)
        assert st.st_mode & 0o777 == 0o770
    finally:
        h.stop()


# --- malformed requests -----------------------------------------------------------------

def header(type_: int, size: int) -> bytes:
    return struct.pack("<II", type_, size)


MALFORMED = {
    "oversized": header(P.T_LSTAT, P.PROXY_MAX_IO_SZ + 1),
    "huge-size": header(P.T_OPEN, 0xFFFFFFFF),
    "unknown-type": header(99, 0),
    "reply-type-as-request": header(P.T_SUCCESS, 4) + b"\0\0\0\0",
    "error-type-as-request": header(P.T_ERROR, 4) + b"\xfe\xff\xff\xff",
    "truncated-string": header(P.T_LSTAT, 5) + b"\x0a\x00abc",
    "truncated-ints": header(P.T_CREATE, 6) + b"\x01\x00a\x01\x00\x00",
    "trailing-garbage": header(P.T_LSTAT, 4) + b"\x01\x00/x",
    "empty-payload": header(P.T_RENAME, 0),
    "eof-in-header": b"\x08\x00\x00",
    "eof-in-payload": header(P.T_LSTAT, 20) + b"\x12\x00/f",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_closes_only_that_connection(socket_helper, name):
    good = socket_helper.connect()
    bad = socket_helper.connect()
    try:
        good.ok(P.Lstat(b"/"))
        bad.ok(P.Lstat(b"/file"))  # a valid request first: the connection was fine
        bad.sock.sendall(MALFORMED[name])
        if name.startswith("eof-"):
            bad.sock.shutdown(socket.SHUT_WR)
        assert bad.is_closed(), "helper kept the connection open"
        # the helper still serves the other connection, and new ones
        good.ok(P.Lstat(b"/file"))
        fresh = socket_helper.connect()
        fresh.ok(P.Lstat(b"/dir"))
        fresh.close()
    finally:
        good.close()
        bad.close()
    assert socket_helper.proc.poll() is None
    err = socket_helper.stderr()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "closing" in ln]
    assert len(lines) == 1, err


def test_malformed_request_in_fd_mode_exits_cleanly(tree):
    h = Helper(tree[0], "fd")
    try:
        c = h.connect()
        c.ok(P.Lstat(b"/"))
        c.sock.sendall(MALFORMED["unknown-type"])
        assert c.is_closed()
        assert h.proc.wait(10) == 0
        err = h.stderr()
        assert "Traceback" not in err and "unknown request type 99" in err
        c.close()
    finally:
        h.stop()


def test_client_hangup_is_clean(socket_helper):
    for _ in range(3):
        c = socket_helper.connect()
        c.send(P.Lstat(b"/file"))
        c.close()  # without reading the reply
    c = socket_helper.connect()
    c.ok(P.Lstat(b"/file"))
    c.close()
    time.sleep(0.2)
    assert "Traceback" not in socket_helper.stderr()


# --- options ----------------------------------------------------------------------------

def run_helper(args, timeout=20):
    return subprocess.run(OUR_HELPER + args, capture_output=True, env=helper_env(),
                          timeout=timeout, stdin=subprocess.DEVNULL)


def bad_option_cases(tmp_path):
    d = str(tmp_path)
    f = tmp_path / "plain"
    f.write_text("x")
    existing = tmp_path / "exists.sock"
    existing.write_text("")
    sock = str(tmp_path / "s.sock")
    return [
        [],
        ["-p", d],
        ["-f", "3"],
        ["-p", d, "-f", "notanumber"],
        ["-p", d, "-f", "-1"],
        ["-p", d, "-f", "999"],
        ["-p", "/nonexistent/dir", "-f", "0"],
        ["-p", str(f), "-f", "0"],
        ["-p", d, "-s", sock],
        ["-p", d, "-s", sock, "-u", "0"],
        ["-p", d, "-s", sock, "-g", "0"],
        ["-p", d, "-s", sock, "-u", "x", "-g", "0"],
        ["-p", d, "-f", "0", "-s", sock, "-u", "0", "-g", "0"],
        ["-p", d, "-s", str(existing), "-u", "0", "-g", "0"],
        ["-p", d, "--bogus"],
        ["-p", d, "-s", sock, "-u", "0", "-g", "0", "extra"],
        ["-p"],
    ]


def test_bad_options_exit_2_with_one_line(tmp_path):
    for args in bad_option_cases(tmp_path):
        r = run_helper(args)
        assert r.returncode == 2, (args, r)
        err = r.stderr.decode()
        assert err.count("\n") == 1 and err.startswith("ninep-proxy-helper: "), (args, err)
        assert r.stdout == b""


def test_help(tmp_path):
    r = run_helper(["--help"])
    assert r.returncode == 0 and b"--socket" in r.stdout and b"--nodaemon" in r.stdout


def test_long_options_and_module_entry(tree):
    rundir = tree[0].parent / "run"
    rundir.mkdir()
    sock = f"/tmp/nph-long-{os.getpid()}.sock"
    p = subprocess.Popen(OUR_HELPER + ["--path", str(tree[0]), f"--socket={sock}", "--uid", "0",
                                       "--gid", "0", "--nodaemon"],
                         env=helper_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(sock)
                break
            except OSError:
                s.close()
                assert time.monotonic() < deadline and p.poll() is None
                time.sleep(0.05)
        from proxy_helper_support import Client
        c = Client(s)
        assert c.ok(P.Readlink(b"/link", 100)).target == b"file"
        c.close()
    finally:
        p.terminate()
        p.wait(10)
        if os.path.exists(sock):
            os.unlink(sock)


def pids_with_arg(arg: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if os.fsencode(arg) in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def test_daemon_mode(tree):
    sock = f"/tmp/nph-daemon-{os.getpid()}.sock"
    try:
        r = run_helper(["-p", str(tree[0]), "-s", sock, "-u", "0", "-g", "0"])
        assert r.returncode == 0, r  # the parent returns once the socket exists
        assert r.stderr == b""
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        # SO_PEERCRED names the process that called listen(): the parent that exited
        # after forking.  Find the daemon by its command line.
        pids = pids_with_arg(sock)
        assert len(pids) == 1, pids
        pid = pids[0]
        from proxy_helper_support import Client
        c = Client(s)
        assert c.ok(P.Lstat(b"/file")).st_size == 13
        st = proc_status(f"/proc/{pid}/status")
        assert int(st["CapEff"], 16) == ALLOWED
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.getsid(pid) == pid  # its own session
        c.close()
    finally:
        for pid in pids_with_arg(sock):
            os.kill(pid, 15)
        if os.path.exists(sock):
            os.unlink(sock)
