"""Process faults: the daemon killed with SIGKILL while an app (another
process, lited.client.Subscriber) holds one of its frames mapped. The app
keeps running (no SIGBUS), gets RingGone for frames of the dead daemon, and
carries on with the restarted one, which sweeps the stale ring at start.

(kill -9 during tools/install_sdk.sh and a full disk while unpacking are in
tests/test_install_sdk.py; a wedged daemon restarted by systemd's watchdog in
tests/test_systemd.py.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from daemon_process import DaemonProcess
from soak import shm_rings
from lited.client import Subscriber

KILLS = int(os.environ.get("LITED_KILL_CYCLES", "2"))

APP = r"""
import json, sys, time
from lited.client import FrameOverwritten, RingGone, Subscriber

def result(sub, not_ring=None):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = sub.recv(1)
        if m and m["type"] == "result" and m["frame"]["ring"] != not_ring:
            return m
    raise SystemExit("no result")

def attempt(fn):
    try:
        fn()
        return "ok"
    except (RingGone, FrameOverwritten) as e:
        return f"{type(e).__name__}: {e}"

with Subscriber(sys.argv[1], streams=["cam"]) as sub:
    ring = None
    for cycle in range(int(sys.argv[2])):
        while True:                      # a result whose frame is still in its slot
            msg = result(sub, not_ring=ring)
            held = sub.frame_view(msg)
            try:
                view = held.__enter__()  # a zero-copy, read-only view of the daemon's frame
                break
            except FrameOverwritten:     # reused before we got there (a slow app): take the next
                continue
        ring = msg["frame"]["ring"]
        copy = view.copy()
        print("HOLDING " + ring, flush=True)
        sys.stdin.readline()             # ... the daemon is SIGKILLed meanwhile
        out = {"ring": ring, "view_read": int(view.sum()) >= 0}   # touching the mapping: no SIGBUS
        out["view_exit"] = attempt(lambda: held.__exit__(None, None, None))
        out["frame"] = attempt(lambda: sub.frame(msg))
        def reenter():
            with sub.frame_view(msg):
                pass
        out["frame_view"] = attempt(reenter)
        print("CHECKED " + json.dumps(out), flush=True)
        sys.stdin.readline()             # ... a new daemon starts and sweeps the dead ring
        out = {"view_after_sweep": int(view.sum()) >= 0 and copy.shape == view.shape}   # still mapped
        for tries in range(100):         # the new daemon's frames: a slow reader may find one overwritten
            fresh = result(sub, not_ring=ring)
            try:
                frame = sub.frame(fresh)
                break
            except FrameOverwritten:
                continue
        out.update(new_ring=fresh["frame"]["ring"], new_frame=list(frame.shape), overwritten_first=tries)
        print("RESUMED " + json.dumps(out), flush=True)
"""


def line(proc, prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.stdout.readline()
        if text.startswith(prefix):
            return text[len(prefix):].strip()
        if not text and proc.poll() is not None:
            break
    raise AssertionError(f"app: no {prefix!r} line (exit {proc.poll()}): {proc.stderr.read()[-2000:]}")


def test_daemon_killed_while_an_app_holds_frames(tmp_path, bundles_dir):
    config = {"models": {"face": str(bundles_dir / "ultraface")},
              "streams": [{"name": "cam", "source": "synth://?size=320x240&fps=30"}]}
    d = DaemonProcess(tmp_path, config).start()
    app = subprocess.Popen([sys.executable, "-c", APP, d.pub, str(KILLS)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records, sweeps = [], []
    try:
        for cycle in range(KILLS):
            ring = line(app, "HOLDING ")
            old_pid = d.proc.pid
            assert shm_rings(old_pid) == [ring]
            d.proc.kill()  # SIGKILL: no atexit, no unlink
            d.proc.wait()
            d.stop()
            assert shm_rings(old_pid) == [ring]  # left behind in /dev/shm
            app.stdin.write("\n")
            app.stdin.flush()
            checked = json.loads(line(app, "CHECKED "))
            logged = len(d.output())
            stale = shm_rings(old_pid) == [ring]  # (another lited starting on this machine may sweep it first)
            t0 = time.monotonic()
            d = DaemonProcess(tmp_path, config).start()
            start_s = time.monotonic() - t0
            assert shm_rings(old_pid) == []  # swept at start
            swept_here = "stale frame rings" in d.output()[logged:]  # (a daemon of a test beside it may sweep first)
            if stale and swept_here:  # the sweep is logged with the ring's name
                assert ring in d.output()[logged:]
            sweeps.append(swept_here)
            app.stdin.write("\n")
            app.stdin.flush()
            resumed = json.loads(line(app, "RESUMED "))
            resumed["resume_s"] = round(time.monotonic() - t0, 2)
            records.append({**checked, **resumed, "restart_s": round(start_s, 2)})
        assert app.wait(30) == 0, app.stderr.read()[-2000:]  # exited normally: no SIGBUS, no traceback
    finally:
        if app.poll() is None:
            app.kill()
        exit_code = d.stop()
    assert exit_code == 0, d.output()[-2000:]
    print("\nRELIABILITY kill9:", records, "swept by this test's daemon:", sweeps)
    for r in records:
        assert r["view_read"] and r["view_after_sweep"]  # a held view stays readable: no SIGBUS, no SIGSEGV
        # leaving the view: ok, or FrameOverwritten if the daemon had started reusing that slot before it died
        assert r["view_exit"] == "ok" or r["view_exit"].startswith("FrameOverwritten: "), r
        assert r["frame"].startswith("RingGone: ") and "gone" in r["frame"], r
        assert r["frame_view"].startswith("RingGone: "), r
        assert r["new_ring"] != r["ring"] and r["new_frame"] == [240, 320, 3]
    assert not shm_rings(d.proc.pid)


def test_a_runtime_directory_removed_under_the_daemon_is_made_again(tmp_path, bundles_dir):
    """A tmp cleaner or an operator removing the runtime directory left the daemon streaming to
    nobody (`lited ctl`: no socket), let a second daemon start on the same config, and the first's
    clean stop then removed the second's sockets. The bus binds a removed socket file again, a
    second daemon is refused, and a file of another's in its place is left alone."""
    import shutil
    import socket

    config = {"models": {"face": str(bundles_dir / "ultraface")},
              "streams": [{"name": "cam", "source": "synth://?size=64x48&fps=5"}]}
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    d = DaemonProcess(tmp_path / "a", config).start()
    try:
        # one socket file removed alone (a soak audit: the daemon's own lock refused it, "address in use:
        # another lited serve (pid <its own>)", and the socket was never made again)
        for name in ("req.sock", "pub.sock"):
            (d.run_dir / name).unlink()
            deadline = time.monotonic() + 15
            while not (d.run_dir / name).exists():
                assert time.monotonic() < deadline, d.output()[-2000:]
                time.sleep(0.1)
        with d.client() as client:
            assert client.ping()["pong"]
        with Subscriber(d.pub) as sub:
            result = sub.recv(timeout=30)
            assert result is not None and result["stream"] == "cam"
        assert "cannot be made again" not in d.output(), d.output()[-2000:]
        shutil.rmtree(d.run_dir)
        deadline = time.monotonic() + 15
        while not (d.run_dir / "req.sock").exists() or not (d.run_dir / "pub.sock").exists():
            assert time.monotonic() < deadline, d.output()[-2000:]
            time.sleep(0.1)
        with d.client() as client:
            assert client.ping()["pong"]
        assert "its socket file was removed under the running daemon (a tmp cleaner?): bound it again" in d.output()
        second = DaemonProcess(tmp_path / "b", {**config, "runtime_dir": str(d.run_dir)})
        try:
            second.start(timeout=30)
            raise AssertionError("a second daemon started on the same sockets")
        except RuntimeError as exc:
            assert "address in use" in str(exc), exc
        # removed again, and a file put in the directory's place for a while (a full or read-only file
        # system does the same): it was given up for good; now tried again every 2 s, said once
        shutil.rmtree(d.run_dir)
        d.run_dir.write_text("in the way")
        deadline = time.monotonic() + 15
        while d.output().count("cannot be made again") < 2:
            assert time.monotonic() < deadline, d.output()[-2000:]
            time.sleep(0.1)
        time.sleep(2 * 2.0 + 0.5)  # two more checks: nothing more said
        assert d.output().count("cannot be made again") == 2, d.output()[-3000:]
        d.run_dir.unlink()
        deadline = time.monotonic() + 15
        while not (d.run_dir / "req.sock").exists() or not (d.run_dir / "pub.sock").exists():
            assert time.monotonic() < deadline, d.output()[-2000:]
            time.sleep(0.1)
        with d.client() as client:
            assert client.status()["bus"]["sockets_lost"] == []
        # removed again, and another's socket put in its place at once: said, and left alone at stop
        shutil.rmtree(d.run_dir)
        os.mkdir(d.run_dir, 0o750)
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(d.run_dir / "req.sock"))
        other.listen()
        deadline = time.monotonic() + 15
        while "another file has taken this daemon's socket's place" not in d.output():
            assert time.monotonic() < deadline, d.output()[-2000:]
            time.sleep(0.1)
    finally:
        assert d.stop() == 0, d.output()[-3000:]
    assert (d.run_dir / "req.sock").exists()  # the other's: its clean stop removed it before
    other.close()


def test_a_stream_whose_engine_cannot_restart_says_so_in_status(tmp_path, bundles_dir):
    """With its model file moved away, a stream's killed engine could not restart, and status still
    said `streaming` (the source was): nothing but engine_pid null told it. It also said the file had
    "changed on disk". Put back, the engine comes back by itself."""
    import shutil
    import signal

    bundle = tmp_path / "bundle"
    shutil.copytree(bundles_dir / "ultraface", bundle)
    config = {"models": {"face": str(bundle)}, "streams": [{"name": "cam", "source": "synth://?size=64x48&fps=10"}]}
    d = DaemonProcess(tmp_path, config).start().wait_ready()
    model = bundle / "model_x86.nb"
    try:
        with d.client() as client:
            os.rename(model, tmp_path / "away.nb")
            os.kill(client.status()["streams"][0]["model"]["engine_pid"], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while "gone since" not in ((stream := client.status()["streams"][0])["engine_down"] or ""):
                assert time.monotonic() < deadline, stream  # first "died (SIGKILL)", then the restart's reason
                time.sleep(0.1)
            assert "model_x86.nb: gone since it was loaded (moved or removed?)" in stream["engine_down"], stream
            assert stream["model"]["engine_pid"] is None, stream  # not the dead one's (an audit saw it)
            table = subprocess.run([sys.executable, "-m", "lited.cli", "ctl", "--config", str(d.config_path), "status"],
                                   capture_output=True, text=True, timeout=60).stdout
            assert "streaming (engine down)" in table and "cam: engine down: " in table, table
            os.rename(tmp_path / "away.nb", model)
            deadline = time.monotonic() + 60
            while (stream := client.status()["streams"][0])["engine_down"]:
                assert time.monotonic() < deadline, stream
                time.sleep(0.2)
            assert stream["model"]["engine_pid"]
    finally:
        assert d.stop() == 0, d.output()[-3000:]
