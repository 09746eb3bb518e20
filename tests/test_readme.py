"""README.md as a new user follows it: its quick tour and its local-app
snippet, copied out of the README and run as written."""
from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2

from conftest import ROOT, need_shared
from daemon_process import DaemonProcess
from test_install_sdk import checkout, first_install, golden  # noqa: F401 - fixtures: the session's installed venv

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_block(text: str, lang: str) -> str:
    match = re.search(rf"```{lang}\n(.*?)```", text, re.S)
    assert match, f"no ```{lang} block"
    return match.group(1)


def run_script(argv: list, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run in a session of its own; whatever it left running is killed with it."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def test_readme_quick_tour_runs_as_written(tmp_path, first_install):  # noqa: F811
    tour = code_block(section("Quick tour"), "sh")
    commands = [line.split("  #")[0].strip() for line in tour.splitlines() if line.strip()]
    assert [c.split()[1] if c.startswith("lited") else c.split()[0] for c in commands] == [
        ".", "--version", "inspect", "selftest", "infer", "run", "config", "serve", "ctl", "python", "ctl", "ctl",
        "kill", "tools/install_sdk.sh"]
    assert (ROOT / ".venv/bin/activate").is_file(), "the tour starts from `make venv`"
    # The install goes into build/board; the runtime there is the one this session installed already
    # (the same checkout: the installer finds it installed), so the tour does not pip for minutes.
    board = ROOT / "build" / "board"
    shutil.rmtree(board, ignore_errors=True)
    (board / "opt/lited").mkdir(parents=True)
    (board / "opt/lited/venv").symlink_to(first_install.prefix / "opt/lited/venv")
    snapshot = Path("/tmp/cam0.jpg")
    snapshot.unlink(missing_ok=True)
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path / "run")}  # this test's own sockets, as under systemd
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + tour
    try:
        proc = run_script(["bash", "-c", script], ROOT, env, timeout=900)
        out = proc.stdout
        print(out, proc.stderr)
        assert proc.returncode == 0, proc.stderr
        assert out.startswith("lited 0.1.0 (Python 3.")
        assert "demo_ppocrv4 1.0.0  (ocr)" in out                       # inspect
        assert "selftest demo_ppocrv4 1.0.0 on paddle_lite (model_x86.nb, fp32): ok (3 detections" in out  # selftest
        assert "sdk_template/demo_ppocrv4/golden.png  [ocr]" in out     # infer
        assert "cam0 #0  [ocr]" in out                                      # run
        assert "config sdk_template/demo.conf: ok" in out                              # config check
        status = out[out.index("lited 0.1.0 (protocol 1) at ipc://"):]
        assert re.search(r"\ncam0 +(connecting|streaming) ", status), status  # ctl status (its first frame may be on its way)
        assert re.search(r"\ncam0 #\d+ demo_ppocrv4: 3 found \[text", out)          # the subscriber
        assert re.search(r"\ncam0 frame \d+ \(640x256, 3 detections\) -> /tmp/cam0.jpg", out)  # snapshot
        assert cv2.imread(str(snapshot)).shape == (256, 640, 3)
        assert re.search(r"\nreloaded text in [\d.]+ s\n", out)                        # ctl reload
        assert "install_sdk: bundle: selftest demo_ppocrv4 1.0.0: ok" in out       # install
        assert "install_sdk: done: demo_ppocrv4 1.0.0" in out
        assert (board / "var/lib/lited/bundles/demo_ppocrv4/current/golden.png").is_file()
    finally:
        shutil.rmtree(board, ignore_errors=True)
        snapshot.unlink(missing_ok=True)


def test_readme_local_apps_snippet_runs_as_written(tmp_path, bundles_dir):
    """The snippet as a new app would paste it: it imports what it uses, finds
    the daemon by itself, and ends (on main it lacked `import cv2` and blocked)."""
    snippet = code_block(section("Local apps"), "python")
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), cv2.imread(str(need_shared("images", "chelsea.png"))))
    (tmp_path / "app.py").write_text(snippet)
    config = {"models": {"det": str(bundles_dir / "fastestdet")},
              "streams": [{"name": "cam0", "source": "synth://?size=320x240&fps=10"}]}
    (tmp_path / "d").mkdir()
    with DaemonProcess(tmp_path / "d", config) as d:
        with d.client(timeout=30) as client:
            while [s["state"] for s in client.status()["streams"]] != ["streaming"]:
                time.sleep(0.1)
        env = {**os.environ, "RUNTIME_DIRECTORY": str(d.run_dir)}  # where the default endpoints are, as under systemd
        proc = run_script([sys.executable, "app.py"], tmp_path, env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert re.fullmatch(r"\d+ \[.*\]", first), first
    reply = ast.literal_eval(second)  # the printed dict: the infer result for photo.jpg
    assert reply["model"] == "fastestdet" and reply["detections"][0]["label"] == "cat", reply
