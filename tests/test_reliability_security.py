"""Who may reach a running daemon: its ipc sockets (0660, in a 0750 runtime
directory) and its frame rings (0440) are open to the daemon's user and
group only. Checked by really trying, as user `nobody`, with and without the
daemon's group, and with a positive control (the same probe succeeds once
the mode is loosened), so the check itself can fail.

(TCP without CURVE keys refused: tests/test_daemon.py::test_tcp_needs_curve_keys_or_insecure_flag;
the unit's `systemd-analyze security` exposure: tests/test_systemd.py::test_unit_exposure_at_most_2.)
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from daemon_process import DaemonProcess
from soak import shm_rings

PROBE = r"""
import errno, json, os, socket, sys
out = {}
for path in sys.argv[1:]:
    try:
        if path.endswith(".sock"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.close()
        elif path.endswith("+w"):
            os.close(os.open(path[:-2], os.O_RDWR))
        else:
            os.close(os.open(path, os.O_RDONLY))
        out[path] = "ok"
    except OSError as e:
        out[path] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""


def probe_python() -> str:
    """An interpreter user nobody may run (the venv's may live under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                         candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that user nobody can run")


def as_nobody(paths: list, groups: str = "") -> dict:
    """Try each path as uid nobody (gid nogroup), optionally with supplementary `groups`."""
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup"] + ([f"--groups={groups}"] if groups else
                                                                 ["--clear-groups"])
    proc = subprocess.run(cmd + [probe_python(), "-c", PROBE, *map(str, paths)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def daemon(bundles_dir):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    base = Path(tempfile.mkdtemp(prefix="lited-sec-"))
    base.chmod(0o755)  # world-traversable: only the daemon's own modes may keep others out
    bundle = base / "bundle"
    shutil.copytree(bundles_dir / "ultraface", bundle)
    for p in [bundle, *bundle.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    config = {"models": {"face": str(bundle)}, "streams": [{"name": "cam", "source": "synth://?size=64x48&fps=5"}]}
    d = DaemonProcess(base, config).start()
    yield d
    d.stop()
    shutil.rmtree(base, ignore_errors=True)


def test_sockets_and_rings_refuse_other_users(daemon):
    run_dir = daemon.run_dir
    socks = [run_dir / "pub.sock", run_dir / "req.sock"]
    deadline = time.monotonic() + 30

    def linked() -> list:  # not a segment still being made under its temporary name (`~new`)
        return [name for name in shm_rings(daemon.proc.pid) if "~new" not in name]

    while not linked() and time.monotonic() < deadline:
        time.sleep(0.05)
    ring = Path("/dev/shm") / linked()[0]
    gid = os.getegid()
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o750
    assert all(stat.S_IMODE(s.stat().st_mode) == 0o660 for s in socks)
    assert stat.S_IMODE(ring.stat().st_mode) == 0o440 and ring.stat().st_gid == gid

    results = {"other user": as_nobody(socks + [ring]),
               "group member": as_nobody(socks + [ring, f"{ring}+w"], groups=str(gid))}
    run_dir.chmod(0o755)  # a lax runtime directory: the sockets' own mode still keeps others out
    results["other user, open dir"] = as_nobody(socks)
    for sock in socks:  # positive control: loosened, the same probe gets in
        sock.chmod(0o666)
    ring.chmod(0o644)
    results["control: loosened"] = as_nobody(socks + [ring])
    for sock in socks:
        sock.chmod(0o660)
    ring.chmod(0o440)
    run_dir.chmod(0o750)
    print("\nRELIABILITY security:", {k: sorted(set(v.values())) for k, v in results.items()})
    assert set(results["other user"].values()) == {"EACCES"}, results
    assert set(results["other user, open dir"].values()) == {"EACCES"}, results
    group = results["group member"]
    assert [group[str(p)] for p in socks + [ring]] == ["ok"] * 3, group  # the daemon's group gets in
    assert group[f"{ring}+w"] == "EACCES"  # ... to read frames, never to write them
    assert set(results["control: loosened"].values()) == {"ok"}, results
    with daemon.client() as client:
        assert client.ping()["pong"]


def test_status_hides_camera_passwords(bundles_dir, tmp_path):
    """Events and the log masked a source's password, but status (`lited ctl status`, and
    /v1/status, which any local user may read over loopback) showed it in clear."""
    import socket
    with socket.socket() as s:  # a port nothing listens on: the streams stay in backoff
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"models": {"face": str(bundles_dir / "ultraface")},
              "streams": [{"name": "cam", "source": f"rtsp://admin:s3cretPW@127.0.0.1:{port}/live"},
                          {"name": "web", "source": f"http://127.0.0.1:{port}/v.mjpg?user=admin&pwd=p4ssWD&ch=1"}]}
    with DaemonProcess(tmp_path, config) as d:
        d.wait_ready()
        with d.client() as client:
            status = client.status()
        text = json.dumps(status)
        assert "s3cretPW" not in text and "p4ssWD" not in text, text
        sources = {s["stream"]: s["source"] for s in status["streams"]}
        assert sources == {"cam": f"rtsp://admin:***@127.0.0.1:{port}/live",
                           "web": f"http://127.0.0.1:{port}/v.mjpg?user=admin&pwd=***&ch=1"}
    assert "s3cretPW" not in d.output() and "p4ssWD" not in d.output()


def test_text_from_outside_reaches_the_log_and_status_as_one_printable_line(tmp_path, bundles_dir):
    """A camera's reason phrase (`404 Gone<ESC>[2J<BEL>`) reached the log and `lited ctl status`
    raw; a bundle's `task` with a line break and ESC was shown raw by inspect and status."""
    import io
    import logging
    from urllib.parse import urlsplit

    from lited.bundle import BundleError, load_bundle
    from lited.service.logs import CompactFormatter
    from lited.sources.probe import _judge
    from conftest import reseal

    said = _judge("HTTP/1.1 404 Gone\x1b[2J\x1b]0;PWNED\x07", urlsplit("http://cam/live"))
    assert said == "the server has no stream at /live ('404 Gone\\x1b[2J\\x1b]0;PWNED\\x07')", said
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(CompactFormatter())
    record = logging.LogRecord("lited.stream", logging.WARNING, __file__, 1, "source lost: %s", ("a\nb\x1b[2J",), None)
    assert handler.format(record).endswith("source lost: a\\nb\\x1b[2J")
    root = shutil.copytree(bundles_dir / "fastestdet", tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["task"] = "detection\n\x1b[31mPWNED"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"task: \"detection\\n\\u001b\[31mPWNED\": control characters"):
        load_bundle(reseal(root))
