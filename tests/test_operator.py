"""The operator's day (issue 19): commands that fail fast, say what happened,
and behave like the tools people know. One test (or a few) per point of the
issue, named test_pNN_..., each run as a user would: real processes, a real
daemon, real sockets. Point 9 (the installer) is in test_install_sdk.py,
point 11 (the unit's board profiles) in test_systemd.py, the README's quick
tour and snippet in test_readme.py.
"""
from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from conftest import DEMO_BUNDLE, ROOT, need_shared
from daemon_process import DaemonProcess
from test_daemon import wait_until
from lited.client import Client, ClientError, DaemonUnreachable, Subscriber
from lited.progress import Progress


def lited(*args: str, timeout: float = 120, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lited.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


YAML_CONFIG = """\
# a config with comments (YAML): what `lited serve` reads, and `lited ctl --config` too
runtime_dir: {run}            # the sockets go here
models:
  face: {face}
streams:
  - name: cam0
    source: synth://?size=320x240&fps=10   # a test pattern
"""


def all_streaming(client: Client, count: int) -> bool:
    streams = client.status()["streams"]
    return len(streams) == count and all(s["state"] == "streaming" for s in streams)


class YamlDaemon(DaemonProcess):
    """`lited serve` on YAML_CONFIG (comments and all) instead of a JSON config."""

    def __init__(self, tmp: Path, face: Path) -> None:
        super().__init__(tmp, {})
        self.config_path = self.tmp / "lited.conf"
        self.face = face

    def write_config(self, config: dict | None = None) -> None:
        self.config_path.write_text(YAML_CONFIG.format(run=self.run_dir, face=self.face))


@pytest.fixture(scope="module")
def served(tmp_path_factory, bundles_dir):
    """A daemon started from a commented YAML config, one stream; read-only tests share it."""
    d = YamlDaemon(tmp_path_factory.mktemp("served"), bundles_dir / "ultraface")
    d.start()
    with Client(d.req, timeout=30) as client:
        wait_until(lambda: all_streaming(client, 1))
    yield d
    assert d.stop() == 0, d.output()


# -- 1: a command with no daemon to talk to fails at once ----------------------------

def test_p01_ctl_without_a_daemon_fails_at_once(tmp_path):
    missing = tmp_path / "none.sock"
    started = time.monotonic()
    proc = lited("ctl", "ping", "--endpoint", f"ipc://{missing}", timeout=60)
    assert proc.returncode == 3 and proc.stdout == ""
    assert one_line(proc).startswith(f"lited: ping: no socket {missing}: is lited serve running?")
    # a socket file left by a daemon that is gone: nothing listens on it
    dead = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(dead))
    sock.close()
    proc = lited("ctl", "status", "--endpoint", f"ipc://{dead}", timeout=60)
    assert proc.returncode == 3 and f"nothing listens on {dead}" in one_line(proc)
    assert time.monotonic() - started < 30  # two process starts, no 120 s wait
    with Client(f"ipc://{missing}") as client:  # the library says so too
        t0 = time.monotonic()
        with pytest.raises(DaemonUnreachable, match="no socket"):
            client.ping()
        assert time.monotonic() - t0 < 1


# -- 2: ctl finds the daemon from the config serve runs with ------------------------------

def test_p02_ctl_config_finds_the_daemon_serve_runs_with(served):
    proc = lited("ctl", "--config", served.config_path, "ping")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"lited 0.1.0 (protocol 1) answers at {served.req} in ")
    # endpoints set in the config (not the runtime_dir default) are found the same way
    other = served.config_path.with_name("endpoints.conf")
    other.write_text(f"models: {{}}\nendpoints:\n  req: [tcp://127.0.0.1:1, {served.req}]\n")
    proc = lited("ctl", "--config", other, "ping", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["pong"] is True, proc.stderr


# -- 3: a foreground run whose source never opens exits 2 ---------------------------------

def test_p03_run_with_a_source_that_never_opens_exits_2(bundles_dir, tmp_path):
    face = bundles_dir / "ultraface"
    runs = {  # the issue's own commands, and one without --duration (it used to never stop)
        "file": ["--source", "file:///missing.mp4", "--frames", "1", "--duration", "4"],
        "no duration": ["--source", f"file://{tmp_path}/missing.mp4", "--open-timeout", "3"],
        "v4l2": ["--source", "v4l2:///dev/video0", "--frames", "1", "--duration", "4"],
    }
    if Path("/dev/video0").exists():
        runs.pop("v4l2")
    procs = {name: subprocess.Popen([sys.executable, "-m", "lited.cli", "run", "--bundle", str(face), *args],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    lines = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=90)
        finally:
            proc.kill()
        assert proc.returncode == 2 and out == "", (name, err)
        lines[name] = one_line(subprocess.CompletedProcess([], 2, out, err))
    assert lines["file"] == "lited: source 'file:///missing.mp4': no such file /missing.mp4 (not open after 4 s)"
    assert lines["no duration"].endswith("(not open after 3 s)")
    if "v4l2" in lines:
        assert lines["v4l2"].startswith("lited: source 'v4l2:///dev/video0': ") and "(not open after 4 s)" in \
            lines["v4l2"]


# -- 4: ctl reload is SIGHUP, and a task change is refused unless forced ------------------

def test_p04_ctl_reload_rereads_the_config_and_refuses_another_task(tmp_path, bundles_dir):
    face, cls = bundles_dir / "ultraface", bundles_dir / "mobilenetv2"
    streams = [{"name": n, "source": "synth://?size=320x240&fps=5"} for n in ("a", "b")]
    with DaemonProcess(tmp_path, {"models": {"face": str(face)}, "streams": streams}) as d:
        conf = ["--config", d.config_path]
        with d.client(timeout=30) as client:
            wait_until(lambda: all_streaming(client, 2))
            d.config["streams"] = streams[:1]  # stream b removed from the config: a reload stops it
            d.write_config()
            proc = lited("ctl", *conf, "reload")
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.startswith("reloaded face in ") and proc.stdout.rstrip().endswith("; stopped b")
            assert [s["stream"] for s in client.status()["streams"]] == ["a"]

            proc = lited("ctl", *conf, "reload", "--model", "face", "--bundle", cls)
            assert proc.returncode == 1 and proc.stdout == ""
            line = one_line(proc)
            assert "model face: mobilenetv2 1.0.0 would replace ultraface 1.0.0 with another task " \
                   "face_detection -> classification" in line and "--force" in line, line
            status = client.status()
            assert status["models"]["face"]["name"] == "ultraface" and status["last_reload"]["ok"] is False
            assert status["streams"][0]["state"] == "streaming"

            proc = lited("ctl", *conf, "reload", "--model", "face", "--bundle", cls, "--force", "--json")
            assert proc.returncode == 0 and json.loads(proc.stdout)["reloaded"] == ["face"], proc.stderr
            assert client.status()["models"]["face"]["name"] == "mobilenetv2"

            # a typo in the config the daemon runs from: ctl still reaches it (it exited 2 at the typo) and
            # a reload fails as a reload (exit 1, the daemon's words), the old config serving on
            text = d.config_path.read_text()
            d.config_path.write_text(text[:-3])
            proc = lited("ctl", *conf, "status")
            assert proc.returncode == 0, proc.stderr
            assert proc.stderr.startswith(f"lited: warning: config {d.config_path}: ") and proc.stderr.rstrip() \
                .endswith(f"; asking the daemon at ipc://{d.run_dir}/req.sock"), proc.stderr
            proc = lited("ctl", *conf, "reload")
            assert proc.returncode == 1 and "not valid YAML" in proc.stderr.splitlines()[-1], proc.stderr
            assert client.status()["streams"][0]["state"] == "streaming"
            d.config_path.write_text(text)
    assert "reloaded face mobilenetv2 1.0.0 (was ultraface 1.0.0)" in d.output()


# -- 5: a subscriber asking for what is not there is told so --------------------------------

def test_p05_subscriber_fails_fast_on_a_wrong_endpoint_or_stream(served, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DaemonUnreachable, match="no socket"):
        Subscriber(f"ipc://{tmp_path}/pub.sock", streams=["cam0"])
    with pytest.raises(ClientError, match=r"no stream 'cam9' in the daemon at .* \(it has cam0\)") as info:
        Subscriber(served.pub, streams=["cam9"])
    assert info.value.code == "not_found" and time.monotonic() - t0 < 10
    with Subscriber(config=served.config_path, streams=["cam0"]) as sub:  # found from the config, like ctl
        assert wait_until(lambda: (lambda m: m if m and m["type"] == "result" else None)(sub.recv(1)))
    Subscriber(served.pub, streams=["cam9"], check=False).close()  # an app that waits for a later stream


# -- 6: infer keeps every good result; native libraries keep quiet --------------------------

def test_p06_infer_prints_every_good_result_and_one_line_per_bad_input(bundles_dir, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(images / f"{name}.jpg"), cv2.imread(str(need_shared("images", f"{name}.png"))))
    (images / "notes.txt").write_text("not an image: skipped, like any non-image file in a folder")
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    chelsea = need_shared("images", "chelsea.png")  # has an sRGB profile libpng warns about
    proc = lited("infer", "--bundle", bundles_dir / "ultraface", "--json", chelsea, bad, tmp_path / "missing.jpg",
                 images)
    assert proc.returncode == 2
    results = [json.loads(line)["image"] for line in proc.stdout.splitlines()]
    assert results == [str(chelsea), str(images / "astronaut.jpg"), str(images / "coffee.jpg")]
    assert proc.stderr.splitlines() == [f"lited: {bad}: not a readable image",
                                        f"lited: {tmp_path / 'missing.jpg'}: no such file"]
    # the native lines come back with --debug, after the command as before it
    proc = lited("infer", "--bundle", bundles_dir / "ultraface", chelsea, "--debug")
    assert proc.returncode == 0 and "libpng warning: iCCP" in proc.stderr


def test_p06_network_source_errors_are_one_line_without_ffmpeg_noise(bundles_dir, tmp_path):
    with socket.socket() as s:  # a port nothing listens on: refused before FFmpeg is asked (sources/probe.py)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"rtsp://127.0.0.1:{port}/cam"
    proc = lited("run", "--bundle", bundles_dir / "ultraface", "--source", uri, "--open-timeout", "3")
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"lited: source '{uri}': connection refused by 127.0.0.1:{port}")
    # a server that answers, with something FFmpeg cannot read: FFmpeg's own lines only with --debug
    import functools
    import http.server
    import threading
    (tmp_path / "cam.mp4").write_text("not a video")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/cam.mp4"
        proc = lited("run", "--bundle", bundles_dir / "ultraface", "--source", uri, "--open-timeout", "3")
        assert proc.returncode == 2
        assert one_line(proc).startswith(f"lited: source '{uri}': ")
        proc = lited("--debug", "run", "--bundle", bundles_dir / "ultraface", "--source", uri, "--open-timeout", "2")
        assert "[" in proc.stderr.split("Traceback")[0] or "WARN" in proc.stderr, proc.stderr  # what was silenced
    finally:
        server.shutdown()


# -- 7: every shipped bundle has a golden image and passes its self-test --------------------

def test_p07_every_shipped_bundle_passes_selftest(bundles_dir):
    shipped = [DEMO_BUNDLE] + sorted(p for p in bundles_dir.iterdir() if p.is_dir())
    assert len(shipped) == 1 + len(list((ROOT / "tests" / "bundles").glob("*.json")))
    procs = [(b, subprocess.Popen([sys.executable, "-m", "lited.cli", "selftest", "--bundle", str(b)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for b in shipped]
    for bundle, proc in procs:
        out, err = proc.communicate(timeout=180)
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert proc.returncode == 0, (bundle, err)
        assert out.splitlines()[-1].startswith(f"selftest {manifest['name']} {manifest['version']}: ok on "), out
        assert (bundle / manifest["golden"]["image"]).is_file()


# -- 8: a folder of images ends like a file ---------------------------------------------------

def test_p08_images_folder_without_loop_ends_cleanly(bundles_dir, tmp_path):
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        image = cv2.resize(cv2.imread(str(need_shared("images", f"{name}.png"))), (320, 240))
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), image)
    for query in ("fps=5", ""):  # paced (a live source: latest frame wins) and as fast as inferred (lossless)
        proc = lited("run", "--bundle", bundles_dir / "ultraface", "--source", f"images://{tmp_path}?{query}",
                     "--json", "-v", timeout=90)
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 3 if not query else 1 <= len(proc.stdout.splitlines()) <= 3, \
            (query, proc.stdout)
        states = [line.split(": ")[2] for line in proc.stderr.splitlines() if line.startswith("lited: stream")]
        assert "backoff" not in states and states[-2:] == ["ended", "stopped"], (query, proc.stderr)


# -- 10: the habits of the tools people know ------------------------------------------------

def test_p10_version_and_debug_after_the_command():
    proc = lited("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("lited 0.1.0 (Python 3.")
    proc = lited("inspect", "--bundle", "/nonexistent", "--debug")
    assert "Traceback" in proc.stderr and "BundleError: bundle /nonexistent: not a directory" in proc.stderr
    # the same exit code as without it (it was 1, Python's for an uncaught exception: selftest's "disagrees")
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == "lited: bundle /nonexistent: not a directory"


def test_p10_ctl_answers_in_tables_json_for_scripts_and_snapshots_to_a_file(served, tmp_path):
    proc = lited("ctl", "--config", served.config_path, "status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"lited 0.1.0 (protocol 1) at {served.req}: up ") and len(lines) < 15
    header = next(i for i, line in enumerate(lines) if line.startswith("STREAM"))
    assert lines[header].split() == ["STREAM", "STATE", "FPS", "INFERRED", "SKIPPED", "ERRORS", "INFER", "p50",
                                     "MODEL", "ENGINE", "SOURCE"]
    assert lines[header + 1].split()[:2] == ["cam0", "streaming"]
    assert "paddle_lite (cpu, 1 thread)" in lines[header + 1], lines[header + 1]
    status = json.loads(lited("ctl", "--config", served.config_path, "status", "--json").stdout)
    assert status["streams"][0]["stream"] == "cam0" and status["ready"] is True

    proc = lited("ctl", "--config", served.config_path, "snapshot", cwd=tmp_path)  # the only stream, to cam0.jpg
    assert proc.returncode == 0 and proc.stdout.startswith("cam0 frame ") and "-> cam0.jpg" in proc.stdout
    assert cv2.imread(str(tmp_path / "cam0.jpg")).shape == (240, 320, 3)
    raw = subprocess.run([sys.executable, "-m", "lited.cli", "ctl", "--config", str(served.config_path), "snapshot",
                          "-o", "-"], capture_output=True, timeout=60)
    assert raw.returncode == 0 and raw.stdout[:2] == b"\xff\xd8" and b"-> -" in raw.stderr


def test_p10_config_check_like_nginx_t_and_a_schema_for_editors(tmp_path, bundles_dir):
    good = tmp_path / "good.conf"
    good.write_text(YAML_CONFIG.format(run=tmp_path / "run", face=bundles_dir / "ultraface"))
    proc = lited("config", "check", "--config", good)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:3] == [
        f"config {good}: ok", f"  model  face: ultraface 1.0.0 (face_detection) from {bundles_dir / 'ultraface'}",
        "  stream cam0: synth://?size=320x240&fps=10 -> face"]
    legacy = tmp_path / "legacy.conf"  # an /etc/lited/lited.conf from before: JSON, still read
    legacy.write_text(json.dumps({"models": {"face": str(bundles_dir / "ultraface")}, "streams": []}, indent=2))
    assert lited("config", "check", "--config", legacy).returncode == 0
    secret = tmp_path / "secret.conf"  # a camera's password is masked here as in status and logs (an audit saw it)
    secret.write_text(json.dumps({"models": {"face": str(bundles_dir / "ultraface")}, "streams": [
        {"name": "cam0", "source": "rtsp://admin:hunter2@127.0.0.1:8554/x?token=SECRET123"}],
        "http": {"listen": ["127.0.0.1:0", "[::1]:24401"]}}))
    proc = lited("config", "check", "--config", secret)
    assert proc.returncode == 0 and "hunter2" not in proc.stdout and "SECRET123" not in proc.stdout, proc.stdout
    assert "  stream cam0: rtsp://admin:***@127.0.0.1:8554/x?token=*** -> face" in proc.stdout.splitlines()
    assert proc.stdout.splitlines()[-1] == "  http: 127.0.0.1:0 [::1]:24401"  # what it listens on, said too

    bad = tmp_path / "bad.conf"
    bad.write_text("models:\n  face: /nonexistent   # gone\n  face: /twice\nstreams:\n  - {name: cam0, slots: 0}\n")
    proc = lited("config", "check", "--config", bad)
    assert proc.returncode == 2 and one_line(proc) == f"lited: config {bad}: line 3, column 3: 'face' is given twice"
    legacy.write_text('{"models": {"face": "/nonexistent"},\n "models": {"face": "/twice"}}')  # JSON took the last
    proc = lited("config", "check", "--config", legacy)
    assert proc.returncode == 2 and one_line(proc) == f"lited: config {legacy}: line 2, column 2: 'models' is given twice"
    bad.write_text("models:\n  face: /nonexistent\nstreams:\n  - {name: cam0, slots: -1, source: 'synth://'}\n")
    proc = lited("config", "check", "--config", bad)
    assert proc.returncode == 2 and one_line(proc) == \
        f"lited: config {bad}: streams[0].slots: expected an integer from 0 to 64, got -1"
    bad.write_text("models:\n  face: /nonexistent\n")
    proc = lited("config", "check", "--config", bad)
    assert proc.returncode == 2 and one_line(proc).startswith(f"lited: config {bad}: models.face: ")

    schema = json.loads(lited("config", "schema").stdout)
    stream = schema["$defs"]["StreamSection"]["properties"]
    assert stream["slots"] == {"description": "the apps' margin in the frame ring, in camera frames, beyond what "
                                              "the daemon holds", "type": "integer", "minimum": 0, "maximum": 64,
                               "default": 2}
    assert stream["policy"]["anyOf"][1] == {"type": "null"} and stream["keep_results"]["maximum"] == 16
    model = schema["$defs"]["ConfigFile"]["properties"]["models"]["additionalProperties"]["anyOf"]
    assert model[1] == {"$ref": "#/$defs/ModelSection"} and schema["$defs"]["ModelSection"]["required"] == ["bundle"]
    assert schema["$defs"]["ConfigFile"]["required"] == ["models"]
    assert (ROOT / "docs" / "config.schema.json").read_text() == json.dumps(schema, indent=2) + "\n", \
        "docs/config.schema.json is stale: lited config schema > docs/config.schema.json"


def test_p10_keygen_makes_the_curve_keys_tcp_needs(tmp_path):
    keys, clients = tmp_path / "keys", tmp_path / "keys" / "clients"
    proc = lited("keygen", "server", "--dir", keys)
    assert proc.returncode == 0 and proc.stdout.startswith(f"wrote {keys}/server.key (public")
    assert oct((keys / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    assert lited("keygen", "server", "--dir", keys).returncode == 2  # never overwrites a key
    assert lited("keygen", "app", "--dir", tmp_path / "app").returncode == 0
    clients.mkdir()
    (clients / "app.key").write_bytes((tmp_path / "app" / "app.key").read_bytes())
    port, pub_port = free_port(), free_port()
    config = {"models": {}, "runtime_dir": str(tmp_path / "run"),
              "endpoints": {"req": [f"tcp://127.0.0.1:{port}"], "pub": [f"tcp://127.0.0.1:{pub_port}"]},
              "curve": {"server_secret": str(keys / "server.key_secret"), "clients_dir": str(clients)}}
    (tmp_path / "d").mkdir()
    conf = tmp_path / "d" / "lited.json"
    conf.write_text(json.dumps(config))
    assert lited("config", "check", "--config", conf).returncode == 0
    # what serve refused to start with, config check said ok to: one check now, naming the field
    (clients / "notes.key").write_text("garbage")
    (keys / "server.key_secret").chmod(0o644)
    for command in (("config", "check"), ("serve",)):
        proc = lited(*command, "--config", conf)
        assert proc.returncode == 2, proc.stderr
        assert "curve.server_secret: " in proc.stderr and "mode 0644, readable or writable by others" in proc.stderr
        assert "curve.clients_dir: notes.key: " in proc.stderr and "(a client's NAME.key from lited keygen)" in proc.stderr, proc.stderr
    (clients / "notes.key").unlink()
    (keys / "server.key_secret").chmod(0o600)
    missing = dict(config, curve={**config["curve"], "server_secret": str(keys / "nokey")})
    (tmp_path / "d" / "missing.json").write_text(json.dumps(missing))
    proc = lited("config", "check", "--config", tmp_path / "d" / "missing.json")  # pyzmq said "Invalid certificate file"
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        f"curve.server_secret: {keys / 'nokey'}: missing (a key file of lited keygen)"), proc.stderr
    d = subprocess.Popen([sys.executable, "-m", "lited.cli", "serve", "--config", str(conf)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        curve = {"server_public": str(keys / "server.key"), "client_secret": str(tmp_path / "app" / "app.key_secret")}
        with Client(f"tcp://127.0.0.1:{port}", timeout=1, curve=curve) as client:
            assert wait_until(lambda: _answers(client))["pong"] is True
        # a refused handshake is said at once (it was a timeout after the whole wait, for any of these)
        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as stranger, pytest.raises(ClientError) as info:
            stranger.ping()  # no key: CURVE lets nobody else in
        assert info.value.code == "refused" and "needs curve=" in info.value.message, info.value
        wrong_server = {**curve, "server_public": str(tmp_path / "app" / "app.key")}
        with Client(f"tcp://127.0.0.1:{port}", timeout=30, curve=wrong_server) as lost, \
                pytest.raises(ClientError, match="is curve\\['server_public'\\] the daemon's public key"):
            lost.ping()
        # a reload reads the client keys again: one added gets in, one removed is refused (it kept access
        # until a restart)
        assert lited("keygen", "app2", "--dir", tmp_path / "app2").returncode == 0
        (clients / "app2.key").write_bytes((tmp_path / "app2" / "app2.key").read_bytes())
        with Client(f"tcp://127.0.0.1:{port}", timeout=30, curve=curve) as client:
            client.reload()
        curve2 = {**curve, "client_secret": str(tmp_path / "app2" / "app2.key_secret")}
        with Client(f"tcp://127.0.0.1:{port}", timeout=5, curve=curve2) as client:
            assert client.ping()["pong"] is True
            (clients / "app.key").unlink()
            client.reload()
        with Client(f"tcp://127.0.0.1:{port}", timeout=30, curve=curve) as removed, pytest.raises(ClientError) as info:
            removed.ping()
        assert info.value.code == "refused" and "CURVE public key is not in its clients_dir" in info.value.message
        with Subscriber(f"tcp://127.0.0.1:{pub_port}", curve=curve, check=False) as removed, \
                pytest.raises(ClientError, match="refused: .*clients_dir"):
            removed.recv(timeout=30)  # it heard silence for ever
    finally:
        d.terminate()
        assert d.wait(20) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(client: Client):
    try:
        return client.ping()
    except TimeoutError:
        return None


def test_p10_serve_says_what_warms_up_and_a_terminal_sees_progress(served):
    log = served.output()
    assert "stream cam0 (1/1): warming up face (ultraface 1.0.0)" in log and "stream cam0: model ready in" in log
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        with Progress("loading something", stream=terminal):
            time.sleep(1.6)
    shown = b""
    while True:  # all the terminal got, up to the closed end (EIO)
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    shown = shown.decode()
    os.close(master)
    assert re.search(r"\rlited: loading something \.\.\. \d s", shown), shown
    assert "\rlited: loading something: done in 1." in shown, shown
    with Progress("nothing to see", stream=open(os.devnull, "w")) as quiet:  # not a terminal: not a word
        assert not quiet.enabled
