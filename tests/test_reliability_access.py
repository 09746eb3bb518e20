"""Who gets at the daemon's sockets (issue 20 item 14, and issue 19's
runtime-directory and lock points), tried for real as user `nobody`.

- a runtime directory pre-created by another user (or left writable by
  others, or a symlink) is refused at start, one line, exit 2: nobody
  pre-created one with mode 0777, replaced `req.sock` and answered root's
  `lited ctl` with forged replies;
- a client checks who serves a socket before it sends a byte: a fake daemon
  run by `nobody` gets nothing, not even the ZeroMQ greeting, and
  `lited ctl` says why (exit 2);
- as root with /run writable the runtime directory is /run/lited (as
  docs/config.md says), not /tmp/lited-0;
- a second `lited serve` on the same sockets fails at once with "address in
  use" (exit 2) and leaves the first one's sockets alone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from daemon_process import DaemonProcess
from lited.client import Client, UntrustedPeer
from test_reliability_security import probe_python

NOBODY = 65534

# A fake daemon for user nobody, standard library only: it speaks enough
# ZMTP 3.0 (greeting, NULL handshake) for a ZeroMQ DEALER to send it its
# requests, and writes down how many bytes each connection sent it (what a
# forger would capture: the request, the image in it).
FAKE = r"""
import os, socket, sys, threading
path, log = sys.argv[1], sys.argv[2]
GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\x01" + bytes(31)
PROPS = b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"ROUTER"
READY = b"\x04" + bytes([6 + len(PROPS)]) + b"\x05READY" + PROPS
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(16)
open(os.path.join(os.path.dirname(path), "ready"), "w").close()
def serve(conn):
    total = 0
    conn.settimeout(3)
    try:
        conn.sendall(GREETING + READY)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            total += len(data)
    except OSError:
        pass
    with open(log, "a") as fh:
        fh.write(f"{total}\n")
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def need_root() -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")


def serve_once(config: dict, tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    path = tmp / "once.json"
    path.write_text(json.dumps(config))
    return subprocess.run([sys.executable, "-m", "lited.cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=timeout)


def test_a_runtime_dir_another_user_could_change_is_refused(tmp_path, bundles_dir):
    need_root()
    base = Path(tempfile.mkdtemp(prefix="lited-acc-"))
    try:
        base.chmod(0o755)
        planted = base / "planted"  # pre-created by nobody, mode 0777 (the attack)
        planted.mkdir()
        os.chown(planted, NOBODY, NOBODY)
        planted.chmod(0o777)
        lax = base / "lax"  # ours, but anyone may write in it
        lax.mkdir()
        lax.chmod(0o777)
        link = base / "link"  # a symlink to a directory of nobody's
        link.symlink_to(planted)
        (base / "afile").write_text("")
        models = {"face": str(bundles_dir / "ultraface")}
        cases = {planted: "owned by uid 65534", lax: "mode 0777 lets group or others write",
                 link: "not a directory (a symlink",
                 base / "afile" / "rt": f"cannot be made: {base / 'afile'} is not a directory"}  # "File exists"
        for runtime_dir, why in cases.items():
            run = serve_once({"models": models, "runtime_dir": str(runtime_dir)}, tmp_path)
            print(f"\nRELIABILITY runtime dir {runtime_dir.name}: exit {run.returncode}: {run.stderr.strip()}")
            assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
            assert str(runtime_dir) in run.stderr and why in run.stderr, run.stderr
            assert not (runtime_dir / "req.sock").exists()
        # A fresh one is made 0750 and ours: the daemon starts.
        d = DaemonProcess(tmp_path, {"models": models, "runtime_dir": str(base / "fresh")})
        d.run_dir = base / "fresh"
        d.start()
        try:
            st = (base / "fresh").stat()
            assert (st.st_uid, st.st_mode & 0o777) == (0, 0o750)
        finally:
            assert d.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_clients_do_not_talk_to_a_daemon_run_by_another_user(tmp_path, bundles_dir):
    need_root()
    python = probe_python()
    base = Path(tempfile.mkdtemp(prefix="lited-forge-"))
    fake = None
    try:
        base.chmod(0o755)
        forged = base / "run"  # nobody's own directory, with nobody's fake req.sock in it
        forged.mkdir()
        os.chown(forged, NOBODY, NOBODY)
        log = base / "captured"
        log.touch()
        os.chown(log, NOBODY, NOBODY)
        fake = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c",
                                 FAKE, str(forged / "req.sock"), str(log)])
        deadline = time.monotonic() + 10
        while not (forged / "ready").exists():
            assert fake.poll() is None and time.monotonic() < deadline, "the fake daemon did not start"
            time.sleep(0.05)
        endpoint = f"ipc://{forged / 'req.sock'}"
        outcomes = {}
        # In nobody's directory (nobody could swap the socket), then in a directory root owns
        # (so only the listener's uid, SO_PEERCRED, can tell): refused both times, before a byte is sent.
        for case in ("nobody's directory", "root's directory"):
            if case == "root's directory":
                os.chown(forged, 0, 0)
                forged.chmod(0o755)
            ctl = subprocess.run([sys.executable, "-m", "lited.cli", "ctl", "ping", "--endpoint", endpoint,
                                  "--timeout", "3"], capture_output=True, text=True, timeout=30)
            with pytest.raises(UntrustedPeer) as info:
                with Client(endpoint, timeout=3) as client:
                    client.infer(image=b"\x89PNG secret camera image")
            outcomes[case] = (ctl.returncode, ctl.stderr.strip(), str(info.value))
        time.sleep(3.5)  # the fake daemon writes down each connection once it ends
        captured = [int(n) for n in log.read_text().split()]
        print(f"\nRELIABILITY forged daemon: {outcomes}; bytes the forger got per connection: {captured}")
        for case, (code, err, raised) in outcomes.items():
            assert code == 2 and err.count("\n") == 0 and "refusing to talk to it" in err, (case, err)
        assert "its directory is owned by uid 65534" in outcomes["nobody's directory"][1]
        assert "served by uid 65534 (nobody)" in outcomes["root's directory"][1]
        assert "served by uid 65534" in outcomes["root's directory"][2]
        assert set(captured) <= {0}, captured  # the peer check connected and left: not a byte
    finally:
        if fake is not None:
            fake.kill()
            fake.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_as_root_the_runtime_dir_is_run_lited(tmp_path, bundles_dir):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a /run of its own")
    config = tmp_path / "lited.json"
    config.write_text(json.dumps({"models": {"face": str(bundles_dir / "ultraface")}}))  # no runtime_dir
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")}
    script = (f'mount -t tmpfs lited-run /run && '
              f'{sys.executable} -c "from lited.config import default_runtime_dir as d; print(d())" && '
              f'({sys.executable} -m lited.cli serve --config {config} >{tmp_path}/serve.log 2>&1 &) && '
              f'for i in $(seq 600); do [ -S /run/lited/req.sock ] && break; sleep 0.1; done; '
              f'stat -c "%U %a" /run/lited; '
              f'{sys.executable} -m lited.cli ctl ping --timeout 20; '
              f'pkill -TERM -f "lited.cli serve --config {config}"; sleep 1')
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, env=env, timeout=180)
    lines = run.stdout.splitlines()
    print(f"\nRELIABILITY runtime dir as root: {lines}")
    assert lines[0] == "/run/lited", run.stdout + run.stderr + (tmp_path / "serve.log").read_text()
    assert lines[1] == "root 750" and "answers at ipc:///run/lited/req.sock" in lines[2], run.stdout + run.stderr


def test_a_second_daemon_on_the_same_sockets_fails_fast(tmp_path, bundles_dir):
    config = {"models": {"face": str(bundles_dir / "ultraface")},
              "streams": [{"name": "cam", "source": "synth://?size=64x48&fps=5"}]}
    d = DaemonProcess(tmp_path, config).start()
    try:
        inodes = {name: (d.run_dir / name).stat().st_ino for name in ("req.sock", "pub.sock")}
        t0 = time.monotonic()
        second = subprocess.Popen([sys.executable, "-m", "lited.cli", "serve", "--config", str(d.config_path)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            code = second.wait(20)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait()
            pytest.fail("the second lited serve is still running after 20 s, on the first one's sockets")
        took = time.monotonic() - t0
        err = second.stderr.read()
        print(f"\nRELIABILITY second daemon: exit {code} after {took:.2f} s: {err.strip()}")
        assert code == 2 and err.count("\n") == 1 and "address in use" in err, err
        assert str(d.run_dir / "pub.sock") in err or str(d.run_dir / "req.sock") in err
        assert took < 15  # before loading any bundle: Python's imports are most of it
        assert {name: (d.run_dir / name).stat().st_ino for name in inodes} == inodes  # untouched
        with d.client() as client:
            assert client.ping()["pong"]
    finally:
        assert d.stop() == 0, d.output()[-3000:]


def test_a_client_that_cannot_write_run_lited_still_finds_the_daemon_there(tmp_path):
    """An app in group lited may enter /run/lited but not write it: clients took the daemon's own
    rule (/run/lited only if writable) and looked in /tmp/lited-<uid>, so the README's subscriber
    failed for exactly the users the docs let in. A read-only /run stands in for the missing write
    permission (access(2) says so even to root)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a /run of its own")
    env = {k: v for k, v in os.environ.items() if k not in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")}
    code = ("from lited.config import default_runtime_dir as d; from lited.client import daemon_endpoints as e; "
            "print(d()); print(*e())")
    script = (f'mount -t tmpfs lited-run /run && mkdir -m 750 /run/lited && mount -o remount,ro /run && '
              f'{sys.executable} -c "{code}"')
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, env=env, timeout=60)
    lines = run.stdout.splitlines()
    assert len(lines) == 2, run.stdout + run.stderr
    assert lines[0] != "/run/lited"  # a daemon of this user would not make its sockets there
    assert lines[1] == "ipc:///run/lited/pub.sock ipc:///run/lited/req.sock"
