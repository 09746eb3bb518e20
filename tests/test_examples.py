"""The SDK examples (sdk_template/examples) against real sockets.

The C subscriber is built with its own Makefile; it and the Python subscriber
listen to a publisher in the test that sends messages encoded by hand from
docs/protocol.md (the daemon's own encoder is not used: the point is that the
document alone is enough), valid ones interleaved with malformed ones. Both
must print exactly the expected lines and live through the bad messages.
c_request talks to a ROUTER in the test that answers per the document.
subscriber.py, the client library's example, is run where there is no daemon
and against a real one without the stream it asks for.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from test_daemon import daemon  # noqa: F401 - fixture: a real `lited serve`, for subscriber.py
from test_reliability_security import probe_python
from lited.client import ClientError, ConfigError, Subscriber

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "sdk_template" / "examples"
APT = "pkg-config libzmq3-dev libmsgpack-dev"
TIMEOUT = 20  # seconds; a run takes well under one


def _skip_or_fail(msg: str) -> None:
    """Missing build packages: a skip for a user without root, a failure in CI or as root."""
    if os.environ.get("CI") == "true" or os.geteuid() == 0:
        pytest.fail(msg)
    pytest.skip(msg)


def _build_missing() -> str | None:
    for tool in ("make", "cc", "pkg-config"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install make gcc {APT})"
    def have(pkg: str) -> bool:
        return subprocess.run(["pkg-config", "--exists", pkg]).returncode == 0

    if not have("libzmq") or not (have("msgpack-c") or have("msgpack")):
        return f"libzmq or msgpack-c development files are missing (apt-get install {APT})"
    return None


@pytest.fixture(scope="module")
def c_examples(tmp_path_factory) -> Path:
    """The C examples, built by their Makefile (with -Werror) into a temporary directory."""
    reason = _build_missing()
    if reason:
        _skip_or_fail(reason)
    out = tmp_path_factory.mktemp("examples")
    build = subprocess.run(["make", "-C", str(EXAMPLES), f"OUT={out}"],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    return out


@pytest.fixture(params=["c", "python"])
def subscriber(request) -> list[str]:
    if request.param == "c":
        return [str(request.getfixturevalue("c_examples") / "c_subscriber")]
    return [sys.executable, str(EXAMPLES / "python_subscriber.py")]


def pack(payload) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def result(stream: str, seq, **fields) -> list[bytes]:
    payload = {"v": 1, "type": "result", "stream": stream, "seq": seq, "frame_ts": 1795881322.4553,
               "skipped": 0, "model": "fastestdet", "model_key": "det", "model_version": "1.0.0",
               "task": "detection", "detections": [], "classes": [],
               "timings_ms": {"capture": 4.1, "wait": 0.2, "preprocess": 0.6, "queue": 0.1, "infer": 11.0,
                              "postprocess": 0.3, "total": 12.3},
               "frame": {"ring": f"lited-1a2b3c4d-812-{stream}", "generation": 81200355061412, "slot": 2,
                         "slot_seq": 5608, "width": 640, "height": 480}}
    payload.update(fields)
    return [f"result/{stream}".encode(), pack(payload)]


def event(stream: str, kind: str, **fields) -> list[bytes]:
    payload = {"v": 1, "type": "event", "stream": stream, "event": kind, "ts": 1795881322.1}
    payload.update(fields)
    return [f"event/{stream}".encode(), pack(payload)]


def without(frames: list[bytes], key: str) -> list[bytes]:
    payload = msgpack.unpackb(frames[1])
    del payload[key]
    return [frames[0], pack(payload)]


CAT = {"label": "cat", "score": 0.8234, "box": [10.46, 20.25, 110.0, 220.77],
       "polygon": [[10.46, 20.25], [110.0, 20.25], [110.0, 220.77], [10.46, 220.77]]}
DOG = {"label": "dog", "score": 0.5071, "box": [0, 0, 64, 48]}  # ints are numbers too

# (message frames, the line it prints or None, the stderr line or None), in sending order.
SCRIPT = [
    (event("cam0", "state", state="connecting", detail="rtsp://cam/stream"),
     "event cam0 state connecting rtsp://cam/stream", None),
    (result("cam0", 1234, detections=[CAT, DOG]),
     "cam0 1234 fastestdet 2 detections: cat 0.82 10.5,20.2,110.0,220.8; "
     "dog 0.51 0.0,0.0,64.0,48.0", None),
    (result("cam0", 1240, detections=[{**CAT, "text": "Paddle\tLite", "text_score": 0.97}]),  # a cascade read it
     'cam0 1240 fastestdet 1 detections: cat 0.82 10.5,20.2,110.0,220.8 "Paddle?Lite"', None),
    (result("cam0", 1241, detections=[{**CAT, "text": 7}]), None, "bad detections"),
    (result("cam0", 1242, detections=[{**CAT, "text": 'say "hi"; a\\b'}]),  # quotes and ";" stay one field
     'cam0 1242 fastestdet 1 detections: cat 0.82 10.5,20.2,110.0,220.8 "say \\"hi\\"; a\\\\b"', None),
    (result("cam1", 7, model="mobilenet", task="classification",
            classes=[{"label": "tabby", "score": 0.71}, {"label": "tiger", "score": 0.2}]),
     "cam1 7 mobilenet 0 detections | 2 classes: tabby 0.71; tiger 0.20", None),
    ([b"result/cam0", b"not msgpack"], None, "not msgpack"),  # a fixint, then trailing bytes
    ([b"result/cam0", b"\xc1"], None, "not msgpack"),  # a byte msgpack never uses
    ([b"result/cam0", b""], None, "not msgpack"),
    ([b"result/cam0", b"\xdd\xff\xff\xff\xff"], None, "not msgpack"),  # claims 4G elements
    ([b"result/cam0", pack([1, 2, 3])], None, "not a map"),
    (result("cam0", 1235, v=2), None, "v is not 1"),
    (result("cam0", 1235, v=True), None, "v is not 1"),
    (without(result("cam0", 1235), "v"), None, "v is not 1"),
    (result("cam0", 1235, type=1), None, "bad type"),
    (without(result("cam0", 1235), "stream"), None, "bad stream"),
    (without(result("cam0", 1235), "seq"), None, "bad seq"),
    (result("cam0", "1235"), None, "bad seq"),
    (without(result("cam0", 1235), "model"), None, "bad model"),
    (result("cam0", 1235, detections=[{"label": "cat", "score": 0.5, "box": [1, 2, 3]}]),
     None, "bad detections"),
    (result("cam0", 1235, detections=[CAT, {"label": "cat", "score": True, "box": [1, 2, 3, 4]}]),
     None, "bad detections"),
    (result("cam0", 1235, detections={"label": "cat"}), None, "bad detections"),
    (result("cam0", 1235, classes=[{"label": "tabby"}]), None, "bad classes"),
    (without(event("cam0", "state", state="stalled"), "event"), None, "bad event"),
    (event("cam0", "state", state=3), None, "bad state"),
    (event("_daemon", "reload", ok="yes"), None, "bad ok"),
    ([b"result/cam0"], None, "expected 2 frames, got 1"),
    (result("cam0", 1235) + [b"extra"], None, "expected 2 frames, got 3"),
    ([b"metrics/cam0", pack({"v": 1, "type": "metrics", "fps": 25.0})], None, None),  # later versions
    (result("cam01", 2**40, detections=[{"label": "café", "score": 0.9, "box": [1, 2, 3, 4]},
                                        {"label": "a\nb\x00c", "score": 0.1, "box": [-1.5, 0, 5, 6]}],
            future_key={"nested": [1, 2]}, ignored=b"\x00\x01"),
     "cam01 1099511627776 fastestdet 2 detections: café 0.90 1.0,2.0,3.0,4.0; "
     "a?b?c 0.10 -1.5,0.0,5.0,6.0", None),
    ([b"result/cam0", pack({1: "a key that is not a string", **msgpack.unpackb(result("cam0", 1236)[1])})],
     "cam0 1236 fastestdet 0 detections", None),
    (without(without(result("cam0", 1237), "detections"), "classes"),
     "cam0 1237 fastestdet 0 detections", None),
    (result("cam0", 1238, classes=None, detections=[DOG], model_version=None),  # nil is absent
     "cam0 1238 fastestdet 1 detections: dog 0.51 0.0,0.0,64.0,48.0", None),
    (event("cam0", "state", state="stalled", detail=None), "event cam0 state stalled -", None),
    # The daemon's own streaming event carries an empty detail: it prints as "-" too.
    (event("cam0", "state", state="streaming", detail=""), "event cam0 state streaming -", None),
    (event("cam0", "state", state=None, detail="why"), "event cam0 state - why", None),
    (result("cam0", None), None, "bad seq"),
    (event("_daemon", "ready"), "event _daemon ready - -", None),
    (event("cam0", "resized"), "event cam0 resized - -", None),
    (event("_daemon", "reload", ok=False, detail="fastestdet: no model.nb in the bundle"),
     "event _daemon reload failed fastestdet: no model.nb in the bundle", None),
    (event("_daemon", "stopping"), "event _daemon stopping - -", None),
    # A number may come as a float: a frame number of 1239.0 is 1239, of 1239.5 no frame number.
    (result("cam0", 1239.0, detections=[DOG]), "cam0 1239 fastestdet 1 detections: dog 0.51 0.0,0.0,64.0,48.0", None),
    (result("cam0", 1239.5), None, "bad seq"),
    # Event kinds and states a later version adds are ignored, not printed.
    (event("cam0", "newkind"), None, None),
    (event("cam0", "state", state="dreaming", detail="a later state"), None, None),
]


class Publisher:
    """An XPUB on an ipc endpoint: like the daemon's PUB, but it also hands us
    each subscription, so we know when a subscriber is attached: messages sent
    after that reach it (no slow-joiner race, no sleeps). Like any PUB it drops
    what is over the high-water mark (1000 messages): the script is far below."""

    def __init__(self, path: Path) -> None:
        self.endpoint = f"ipc://{path}"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.linger = 0
        self.sock.bind(self.endpoint)

    def wait_subscription(self, proc: subprocess.Popen) -> bytes:
        if not self.sock.poll(TIMEOUT * 1000):
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no subscription within {TIMEOUT} s; stdout {out!r} stderr {err!r}")
        return self.sock.recv()

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def publisher(tmp_path):
    pub = Publisher(tmp_path / "pub.sock")
    yield pub
    pub.close()


def test_subscriber_prints_results_and_events_and_skips_malformed(subscriber, publisher):
    proc = subprocess.Popen(subscriber + [publisher.endpoint, "", str(len(SCRIPT))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert publisher.wait_subscription(proc) == b"\x01"  # subscribe to everything
        for frames, _, _ in SCRIPT:
            publisher.sock.send_multipart(frames)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    # Exits 0 after COUNT messages, so it lived through every malformed one.
    assert proc.returncode == 0, err.decode()
    assert out.decode("utf-8").splitlines() == [line for _, line, _ in SCRIPT if line]
    assert err.decode().splitlines() == [f"skipped malformed message: {why}"
                                         for _, _, why in SCRIPT if why]


def test_subscriber_subscribes_to_results_by_default(subscriber, publisher):
    proc = subprocess.Popen(subscriber + [publisher.endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert publisher.wait_subscription(proc) == b"\x01result/"
        publisher.sock.send_multipart(result("cam0", 5, detections=[DOG]))
        # No COUNT: it runs until stopped, printing each line as it comes (line-buffered).
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, "no line within the timeout"
        assert proc.stdout.readline() == b"cam0 5 fastestdet 1 detections: dog 0.51 0.0,0.0,64.0,48.0\n"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


PING = {"pong": True, "version": "0.1.0", "protocol": 1}


@pytest.mark.parametrize("method, reply, rc, out, err", [
    ("ping", {"v": 1, "id": 1, "ok": True, "result": PING}, 0, "pong 0.1.0 protocol 1\n", ""),
    # "accept a msgpack int or float wherever a number is expected" (the examples audit)
    ("ping", {"v": 1.0, "id": 1.0, "ok": True, "result": {**PING, "protocol": 1.0}}, 0, "pong 0.1.0 protocol 1\n", ""),
    ("nope", {"v": 1, "id": 1, "ok": False,
              "error": {"code": "unknown_method", "message": "no method 'nope'"}},
     1, "", "error unknown_method: no method 'nope'\n"),
    ("ping", {"v": 1, "id": 2, "ok": True, "result": PING}, 1, "", "c_request: malformed reply\n"),
    ("ping", {"v": 2, "id": 1, "ok": True, "result": PING}, 1, "", "c_request: malformed reply\n"),
    ("ping", [1], 1, "", "c_request: malformed reply\n"),
    ("ping", {"v": 1, "id": 1, "ok": True, "result": "pong"}, 1, "", "c_request: malformed reply\n"),
    ("nope", {"v": 1, "id": 1, "ok": False, "error": {"code": "unknown_method"}},
     1, "", "c_request: malformed reply\n"),
    ("ping", None, 1, "", "c_request: no reply: timed out\n"),
])
def test_c_request(c_examples, tmp_path, method, reply, rc, out, err):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"ipc://{tmp_path}/req.sock"
    router.bind(endpoint)
    proc = subprocess.Popen([str(c_examples / "c_request"), endpoint, method, "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert router.poll(TIMEOUT * 1000), "no request"
        identity, payload = router.recv_multipart()  # a DEALER sends one frame
        assert msgpack.unpackb(payload) == {"v": 1, "id": 1, "method": method, "params": {}}
        if reply is not None:
            router.send_multipart([identity, pack(reply)])
        got_out, got_err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
        router.close()
        ctx.term()
    assert (proc.returncode, got_out, got_err.replace(str(c_examples / "c_request"), "c_request")) \
        == (rc, out, err)


def test_c_request_prints_any_result(c_examples, tmp_path):
    """status has no pretty printer: its result comes out whole."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"ipc://{tmp_path}/req.sock"
    router.bind(endpoint)
    proc = subprocess.Popen([str(c_examples / "c_request"), endpoint, "status"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert router.poll(TIMEOUT * 1000), "no request"
        identity, payload = router.recv_multipart()
        assert msgpack.unpackb(payload)["method"] == "status"
        router.send_multipart([identity, pack({"v": 1, "id": 1, "ok": True, "result": {
            "version": "0.1.0", "uptime_s": 12.5, "streams": [{"stream": "cam0", "state": "streaming"}]}})])
        got_out, got_err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
        router.close()
        ctx.term()
    assert proc.returncode == 0, got_err
    assert got_out.startswith("ok {") and '"uptime_s"' in got_out and '"streaming"' in got_out


@pytest.mark.parametrize("example", ["python_subscriber.py", "subscriber.py"])
def test_a_subscriber_whose_reader_stops_reading_ends_quietly(example, tmp_path):
    """The client audit: `subscriber.py ... | head -3` ended in a BrokenPipeError traceback."""
    publisher = Publisher(tmp_path / "results.sock")
    args = [publisher.endpoint, ""] if example == "python_subscriber.py" else ["--endpoint", publisher.endpoint]
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / example), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        publisher.wait_subscription(proc)
        proc.stdout.close()  # the reader had enough
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            publisher.sock.send_multipart(result("cam0", 1, detections=[DOG]))
            time.sleep(0.02)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        publisher.close()
    assert (proc.returncode, err) == (0, b"")


def run_lited_subscriber(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLES / "subscriber.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT)


def library_message(**where) -> str:
    """What the library says when a Subscriber is made so: subscriber.py must say just that."""
    with pytest.raises((ClientError, ConfigError)) as info:
        Subscriber(**where)
    return str(info.value)


def test_lited_subscriber_without_a_daemon_or_its_config_says_so_in_one_line(tmp_path):
    (tmp_path / "run").mkdir()  # a runtime dir with nothing listening in it
    config = tmp_path / "lited.json"
    config.write_text(json.dumps({"runtime_dir": str(tmp_path / "run")}))
    for path, said in [(config, f"unreachable: no socket {tmp_path}/run/pub.sock"),
                       (tmp_path / "missing.conf", f"config {tmp_path}/missing.conf: missing")]:
        proc = run_lited_subscriber("--config", path, "--count", 1)
        expected = library_message(config=path)
        assert expected.startswith(said)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", expected + "\n")


def test_lited_subscriber_asked_for_an_unknown_stream_says_so_in_one_line(daemon):  # noqa: F811
    proc = run_lited_subscriber("--config", daemon.config_path, "--stream", "cam9", "--count", 1)
    expected = library_message(config=daemon.config_path, streams=["cam9"])
    assert expected.startswith("not_found: no stream 'cam9' in the daemon")
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", expected + "\n")


@pytest.fixture(params=["c_subscriber", "python_subscriber", "c_request"])
def client(request) -> list[str]:
    """Each example client that talks to the daemon directly, as argv."""
    if request.param == "python_subscriber":
        return [sys.executable, str(EXAMPLES / "python_subscriber.py")]
    return [str(request.getfixturevalue("c_examples") / request.param)]


def run_client(argv: list[str], endpoint: str) -> tuple:
    """(exit code, stdout, stderr with the program's name as `PROG`)."""
    proc = subprocess.run(argv + [endpoint], capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout, proc.stderr.replace(argv[-1], "PROG")


def test_a_client_checks_who_serves_the_socket_before_talking(client, tmp_path):
    """protocol.md asks a client to check the listener's user (SO_PEERCRED);
    the examples did not, and talked to whoever listened."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to listen as another user")
    path = tmp_path / "nothing.sock"
    assert run_client(client, f"ipc://{path}") == (
        1, "", f"PROG: nothing listens on {path} (No such file or directory): is lited serve running?\n")
    base = Path(tempfile.mkdtemp(prefix="lited-peer-"))
    base.chmod(0o777)  # nobody makes its socket here
    listener = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", probe_python(),
                                 "-c", "import socket, sys, time; s = socket.socket(socket.AF_UNIX); "
                                 "s.bind(sys.argv[1]); s.listen(); print('ok', flush=True); time.sleep(60)",
                                 str(base / "pub.sock")], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline() == "ok\n"
        assert run_client(client, f"ipc://{base}/pub.sock") == (
            1, "", f"PROG: {base}/pub.sock is served by uid 65534, not by this user, root or lited: refusing to "
                   "talk to it\n")
    finally:
        listener.kill()
        listener.wait()
        shutil.rmtree(base)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_plain_examples_talk_to_a_daemon_over_tcp_with_curve_keys(c_examples, tmp_path, bundles_dir):
    """The keys `lited keygen` writes, named by LITED_SERVER_KEY and LITED_CLIENT_KEY, take the C
    examples and python_subscriber.py to a real daemon's tcp:// endpoints (they spoke ipc:// only); a key missing or
    unreadable is one line naming the variable or the file, before any connection."""
    import zmq.auth

    from daemon_process import DaemonProcess

    keys, clients = tmp_path / "keys", tmp_path / "keys" / "clients"
    clients.mkdir(parents=True)
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    os.chmod(server_secret, 0o600)
    client_public, client_secret = zmq.auth.create_certificates(keys, "app")
    os.rename(client_public, clients / "app.key")
    run = tmp_path / "daemon" / "run"
    req, pub = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    (tmp_path / "daemon").mkdir()
    daemon_ = DaemonProcess(tmp_path / "daemon", {
        "models": {"det": str(bundles_dir / "ultraface")},
        "streams": [{"name": "cam", "source": "synth://?fps=10", "model": "det"}],
        "endpoints": {"req": [f"ipc://{run}/req.sock", req], "pub": [f"ipc://{run}/pub.sock", pub]},
        "curve": {"server_secret": str(server_secret), "clients_dir": str(clients)}})
    keyed = {**os.environ, "LITED_SERVER_KEY": str(server_public), "LITED_CLIENT_KEY": str(client_secret)}
    plain = {k: v for k, v in os.environ.items() if not k.startswith("LITED_")}

    def run_example(name: str, env: dict, *args) -> subprocess.CompletedProcess:
        return subprocess.run([str(c_examples / name), *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=90)

    with daemon_:
        daemon_.wait_ready()
        ping = run_example("c_request", keyed, req, "ping", 10000)
        assert (ping.returncode, ping.stderr) == (0, "") and ping.stdout.startswith("pong "), ping
        for subscriber_ in ([str(c_examples / "c_subscriber")], [sys.executable, str(EXAMPLES / "python_subscriber.py")]):
            got = subprocess.run([*subscriber_, pub, "result/", "2"], env=keyed, capture_output=True, text=True,
                                 timeout=90)
            lines = got.stdout.splitlines()
            assert got.returncode == 0 and len(lines) == 2 and all(line.startswith("cam ") for line in lines), got
        # no keys: the daemon refuses the handshake, and ZeroMQ tells the client nothing
        refused = run_example("c_request", plain, req, "ping", 1000)
        assert (refused.returncode, refused.stderr.split(": ", 1)[1]) == (1, "no reply: timed out\n"), refused
    for env, said in [({**plain, "LITED_SERVER_KEY": str(server_public)},
                       "CURVE needs both LITED_SERVER_KEY (the daemon's NAME.key) and LITED_CLIENT_KEY "
                       "(this app's APP.key_secret); only LITED_SERVER_KEY is set"),
                      ({**keyed, "LITED_CLIENT_KEY": str(server_public)},
                       f"{server_public}: no secret-key of 40 characters in quotes (not a key file of lited keygen?)"),
                      ({**keyed, "LITED_SERVER_KEY": str(tmp_path / "nope.key")},
                       f"{tmp_path / 'nope.key'}: No such file or directory")]:
        for argv, endpoint in (([str(c_examples / "c_request")], req), ([str(c_examples / "c_subscriber")], pub),
                               ([sys.executable, str(EXAMPLES / "python_subscriber.py")], pub)):
            out = subprocess.run([*argv, endpoint], env=env, capture_output=True, text=True, timeout=90)
            assert (out.returncode, out.stdout, out.stderr) == (1, "", f"{argv[-1]}: {said}\n"), out
