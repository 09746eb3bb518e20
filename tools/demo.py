#!/usr/bin/env python3
"""`make demo`: the whole product in a minute.

1. draws a video of scrolling text with OpenCV (build/demo/scroll.avi);
2. starts `lited serve` on the committed PP-OCRv4 text-detection bundle with
   that video as a camera (`file://...?loop=1&realtime=1`);
3. runs the example subscriber (sdk_template/examples/subscriber.py) for a
   few seconds: live results as they are published;
4. asks for a snapshot: build/demo/snapshot.jpg, the frame with its boxes;
5. prints a summary from the daemon's status, and stops everything.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "sdk_template" / "demo_ppocrv4_det"
SUBSCRIBER = ROOT / "sdk_template" / "examples" / "subscriber.py"
OUT = ROOT / "build" / "demo"
TEXT = ["lited: on-device inference", "for edge boards", "Paddle Lite + ZeroMQ", "results in shared memory",
        "RK3399  Jetson  Raspberry Pi", "frame ring, zero copy", "systemd + watchdog", "hot reload"]
SIZE = (480, 192)  # a text band: PP-OCR det at this size runs a few frames a second on one x86 core


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def draw_text_page(width: int = 640, height: int = 360, offset: int = 0) -> np.ndarray:
    """A white page with lines of black text, scrolled up by `offset` px."""
    page = np.full((height, width, 3), 255, np.uint8)
    for i, line in enumerate(TEXT * 2):
        y = 50 + i * 60 - offset % (60 * len(TEXT))
        if -30 < y < height + 30:
            cv2.putText(page, line, (20, y), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2, cv2.LINE_AA)
    return page


def make_video(path: Path, frames: int = 120, fps: int = 15) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    for i in range(frames):
        writer.write(draw_text_page(*SIZE, offset=i * 4))
    writer.release()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    video = OUT / "scroll.avi"
    say(f"drawing a scrolling-text video -> {video.relative_to(ROOT)}")
    make_video(video)
    run = OUT / "run"
    config = {"runtime_dir": str(run), "models": {"text": str(BUNDLE)},
              "streams": [{"name": "cam0", "source": f"file://{video}?loop=1&realtime=1", "model": "text"}]}
    (OUT / "lited.conf").write_text(json.dumps(config, indent=2))
    say(f"starting lited serve with {BUNDLE.relative_to(ROOT)} (config: build/demo/lited.conf)")
    log = open(OUT / "daemon.log", "wb")
    lited = Path(sys.executable).with_name("lited")
    daemon = subprocess.Popen([str(lited), "serve", "--config", str(OUT / "lited.conf")], stdout=log,
                              stderr=subprocess.STDOUT)
    from lited.client import Client, DaemonUnreachable

    try:
        with Client(f"ipc://{run}/req.sock", timeout=1) as client:
            t0 = time.monotonic()
            while True:
                if daemon.poll() is not None:
                    say(f"lited serve exited with {daemon.returncode}; see build/demo/daemon.log")
                    print((OUT / "daemon.log").read_text()[-2000:])
                    return 1
                try:
                    client.ping()
                    break
                except (TimeoutError, DaemonUnreachable):
                    time.sleep(0.1)
                    if time.monotonic() - t0 > 60:
                        say("lited serve did not answer within 60 s")
                        return 1
            say(f"daemon ready in {time.monotonic() - t0:.1f} s; subscribing for 6 s:")
            subprocess.run([sys.executable, str(SUBSCRIBER), "--endpoint", f"ipc://{run}/pub.sock",
                            "--duration", "6"], check=False)
            client.timeout = 10
            snap = client.snapshot("cam0")
            (OUT / "snapshot.jpg").write_bytes(snap["jpeg"])
            say(f"snapshot of frame {snap['seq']} with {len(snap['detections'])} text boxes -> build/demo/snapshot.jpg")
            status = client.status()
        s = status["streams"][0]
        lat = s["latency_ms"]
        say(f"summary: {s['counters']['inferred']} frames inferred, {s['counters']['skipped']} skipped "
            f"(latest frame wins), camera {s['fps']:.1f} fps; latency p50/p99: "
            + ", ".join(f"{k} {v['p50']:.1f}/{v['p99']:.1f} ms" for k, v in lat.items() if k != "wait")
            + f"; daemon RSS {status['rss_mb']:.0f} MB")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
    say(f"stopped (exit {daemon.returncode}); everything it started is gone")
    return 0 if daemon.returncode == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
