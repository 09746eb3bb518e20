"""`lited serve` as a real process: subscribers in other processes, requests
over ipc, reloads, and hostile clients."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from conftest import ROOT, need_shared, write_video
from daemon_process import DaemonProcess
from soak import tree
from lited.bundle import load_bundle
from lited.client import ClientError, Subscriber
from lited.model import Model


@pytest.fixture
def daemon(tmp_path, bundles_dir):
    d = DaemonProcess(tmp_path, {"models": {"det": str(bundles_dir / "fastestdet"),
                                            "face": str(bundles_dir / "ultraface")}, "streams": []})
    d.start()
    yield d
    assert d.stop() == 0, d.output()
    assert not any(name.startswith("lited-") and f"-{d.proc.pid}-" in name for name in os.listdir("/dev/shm"))


def add_stream(d: DaemonProcess, name: str, source: str, model: str = "det", slots: int = 4) -> None:
    """Add a stream with SIGHUP (config reload), as an operator would."""
    d.config["streams"] = [*d.config["streams"], {"name": name, "source": source, "model": model,
                                                   "slots": slots}]
    d.write_config()
    d.signal(signal.SIGHUP)


def wait_until(predicate, timeout: float = 30, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s")


def test_sockets_are_group_only(daemon):
    for sock in ("pub.sock", "req.sock"):
        assert stat.S_IMODE(os.stat(daemon.run_dir / sock).st_mode) == 0o660


def test_several_subscriber_processes_get_every_result_in_order_with_their_frames(daemon, tmp_path):
    frames = write_video(tmp_path / "v.avi")
    procs, outs = [], []
    for i in range(3):
        out, ready = tmp_path / f"sub{i}.json", tmp_path / f"ready{i}"
        args = [sys.executable, str(ROOT / "tests" / "subscriber_process.py"), daemon.pub, "cam", str(out),
                "--ready", str(ready)] + (["--frames"] if i == 0 else [])
        procs.append(subprocess.Popen(args))
        outs.append((out, ready))
    wait_until(lambda: all(r.exists() for _, r in outs))
    # 16 slots: a frame stays readable for 15 more frames, time for a reader on a loaded machine
    add_stream(daemon, "cam", f"file://{tmp_path / 'v.avi'}", slots=16)
    for p in procs:
        assert p.wait(120) == 0
    results = [json.loads(o.read_text()) for o, _ in outs]
    for r in results:
        assert r["seqs"] == list(range(len(frames)))  # every result, in order, in every subscriber
    digests = results[0]["digests"]
    assert len(digests) + results[0]["overwritten"] == len(frames) and len(digests) >= len(frames) // 2
    for seq, digest in digests.items():  # frames read from shared memory are the frames the source produced
        assert digest == hashlib.md5(frames[int(seq)].tobytes()).hexdigest()


def test_infer_requests_agree_with_lited_infer(daemon, bundles_dir):
    local = Model(load_bundle(bundles_dir / "fastestdet"))
    with daemon.client() as client:
        for name in ("chelsea", "coffee"):
            path = need_shared("images", f"{name}.png")
            image = cv2.imread(str(path))
            want = local.infer(image)["detections"]
            assert client.infer(image=str(path))["detections"] == want  # encoded PNG
            got = client.infer(image=image)  # raw BGR array
            assert got["detections"] == want and got["model"] == "fastestdet"
            assert (got["width"], got["height"]) == (image.shape[1], image.shape[0])
        faces = client.infer(image=str(need_shared("images", "astronaut.png")), model="face")["detections"]
        assert [f["label"] for f in faces] == ["face"]


def engine_pids(d: DaemonProcess) -> set:
    return set(tree(d.proc.pid)) - {d.proc.pid}


def test_infer_requests_run_in_an_engine_process_a_reload_stops(daemon):
    """The request worker's model runs out of process too; once a reload
    replaces that model, its engine process goes within a couple of seconds.
    A model no stream runs is warmed up at start (so a bundle that cannot run
    is refused there) and at reload, and the first request takes that engine."""
    image = str(need_shared("images", "astronaut.png"))
    daemon.wait_ready()
    with daemon.client() as client:
        spares = engine_pids(daemon)
        assert len(spares) == 2  # no stream: one warm engine per model, for the requests
        client.infer(image=image, model="det")
        assert engine_pids(daemon) == spares  # the worker took det's: no other process
        assert client.reload(model="det", bundle=daemon.config["models"]["face"], force=True)["reloaded"] == ["det"]
        (old,) = wait_until(lambda: (lambda gone: gone if len(gone) == 1 else None)(spares - engine_pids(daemon)),
                            timeout=10)
        now = engine_pids(daemon)
        assert client.infer(image=image, model="det")["model"] == "ultraface"
        assert engine_pids(daemon) == now and len(now - spares) == 1  # the reload's warm spare served it


def test_a_model_no_stream_runs_is_checked_at_start_and_reload_and_one_removed_goes(tmp_path, bundles_dir):
    """A bundle whose decoder cannot read its model's outputs, for a model only
    requests use: it was taken at start and reload ("reloaded in 0.0 s") and
    failed at the first request; a model removed from the config kept serving."""
    bad = tmp_path / "bad"
    shutil.copytree(bundles_dir / "ultraface", bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "decoder": {"type": "gfl"}}))
    (tmp_path / "a").mkdir()
    refused = DaemonProcess(tmp_path / "a", {"models": {"face": str(bundles_dir / "ultraface"), "spare": str(bad)},
                                             "streams": []})
    with contextlib.suppress(RuntimeError):  # (ping may answer first: the bus is up while models warm)
        refused.start()
    try:
        assert refused.proc.wait(60) != 0
    finally:
        refused.proc.kill()
    said = [ln for ln in refused.output().splitlines() if ln.startswith("lited: ")]
    assert len(said) == 1 and "models.spare: bundle " in said[0] and "decoder: gfl: " in said[0], said
    image = str(need_shared("images", "astronaut.png"))
    (tmp_path / "b").mkdir()
    config = {"models": {"face": str(bundles_dir / "ultraface"), "det": str(bundles_dir / "fastestdet")},
              "streams": []}
    with DaemonProcess(tmp_path / "b", config) as d, d.client(timeout=60) as client:
        with pytest.raises(ClientError) as info:
            client.reload(model="det", bundle=str(bad), force=True)
        assert info.value.code == "failed" and "decoder: gfl: " in info.value.message, info.value
        assert client.infer(image=image, model="det")["model"] == "fastestdet"  # the old one serves
        d.write_config({**config, "models": {**config["models"], "extra": str(bad)}})
        with pytest.raises(ClientError) as info:
            client.reload(timeout=60)
        assert "decoder: gfl: " in info.value.message and set(client.status()["models"]) == {"face", "det"}
        d.write_config({**config, "models": {"face": config["models"]["face"]}})
        assert client.reload(timeout=60)["removed"] == ["det"]
        assert set(client.status()["models"]) == {"face"}
        with pytest.raises(ClientError) as info:
            client.infer(image=image, model="det")
        assert info.value.code == "not_found", info.value
        wait_until(lambda: len(engine_pids(d)) == 1, timeout=10)  # face's; det's engines went
        assert client.infer(image=image, model="face")["model"] == "ultraface"


def test_reload_with_a_bundle_but_no_model_is_refused_even_with_one_model(tmp_path, bundles_dir):
    """It was aimed at the first model: with force, a silent swap of the default."""
    with DaemonProcess(tmp_path, {"models": {"det": str(bundles_dir / "fastestdet")}, "streams": []}) as d:
        with d.client() as client:
            with pytest.raises(ClientError) as info:
                client.call("reload", bundle=str(bundles_dir / "ultraface"), force=True)
            assert info.value.code == "bad_request", info.value
            assert info.value.message == "params.model: needed with params.bundle (the key of the model to load it " \
                                         "for: det)"
            assert client.status()["models"]["det"]["name"] == "fastestdet"


def test_bad_requests_get_error_replies_and_the_daemon_keeps_serving(daemon):
    with daemon.client() as client:
        cases = [({"method": "nope"}, "unknown_method"),
                 ({"method": "infer", "params": {}}, "bad_request"),
                 ({"method": "infer", "params": {"image": b"not an image"}}, "bad_request"),
                 ({"method": "infer", "params": {"array": b"\0" * 10, "shape": [2, 2, 3]}}, "bad_request"),
                 ({"method": "infer", "params": {"array": b"", "shape": [100000, 100000, 3]}}, "too_large"),
                 ({"method": "infer", "params": {"image": b"x", "model": "nope"}}, "not_found"),
                 ({"method": "snapshot", "params": {"stream": "nope"}}, "not_found"),
                 ({"method": "reload", "params": {"model": "det", "bundle": "/nonexistent"}}, "failed")]
        for body, code in cases:
            with pytest.raises(ClientError) as info:
                client.call(body["method"], **body.get("params", {}))
            assert info.value.code == code, (body, info.value)
        assert "params.image" in str(pytest.raises(ClientError, client.call, "infer", image="str").value)
        # neither: it said "params.shape: missing" (the frames audit)
        assert "params.image or params.array: missing" in str(pytest.raises(ClientError, client.call, "infer").value)
        # a param the method does not take: a typo ran the default model in silence (the black-box client audit)
        said = pytest.raises(ClientError, client.call, "infer", image=b"x", modle="det").value
        assert said.code == "bad_request" and str(said).endswith(
            "params.modle: unknown for infer (known: image, array, shape, dtype, model)"), said
        assert pytest.raises(ClientError, client.call, "ping", verbose=True).value.code == "bad_request"
        assert client.call("status", verbose=None)["version"]  # nil is absent
        assert client.ping()["pong"] is True


def test_fuzz_random_and_truncated_messages_do_not_hurt(daemon):
    ctx = zmq.Context.instance()
    rng = random.Random(1234)
    valid = msgpack.packb({"v": 1, "id": 1, "method": "infer", "params": {"image": b"\x89PNG" * 50}})
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.req)
    sent = 0
    for i in range(3000):
        kind = i % 5
        if kind == 0:
            payload = rng.randbytes(rng.randint(0, 200))
        elif kind == 1:
            payload = valid[:rng.randint(0, len(valid))]
        elif kind == 2:
            payload = msgpack.packb([1, 2, {"v": 1}])
        elif kind == 3:
            payload = msgpack.packb({"v": 1, "method": rng.choice(["ping", "status", 7, None, "x" * 300]),
                                     "params": rng.choice([{}, [], "x", {"image": 5}])})
        else:
            payload = bytes(b ^ (1 << rng.randint(0, 7)) if rng.random() < 0.05 else b for b in valid)
        frames = [payload] if rng.random() < 0.9 else [b"", payload, b"extra"]
        sock.send_multipart(frames)
        sent += 1
    replies = 0
    while sock.poll(2000):
        sock.recv_multipart()
        replies += 1
    sock.close()
    assert replies > sent * 0.5  # nearly every one got an answer (some were 'busy')
    with daemon.client() as client:
        assert client.ping()["pong"]
        assert client.infer(image=str(need_shared("images", "chelsea.png")))["detections"]
    assert daemon.proc.poll() is None


def test_a_subscriber_that_never_reads_does_not_slow_others_or_grow_the_daemon(tmp_path, bundles_dir):
    config = {"models": {"det": str(bundles_dir / "ultraface")}, "limits": {"pub_hwm": 20},
              "streams": [{"name": "fast", "source": "synth://?size=640x480&fps=0"}]}
    with DaemonProcess(tmp_path, config) as d:
        ctx = zmq.Context.instance()
        stuck = ctx.socket(zmq.SUB)
        stuck.setsockopt(zmq.RCVHWM, 10)
        stuck.setsockopt(zmq.SUBSCRIBE, b"")
        stuck.connect(d.pub)  # never reads
        with Subscriber(d.pub, streams=["fast"]) as live:
            live.recv(10)
            rss = [d.rss_mb()]
            counts, dropped, last = [], 0, None
            for _ in range(4):
                t0, n = time.monotonic(), 0
                while time.monotonic() - t0 < 2:
                    m = live.recv(1)
                    if m and m["type"] == "result":
                        n += 1
                        if last is not None:  # docs/protocol.md: a jump beyond skipped + 1 was dropped for us
                            dropped += m["seq"] - last - m["skipped"] - 1
                        last = m["seq"]
                counts.append(n)
                rss.append(d.rss_mb())
        stuck.close()
        with d.client() as client:
            fps = client.status()["streams"][0]["fps"]
    # the live subscriber gets results all along, none dropped for it: the stuck one holds nothing up
    # (its pace is the machine's: on a shared CI host a window can be slower than another; a stuck
    # subscriber holding things up would leave windows empty)
    assert min(counts) >= 5 and dropped == 0, (counts, dropped)
    assert rss[-1] - rss[1] < 8, rss  # bounded: nothing queues up for the stuck one
    assert fps > 5


def test_reload_swaps_the_model_while_results_keep_flowing(daemon):
    add_stream(daemon, "cam", "synth://?size=640x480&fps=20")
    with Subscriber(daemon.pub, streams=["cam"], events=True, check=False) as sub, daemon.client() as client:
        first = wait_until(lambda: (lambda m: m if m and m["type"] == "result" else None)(sub.recv(1)))
        assert first["model"] == "fastestdet"
        assert client.reload(model="det", bundle=daemon.config["models"]["face"], force=True)["reloaded"] == ["det"]
        models, seqs = [], []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and models.count("ultraface") < 5:
            m = sub.recv(1)
            if m and m["type"] == "result":
                models.append(m["model"])
                seqs.append(m["seq"])
        assert "ultraface" in models and seqs == sorted(seqs)
        assert models[models.index("ultraface"):] == ["ultraface"] * len(models[models.index("ultraface"):])
        with pytest.raises(ClientError, match="failed: bundle"):
            client.reload(model="det", bundle="/nonexistent")
        status = client.status()
        assert status["streams"][0]["state"] == "streaming"
        assert status["last_reload"]["ok"] is False and "nonexistent" in status["last_reload"]["error"]
        snap = client.snapshot("cam")
        image = cv2.imdecode(np.frombuffer(snap["jpeg"], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (480, 640, 3)
        # a plain reload (SIGHUP's) goes back to the bundle the config names: undoing a forced swap needs no force
        assert "det" in client.reload()["reloaded"]
        assert client.status()["models"]["det"]["name"] == "fastestdet"
        with pytest.raises(ClientError, match="another task"):  # swapping away again does
            client.reload(model="det", bundle=daemon.config["models"]["face"])


def test_an_engine_crash_costs_frames_not_the_daemon(daemon):
    """The predictor runs in a process of its own: killing it (as a segfault
    in a kernel would) is an `engine` event, the engine comes back, results
    keep flowing and requests keep being answered."""
    add_stream(daemon, "cam", "synth://?size=320x240&fps=20")
    with Subscriber(daemon.pub, streams=["cam"], events=True, check=False) as sub, daemon.client() as client:
        wait_until(lambda: (lambda m: m if m and m["type"] == "result" else None)(sub.recv(1)))
        pid = client.status()["streams"][0]["model"]["engine_pid"]
        os.kill(pid, signal.SIGKILL)
        event = wait_until(lambda: (lambda m: m if m and m.get("event") == "engine" else None)(sub.recv(1)))
        assert "died (SIGKILL)" in event["detail"], event
        assert client.ping()
        last = event["ts"]
        after = wait_until(lambda: (lambda m: m if m and m["type"] == "result" and m["frame_ts"] > last else None)(
            sub.recv(1)), timeout=20)
        status = client.status()["streams"][0]
        assert status["counters"]["engine_restarts"] == 1 and status["state"] == "streaming"
        table = subprocess.run([sys.executable, "-m", "lited.cli", "ctl", "status", "--endpoint", daemon.req],
                               capture_output=True, text=True, timeout=30).stdout
        assert "(cpu, 1 thread), 1 restart " in table, table  # a crashing engine showed nowhere in the table
        new_pid = status["model"]["engine_pid"]
        assert new_pid != pid and after["detections"] is not None
    assert daemon.stop() == 0, daemon.output()
    with pytest.raises(ProcessLookupError):  # stopping the daemon stops its engine processes
        os.kill(new_pid, 0)


def test_tcp_needs_curve_keys_or_insecure_flag(tmp_path, bundles_dir):
    import zmq.auth

    base = {"models": {"det": str(bundles_dir / "ultraface")}}
    bad = DaemonProcess(tmp_path / "a", {**base, "endpoints": {"req": ["tcp://127.0.0.1:0"]}})
    (tmp_path / "a").mkdir()
    bad.write_config()
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "serve", "--config", str(bad.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"lited: config {bad.config_path}: endpoints.req: tcp://127.0.0.1:0: TCP needs CURVE "
                                  "keys") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    keys = tmp_path / "keys"
    clients = keys / "clients"
    clients.mkdir(parents=True)
    _, server_secret = zmq.auth.create_certificates(keys, "server")
    os.chmod(server_secret, 0o600)  # pyzmq leaves it to the umask (0644 here), which the daemon refuses
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    os.rename(client_public, clients / "client.key")
    port = 45000 + os.getpid() % 1000
    (tmp_path / "b").mkdir()
    run = tmp_path / "b" / "run"
    good = DaemonProcess(tmp_path / "b", {**base, "endpoints": {"req": [f"ipc://{run}/req.sock",
                                                                        f"tcp://127.0.0.1:{port}"]},
                                          "curve": {"server_secret": str(server_secret),
                                                    "clients_dir": str(clients)}})
    with good:
        from lited.client import Client

        curve = {"server_public": str(keys / "server.key"), "client_secret": str(client_secret)}
        with Client(f"tcp://127.0.0.1:{port}", timeout=5, curve=curve) as client:
            assert client.ping()["pong"]
        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as plain:  # no keys: refused, said at once
            with pytest.raises(ClientError, match="refused: .* needs curve="):
                plain.ping()
