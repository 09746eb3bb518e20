"""`lited infer` and `lited inspect` as a user runs them: real processes."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import DEMO_BUNDLE, need_shared


def lited(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lited.cli", *args], capture_output=True, text=True, timeout=120)


def test_infer_json_one_object_per_image_with_the_agreed_keys(bundles_dir):
    chelsea, coffee = need_shared("images", "chelsea.png"), need_shared("images", "coffee.png")
    proc = lited("infer", "--bundle", str(bundles_dir / "fastestdet"), "--json", str(chelsea), str(coffee))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["image"] for r in lines] == [str(chelsea), str(coffee)]
    for r in lines:
        assert set(r) == {"image", "task", "detections", "classes", "timings_ms"}
        assert set(r["timings_ms"]) == {"preprocess", "infer", "postprocess"}
        for d in r["detections"]:
            assert set(d) == {"label", "score", "box"} and len(d["box"]) == 4
    assert lines[0]["detections"][0]["label"] == "cat"


def test_infer_human_table(bundles_dir):
    proc = lited("infer", "--bundle", str(bundles_dir / "mobilenetv2"), str(need_shared("images", "chelsea.png")))
    assert proc.returncode == 0, proc.stderr
    assert "[classification]" in proc.stdout and "cat" in proc.stdout and "infer" in proc.stdout


def test_inspect_shows_manifest_model_and_paddle_lite_version():
    proc = lited("inspect", "--bundle", str(DEMO_BUNDLE))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "demo_ppocrv4 1.0.0" in out and "paddle_lite v2.13-rc" in out
    assert "input  " in out and "output save_infer_model" in out and "kernels host,x86" in out
    info = json.loads(lited("inspect", "--bundle", str(DEMO_BUNDLE), "--json").stdout)
    assert info["engine"]["outputs"][0]["shape"][:2] == [1, 1]
    assert set(info["models"]) == {"x86", "arm"} and info["models"]["arm"][0]["targets"] == ["arm", "host"]


def test_a_bad_image_is_one_line_exit_2_and_no_output(tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    proc = lited("infer", "--bundle", str(DEMO_BUNDLE), str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"lited: {bad}: not a readable image"
    proc = lited("--debug", "infer", "--bundle", str(tmp_path / "no-bundle"), str(bad))
    assert "Traceback" in proc.stderr


def test_command_line_values_that_cannot_work_are_usage_errors(bundles_dir):
    """Refused before anything starts, exit 2, in the config's words: they used
    to be taken (a run of 0 frames or seconds exiting 0 with nothing said,
    --threads -3 shown as "-3 threads", a bad --name retried for 10 s)."""
    run = ("run", "--bundle", str(bundles_dir / "ultraface"), "--source", "synth://?size=160x120&fps=5")
    for args, said in (((*run, "--frames", "0"), "argument --frames: expected an integer of at least 1, got '0'"),
                       ((*run, "--duration", "0"), "argument --duration: expected a number above 0, got '0'"),
                       ((*run, "--open-timeout", "-1"), "argument --open-timeout: expected a number above 0"),
                       ((*run, "--stall-timeout", "-1"), "argument --stall-timeout: expected a number above 0"),
                       ((*run, "--name", "bad name"), "argument --name: 'bad name' may hold only letters"),
                       ((*run, "--name", "current"), "argument --name: 'current' may hold only letters"),
                       (("inspect", "--bundle", str(bundles_dir / "ultraface"), "--threads", "-3"),
                        "argument --threads: expected an integer from 1 to 256, got '-3'"),
                       (("ctl", "ping", "--timeout", "-1"), "argument --timeout: expected a number above 0")):
        proc = lited(*args)
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stdout, proc.stderr)
        assert said in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_run_reports_a_stall_and_cleans_up_on_sigterm(bundles_dir, tmp_path):
    """--stall-timeout is checked as the daemon checks it (the capture thread
    may be blocked in its read), and SIGTERM (timeout(1), systemd) removes
    the stream's frame ring like Ctrl-C does."""
    import os
    import signal
    import time

    name = f"stall{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "lited.cli", "run", "--bundle", str(bundles_dir / "ultraface"),
                             "--source", "synth://?size=160x120&fps=0.25", "--stall-timeout", "1", "--name", name,
                             "-v", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        err = ""
        while "stalled: no frame for 1 s" not in err:
            assert time.monotonic() < deadline and proc.poll() is None, err
            err += proc.stderr.readline()
        assert any(name in f for f in os.listdir("/dev/shm"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not any(name in f for f in os.listdir("/dev/shm")), os.listdir("/dev/shm")
