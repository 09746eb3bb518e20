#!/usr/bin/env python3
"""`make demo-cloud`: a board and a server collaborating over MQTT, on this machine.

1. assembles two bundles from ../shared/models: ultraface (face detection,
   the board's model) and mobilenetv2 (an ImageNet classifier standing in for
   the server's face-recognition model: the shared models hold no recogniser);
2. starts Mosquitto on loopback with TLS, passwords, client certificates and
   the ACL of docs/uplink.md (tools/mqtt_broker.py);
3. starts `lited serve` as device `dev1` on a video of the shared photos,
   sending face crops (`ack: cloud`) through its outbox;
4. starts one `lited cloud` worker classifying the crops;
5. prints the answers as the board's local bus shows them, asks the board for
   its status over MQTT (`lited remote`), and stops everything it started.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LITED_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "build" / "demo-cloud"
sys.path.insert(0, str(ROOT / "tools"))
from mqtt_broker import Broker  # noqa: E402


def say(msg: str) -> None:
    print(f"demo-cloud: {msg}", flush=True)


def make_video(path: Path, frames: int = 90) -> None:
    """The astronaut (a face), the cat and the cup in turn, 15 fps, 320x240."""
    images = [cv2.resize(cv2.imread(str(SHARED / "images" / f"{n}.png")), (320, 240))
              for n in ("astronaut", "chelsea", "coffee")]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 240))
    for i in range(frames):
        writer.write(images[(i // 15) % 3])
    writer.release()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"demo-cloud: {what} did not happen within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],  # --help ran the whole demo
                                 epilog=f"Writes {OUT.relative_to(ROOT)}/; needs Mosquitto and {SHARED}/models.")
    ap.add_argument("--seconds", type=float, default=8.0, help="how long to show answers (default 8)")
    args = ap.parse_args()
    if not (SHARED / "models" / "ultraface").is_dir() or not (SHARED / "models" / "mobilenetv2").is_dir():
        say(f"needs ultraface and mobilenetv2 in {SHARED / 'models'} (set LITED_SHARED)")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    lited = [sys.executable, "-m", "lited.cli"]
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_bundles.py"), "--models", str(SHARED / "models"),
                    "--out", str(OUT / "bundles"), "ultraface", "mobilenetv2"], check=True, stdout=subprocess.DEVNULL)
    make_video(OUT / "faces.avi")
    broker = Broker(OUT / "mqtt", devices=("dev1",))
    broker.start()
    say(f"Mosquitto on {broker.device_url} (devices, passwords) and {broker.server_url} (servers, certificates)")
    config = {"runtime_dir": str(OUT / "run"), "models": {"face": str(OUT / "bundles" / "ultraface")},
              "streams": [{"name": "cam0", "source": f"file://{OUT / 'faces.avi'}?loop=1&realtime=1",
                           "model": "face", "slots": 16}],
              "uplink": broker.uplink_config("dev1", ack="cloud", status_interval=5,
                                             outbox={"dir": str(OUT / "outbox")},
                                             streams={"cam0": {"labels": ["face"], "min_score": 0.7, "max_rate": 3,
                                                               "attach": "crops", "margin": 0.2}})}
    (OUT / "lited.conf").write_text(json.dumps(config, indent=2))
    procs: list = []
    cloud = None
    try:
        say("starting lited serve as device dev1 (ultraface on the shared photos; config build/demo-cloud/lited.conf)")
        procs.append(subprocess.Popen([*lited, "serve", "--config", str(OUT / "lited.conf")],
                                      stdout=open(OUT / "daemon.log", "wb"), stderr=subprocess.STDOUT))
        say("starting lited cloud with mobilenetv2 (a stand-in classifier for face recognition)")
        cloud_log = OUT / "cloud.log"
        cloud = subprocess.Popen([*lited, "cloud", *broker.server_args(), "--bundle", str(OUT / "bundles" / "mobilenetv2"),
                                  "--client-id", "cloud-a", "--record", str(OUT / "fleet.jsonl")],
                                 stdout=subprocess.PIPE, stderr=open(cloud_log, "wb"))
        procs.append(cloud)
        wait_for(lambda: b"subscribed to" in cloud_log.read_bytes() or cloud.poll() is not None, 120, "lited cloud")
        from lited.client import Subscriber

        say(f"answers on the board's local bus (topic answer/cam0) for {args.seconds:g} s:")
        shown, deadline = 0, None
        with Subscriber(f"ipc://{OUT / 'run'}/pub.sock", answers=True) as sub:
            t0 = time.monotonic()
            while deadline is None or time.monotonic() < deadline:
                if time.monotonic() - t0 > 120:
                    raise TimeoutError("demo-cloud: no answer within 120 s; see build/demo-cloud/*.log")
                msg = sub.recv(timeout=0.5)
                if msg is None or msg["type"] != "answer":
                    continue
                deadline = deadline or time.monotonic() + args.seconds
                best = msg["classes"][0] if msg.get("classes") else {"label": "-", "score": 0}
                print(f"  cam0 #{msg['seq']} face {msg['detection']} -> {msg.get('model')} on {msg['worker']}: "
                      f"{best['label']} {best['score']:.2f}  (round trip {msg.get('round_trip_ms', 0):.0f} ms)",
                      flush=True)
                shown += 1
        from lited.cloud import remote_call

        reply = remote_call(broker.server_settings(), "dev1", "status", timeout=30)
        up = reply["result"]["uplink"]
        say(f"`lited remote dev1 status` over MQTT: connected {up['connected']}, outbox {up['outbox']['queued']} "
            f"queued, {up['counters']['queued']} stored, {up['counters']['answers']} answers, round trip p50/p99 "
            f"{(up['round_trip_ms'] or {}).get('p50', 0):.0f}/{(up['round_trip_ms'] or {}).get('p99', 0):.0f} ms")
    finally:
        for proc in reversed(procs):
            stop(proc)
        broker.stop()
    lines = cloud.stdout.read().decode().strip().splitlines() if cloud is not None else []
    stats = json.loads(lines[-1]) if lines else {}
    say(f"lited cloud: {stats.get('crops', 0)} crops answered, {stats.get('results', 0)} results and "
        f"{stats.get('events', 0)} events recorded (build/demo-cloud/fleet.jsonl), "
        f"{stats.get('duplicates', 0)} duplicates dropped; everything it started is stopped")
    return 0 if shown else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
