"""`lited infer` and `lited inspect` as a user runs them: real processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO_BUNDLE, need_shared

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"


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
            assert set(d) == {"label", "class_id", "score", "box"} and len(d["box"]) == 4
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


def test_inspect_of_a_bundle_without_paddle_lite_version_says_nothing_of_one(tmp_path):
    """paddle_lite_version is optional (docs/bundle.md): no "(bundle optimized with None)"."""
    from conftest import reseal

    root = shutil.copytree(DEMO_BUNDLE, tmp_path / "demo")
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["paddle_lite_version"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    proc = lited("inspect", "--bundle", str(reseal(root)))
    assert proc.returncode == 0, proc.stderr
    assert "runs here as:" in proc.stdout and "optimized with" not in proc.stdout, proc.stdout


def test_inspect_warns_of_labels_past_the_models_classes(tmp_path, bundles_dir):
    """A labels file longer than the classes loads (a classifier's spare lines are never read),
    but it is often another model's: inspect (and so build_sdk) says so."""
    from conftest import reseal

    root = shutil.copytree(bundles_dir / "fastestdet", tmp_path / "fastestdet")
    with open(root / "labels.txt", "a") as fh:
        fh.write("extra one\nextra two\n")
    info = json.loads(lited("inspect", "--bundle", str(reseal(root)), "--json").stdout)
    assert "labels.txt: 82 labels for 80 classes: the last 2 are never read (is it this model's labels file?)" \
        in info["warnings"], info["warnings"]
    assert not json.loads(lited("inspect", "--bundle", str(bundles_dir / "fastestdet"), "--json").stdout)["warnings"]


def test_python_m_lited_is_the_lited_command():
    proc = subprocess.run([sys.executable, "-m", "lited", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("lited "), proc.stdout + proc.stderr


def test_a_bad_image_is_one_line_exit_2_and_no_output(tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    proc = lited("infer", "--bundle", str(DEMO_BUNDLE), str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"lited: {bad}: not a readable image"
    proc = lited("--debug", "infer", "--bundle", str(tmp_path / "no-bundle"), str(bad))
    assert "Traceback" in proc.stderr


def test_a_jpeg_cut_short_is_read_as_far_as_it_came_and_a_fifo_named_once(tmp_path, bundles_dir):
    """`cv2.imdecode` refuses a JPEG without its end marker, which `cv2.imread` and viewers read:
    a file copied while written was "not a readable image" (and "not a decodable" image to the
    daemon). A FIFO was named twice: "lited: f.jpg: f.jpg: not a regular file (a FIFO)"."""
    import cv2

    from lited.service.images import decode_image

    whole = cv2.imencode(".jpg", cv2.imread(str(need_shared("images", "chelsea.png"))))[1].tobytes()
    (tmp_path / "whole.jpg").write_bytes(whole)
    (tmp_path / "no_end.jpg").write_bytes(whole[:-2])
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) * 9 // 10])
    os.mkfifo(tmp_path / "fifo.jpg")
    paths = [str(tmp_path / n) for n in ("whole.jpg", "no_end.jpg", "cut.jpg", "fifo.jpg")]
    proc = lited("infer", "--bundle", str(bundles_dir / "fastestdet"), "--json", *paths)
    assert proc.returncode == 2 and proc.stderr.strip() == f"lited: {paths[3]}: not a regular file (a FIFO)", \
        proc.stderr
    got = {Path(r["image"]).name: r["detections"] for r in map(json.loads, proc.stdout.splitlines())}
    assert got["no_end.jpg"] == got["whole.jpg"] and got["whole.jpg"], got
    assert "cut.jpg" in got, got
    for data in (whole[:-2], whole[:len(whole) * 9 // 10]):  # the daemon's infer decodes them too
        assert decode_image({"image": data}).shape == (300, 451, 3)


def test_an_image_whose_header_claims_too_many_pixels_is_one_line_and_the_rest_go_on(tmp_path):
    """A 70-byte PNG saying 100000 x 100000: OpenCV refused it with a cv2.error, a traceback and
    exit 1, and the folder's other images were not read (the CLI audit). Now one line, as for a
    file that is not an image, before a pixel is decoded; the folder's good image gets its result."""
    import struct
    import zlib

    folder = tmp_path / "imgs"
    folder.mkdir()
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                                    + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    shutil.copy(DEMO_BUNDLE / "golden.png", folder / "a.png")
    proc = lited("infer", "--bundle", str(DEMO_BUNDLE), "--json", str(folder))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == f"lited: {folder / 'b.png'}: 100000x100000 is over 67108864 pixels"
    assert [json.loads(line)["image"] for line in proc.stdout.splitlines()] == [str(folder / "a.png")]


def test_a_target_this_machine_does_not_run_is_named_by_infer_run_and_selftest(tmp_path):
    """An arm-only bundle with --target arm said "no model for target 'x86' (has arm)": about the
    target not asked for (the CLI audit). It names the one asked for now, and why it cannot run."""
    arm_only = tmp_path / "arm_only"
    shutil.copytree(DEMO_BUNDLE, arm_only, ignore=shutil.ignore_patterns("*_x86.nb"))
    manifest = json.loads((arm_only / "manifest.json").read_text())
    for part in [manifest, *manifest["stages"]]:
        part["models"].pop("x86")
    (arm_only / "manifest.json").write_text(json.dumps(manifest))
    for args in (("infer", str(DEMO_BUNDLE / "golden.png")), ("run", "--source", "synth://"), ("selftest",)):
        proc = lited(args[0], "--bundle", str(arm_only), "--target", "arm", *args[1:])
        assert proc.returncode == 2 and proc.stderr.strip() == (
            f"lited: bundle {arm_only}: models.arm: built for arm, this machine is x86_64; refusing to load it "
            "(an engine given another machine's model can crash: Paddle Lite does)"), (args, proc.stderr)


def test_inspect_of_another_target_shows_each_stage_and_selftest_names_the_field(tmp_path):
    """The engines audit: `inspect --target arm` of a cascade said `"stages": []`; `selftest
    --engine` of an engine the bundle lists no file for did not name the field as infer did."""
    proc = lited("inspect", "--bundle", str(DEMO_BUNDLE), "--target", "arm", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = json.loads(proc.stdout)["stages"]
    assert [(s["name"], s["file"], s["engine"], s["why"]) for s in stages] == [
        ("cls", "cls_model_arm.nb", "paddle_lite", "the first stage's engine"),
        ("rec", "rec_model_arm.nb", "paddle_lite", "the first stage's engine")], stages
    text = lited("inspect", "--bundle", str(DEMO_BUNDLE), "--target", "arm").stdout
    assert "then stage cls on " in text and ": cls_model_arm.nb on paddle_lite," in text, text
    proc = lited("selftest", "--bundle", str(DEMO_BUNDLE), "--engine", "openvino")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"lited: bundle {DEMO_BUNDLE}/manifest.json: models.x86: no file for openvino (the bundle lists "
        "paddle_lite (fp32))"), proc.stderr


def test_bad_usage_is_one_line_exit_2():
    """argparse printed the whole usage before its error (the build audit: 3-4 lines)."""
    for args, said in ((("inspect", "--precision", "int4"), "lited inspect: argument --precision: invalid "
                        "choice: 'int4' (choose from 'fp32', 'fp16', 'int8') (see lited inspect --help)"),
                       (("nope",), "lited: argument COMMAND: invalid choice: 'nope'"),
                       (("ctl", "bogus"), "lited ctl: argument action: invalid choice: 'bogus'"),
                       # an option no command has was the top level's ("lited: ... (see lited --help)")
                       (("inspect", "--bundle", "b", "--bogus"), "lited inspect: unrecognized arguments: --bogus "
                                                                 "(see lited inspect --help)")):
        proc = lited(*args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(said), proc.stderr


def test_an_engine_installed_but_broken_is_said_so_not_called_absent(tmp_path):
    """The engines audit: an engine whose package is there but fails to import was refused as
    "not installed here", which it is not (a board with a broken install must fix it)."""
    (tmp_path / "paddlelite").mkdir()
    (tmp_path / "paddlelite" / "__init__.py").write_text("raise ImportError('libfoo.so: cannot open shared object')\n")
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "infer", "--bundle", str(DEMO_BUNDLE),
                           str(DEMO_BUNDLE / "golden.png")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(RUNTIME)])})
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        "engine 'paddle_lite' is installed here but does not import: libfoo.so: cannot open shared object"), \
        proc.stderr


def test_unhelpful_system_words_are_said_in_lited_s(tmp_path):
    """A Unix socket that accepts nothing said "Resource temporarily unavailable"; keygen --dir
    naming a file said "File exists" (the CLI audit)."""
    import socket

    path = tmp_path / "fake.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(0)
        proc = lited("ctl", "--endpoint", f"ipc://{path}", "--timeout", "5", "ping")
    assert proc.returncode == 3 and proc.stderr.strip() == (
        f"lited: ping: nothing accepts connections on {path} (its backlog is full): not a lited request socket, "
        "or a daemon that hangs"), proc.stderr
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = lited("keygen", "k", "--dir", str(afile))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"lited: keygen: --dir {afile}: cannot write the keys there (a file, not a directory)"), proc.stderr


def test_keygen_writes_through_no_link_and_whatever_the_umask(tmp_path):
    """A dangling link at NAME.key was written through (a file made where it pointed); under
    umask 000 the --dir was made 0777."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "app.key").symlink_to(tmp_path / "victim")
    proc = lited("keygen", "app", "--dir", str(keys))
    assert proc.returncode == 2 and "app.key exists: not overwriting a key" in proc.stderr, proc.stderr
    assert not (tmp_path / "victim").exists()
    made = tmp_path / "new"
    proc = subprocess.run(["sh", "-c", f'umask 000; exec "$0" -m lited.cli keygen app --dir {made}', sys.executable],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (made, made / "app.key", made / "app.key_secret")}
    assert modes == {"new": "0o755", "app.key": "0o644", "app.key_secret": "0o600"}, modes
    assert sorted(p.name for p in made.iterdir()) == ["app.key", "app.key_secret"]


def test_a_golden_result_pasted_whole_from_infer_passes_selftest(tmp_path):
    """sdk_template/README.md: paste what `lited infer --json` printed as golden.expected. Its
    image, task and timings_ms were refused as unknown fields (the examples audit)."""
    bundle = tmp_path / "demo"
    shutil.copytree(DEMO_BUNDLE, bundle)
    printed = lited("infer", "--bundle", str(bundle), "--json", str(bundle / "golden.png"))
    assert printed.returncode == 0, printed.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["golden"]["expected"] = json.loads(printed.stdout)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = lited("selftest", "--bundle", str(bundle), "--engine", "paddle_lite")
    assert proc.returncode == 0 and " ok on paddle_lite" in proc.stdout, (proc.stdout, proc.stderr)


def test_command_line_values_that_cannot_work_are_usage_errors(bundles_dir):
    """Refused before anything starts, exit 2, in the config's words: they used
    to be taken (a run of 0 frames or seconds exiting 0 with nothing said,
    --threads -3 shown as "-3 threads", a bad --name retried for 10 s)."""
    run = ("run", "--bundle", str(bundles_dir / "ultraface"), "--source", "synth://?size=160x120&fps=5")
    for args, said in (((*run, "--frames", "0"), "argument --frames: expected an integer of at least 1, got '0'"),
                       ((*run, "--duration", "0"), "argument --duration: expected a number above 0, got '0'"),
                       ((*run, "--open-timeout", "-1"), "argument --open-timeout: expected a number above 0"),
                       ((*run, "--stall-timeout", "-1"), "argument --stall-timeout: expected a number above 0"),
                       ((*run, "--name", "bad name"), "argument --name: 'bad name' may hold only ASCII letters"),
                       ((*run, "--name", "current"), "argument --name: 'current' may hold only ASCII letters"),
                       ((*run, "--name", "_daemon"), "argument --name: '_daemon' is reserved for the daemon's own"),
                       ((*run, "--open-timeout", "5000"), "argument --open-timeout: expected a number above 0 and at "
                                                          "most 3600, got '5000'"),
                       (("ctl", "ping", "--timeout", "5000"), "argument --timeout: expected a number above 0 and at "
                                                             "most 3600"),
                       (("ctl", "ping", "--wait", "99999"), "argument --wait: expected a number from 0 to 3600"),
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


def test_infer_into_a_reader_that_left_ends_quietly(bundles_dir):
    """`lited infer ... | head -1` said `lited: [Errno 32] Broken pipe` and exit 2, as if the input were bad."""
    chelsea = str(need_shared("images", "chelsea.png"))
    proc = subprocess.Popen([sys.executable, "-m", "lited.cli", "infer", "--bundle", str(bundles_dir / "ultraface"),
                             chelsea, chelsea, chelsea], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


WATCHED = """
import os, sys, time
from lited.quiet import quiet_native_output
from lited.native_crash import run_watched
quiet_native_output()
def work():
    print("child", os.getpid(), flush=True)
    if sys.argv[1] == "abort":
        os.write(2, b"[F 12/ 1 16:41:37.545 ...elementwise_compute.cc:355 Run] unsupported active type:abs\\n")
        os.abort()
    if sys.argv[1] == "sleep":
        time.sleep(60)
    return int(sys.argv[1])
sys.exit(run_watched(work))
"""


def test_a_native_crash_in_an_in_process_command_is_told_in_the_librarys_words():
    """`lited infer` on a model Paddle Lite aborts in exited 134 with nothing said: the quiet command
    line sends native output to /dev/null. infer and inspect now run in a watched child whose
    stderr a memory file keeps."""
    run = [sys.executable, "-c", WATCHED]
    aborted = subprocess.run([*run, "abort"], capture_output=True, text=True, timeout=60)
    assert aborted.returncode == 134
    assert aborted.stderr == "lited: died (SIGABRT): unsupported active type:abs\n"
    passed = subprocess.run([*run, "3"], capture_output=True, text=True, timeout=60)
    assert (passed.returncode, passed.stderr) == (3, "")
    # a SIGTERM to the parent (timeout(1)) is passed on and not called a crash; a SIGKILL takes the child too
    for signum, code in ((signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
        proc = subprocess.Popen([*run, "sleep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child = int(proc.stdout.readline().split()[1])
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == code
        assert proc.stderr.read() == ""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(child):
            time.sleep(0.05)
        assert not _running(child), f"child {child} outlived its parent's {signum.name}"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for an init that may reap slowly)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_run_names_the_images_it_skips(bundles_dir, tmp_path):
    """`lited run` on a folder with an empty and a text `.png` gave the good images' results and
    exit 0 without a word about the others (`lited infer` names each it cannot read)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(need_shared("images", "chelsea.png").read_bytes())
    (folder / "b.png").write_bytes(b"")
    (folder / "c.png").write_text("hello")
    proc = lited("run", "--bundle", str(bundles_dir / "ultraface"), "--source", f"images://{folder}", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert f"lited: stream cam0: source 'images://{folder}': cannot decode {folder}/b.png (0 bytes); skipped" \
        in proc.stderr.splitlines(), proc.stderr
    assert any(line.endswith(f"cannot decode {folder}/c.png (5 bytes); skipped") for line in proc.stderr.splitlines())


def test_run_says_a_loss_once_a_reason_and_a_few_bad_images_in_a_loop(bundles_dir, tmp_path):
    """`lited run` printed every retry of one lost source (5 lines for an outage of 14 s), and a
    looping folder of bad images 192 lines in 12 s: a loss once for each reason (its retries with
    -v), and at most 5 image lines in 10 s, the next saying how many were not."""
    import shutil as sh

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(need_shared("images", "chelsea.png").read_bytes())
    for i in range(10):
        (folder / f"b{i}.png").write_bytes(b"")
    proc = subprocess.Popen([sys.executable, "-m", "lited.cli", "run", "--bundle", str(bundles_dir / "ultraface"),
                             "--source", f"images://{folder}?loop=1&fps=40", "--json", "--duration", "7"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(3.5)  # several passes of the bad images, then the folder goes: retries for 3 s
    sh.rmtree(folder)
    err = proc.communicate(timeout=60)[1]
    lines = err.splitlines()
    bad = [line for line in lines if line.endswith("(0 bytes); skipped") or "(0 bytes); skipped (" in line]
    assert 5 <= len(bad) <= 6, err  # 5 in the first 10 s (a 6th, with the count, if a window ended)
    reasons = [line.split(": backoff: ")[1].rpartition("; retry in ")[0] for line in lines if ": backoff: " in line]
    assert reasons and "no such folder" in reasons[-1] and len(set(reasons)) == len(reasons), err  # retries: not said


def test_run_of_a_paced_synth_with_frames_ends_there(bundles_dir):
    """The README audit: `synth://?frames=3` (paced at 30 fps) printed 3 results, then was reopened
    after a backoff for ever, each time 3 more; `frames` ends it, as a file's end does."""
    proc = lited("run", "--bundle", str(bundles_dir / "ultraface"), "--source",
                 "synth://?size=160x120&frames=3", "--json")
    assert proc.returncode == 0 and "backoff" not in proc.stderr, proc.stderr
    assert 1 <= len(proc.stdout.splitlines()) <= 3, proc.stdout


def test_ctl_options_the_action_does_not_take_are_usage_errors(tmp_path):
    """`ctl reload --bundle` without --model went to the daemon (exit 1), and an option of another
    action (`ctl status --model x`) was ignored in silence."""
    endpoint = f"ipc://{tmp_path}/none.sock"  # never asked: refused before
    for args, said in ((["reload", "--bundle", str(tmp_path)], "ctl reload: --bundle needs --model"),
                       (["status", "--model", "face"], "ctl status: --model is an option of ctl reload only"),
                       (["snapshot", "--force"], "ctl snapshot: --force is an option of ctl reload only"),
                       (["ping", "-o", "x.jpg"], "ctl ping: --out is an option of ctl snapshot only")):
        proc = lited("ctl", *args, "--endpoint", endpoint)
        assert proc.returncode == 2 and proc.stderr.startswith(f"lited: {said}"), (args, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("megabytes", [300, 500])
def test_serve_out_of_memory_at_start_is_one_line(tmp_path, bundles_dir, megabytes):
    """Under an address-space limit `lited serve` ended in a 20-line traceback (`can't start new
    thread`, 300 MB here) or blamed the manifest for a bare `MemoryError` (500 MB)."""
    config = tmp_path / "lited.json"
    config.write_text(json.dumps({"runtime_dir": str(tmp_path / "run"), "models": {"face": str(bundles_dir / "ultraface")},
                                  "streams": [{"name": "cam", "source": "synth://?size=64x48&fps=5", "model": "face"}]}))
    proc = subprocess.Popen(["prlimit", f"--as={megabytes << 20}", "--", sys.executable, "-m", "lited.cli", "serve",
                             "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.communicate(timeout=30)
        pytest.skip(f"{megabytes} MB of address space is enough for this machine's lited serve")
    lines = err.strip().splitlines()
    assert "Traceback" not in err and proc.returncode in (1, 2), err
    assert lines[-1].startswith("lited: ") and ("can't start new thread: out of memory" in lines[-1]
                                                 or "out of memory (MemoryError)" in lines[-1]), err


@pytest.mark.parametrize("locale", ["en_US.ISO-8859-1", "zh_CN.GBK"])
def test_a_locale_not_in_utf8_reads_chinese_labels_and_paths(locale: str, tmp_path: Path, bundles_dir: Path) -> None:
    """A shell's LANG on a board (the unit sets PYTHONUTF8=1, a shell does not): `lited infer` and
    `inspect` said `'latin-1' codec can't encode characters` for a Chinese label, and a bundle in a
    Chinese-named folder was "not a directory". lited runs itself again in Python's UTF-8 mode."""
    from conftest import locale_env, reseal

    env = locale_env(tmp_path, locale)
    root = shutil.copytree(bundles_dir / "ultraface", tmp_path / "模型 包" / "人脸")
    (root / "labels.txt").write_text("背景\n人脸\n", encoding="utf-8")
    reseal(root)
    image = need_shared("images", "astronaut.png")
    for args, said in ((["inspect", "--bundle", str(root)], "labels: 2 (背景, 人脸)"),
                       (["infer", "--bundle", str(root), str(image)], "  人脸 ")):
        proc = subprocess.run([sys.executable, "-m", "lited.cli", *args], capture_output=True, env=env, timeout=120)
        out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0 and said in out, (args[0], proc.returncode, out, err)


def test_control_characters_in_labels_are_printed_as_escapes(tmp_path: Path, bundles_dir: Path) -> None:
    """A label's ESC and BEL reached the terminal raw from `lited inspect` and `lited infer` (the log
    escaped them)."""
    from conftest import reseal

    root = shutil.copytree(bundles_dir / "ultraface", tmp_path / "b")
    (root / "labels.txt").write_text("background\nfa\x1b[2Jce\x07\n")
    reseal(root)
    for args in (["inspect", "--bundle", str(root)],
                 ["infer", "--bundle", str(root), str(need_shared("images", "astronaut.png"))]):
        proc = subprocess.run([sys.executable, "-m", "lited.cli", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "fa\\x1b[2Jce\\x07" in proc.stdout, (proc.stdout, proc.stderr)
        assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout
