#!/usr/bin/env python3
"""`make demo`: the whole product in a minute.

1. draws a video of scrolling text with OpenCV (build/demo/scroll.avi);
2. starts `lited serve` on the committed PP-OCRv4 bundle (text detection,
   then on each line's crop orientation and recognition: a cascade) with
   that video as a camera (`file://...?loop=1&realtime=1`);
3. subscribes to the results, as any app would (lited.client; the same as
   sdk_template/examples/subscriber.py), and prints the text read in each
   frame, until a few frames were read or the time is up;
4. asks for a snapshot: build/demo/snapshot.jpg, the frame with its boxes and text;
5. prints a summary from the daemon's status and how well the text was read
   (character accuracy against the strings it drew), and stops everything.

    python tools/demo.py [--seconds 60] [--frames 3] [--report FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "sdk_template" / "demo_ppocrv4"
OUT = ROOT / "build" / "demo"
TEXT = ["lited on-device inference", "for edge boards", "Paddle Lite and ZeroMQ", "results in shared memory",
        "RK3399 Jetson Raspberry Pi", "frame ring with zero copy", "systemd and a watchdog", "hot reload"]
SIZE = (640, 256)  # a text band: three lines, each about 40 px high (the recognizer reads 48)
FONT, SCALE, THICKNESS = cv2.FONT_HERSHEY_SIMPLEX, 1.2, 2
LINE_GAP, FIRST_LINE, SPEED = 80, 66, 10  # px between baselines, first baseline, px scrolled per frame
FRAMES, FPS = 64, 5  # one loop of the text (8 lines x 80 px / 10 px per frame), at a slow camera's rate


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def line_positions(offset: int, height: int = SIZE[1]) -> list:
    """(text, baseline y) of every line drawn with any part on a frame scrolled by `offset` px."""
    out = []
    for i, line in enumerate(TEXT * 2):
        y = FIRST_LINE + i * LINE_GAP - offset % (LINE_GAP * len(TEXT))
        if -LINE_GAP // 2 < y < height + LINE_GAP // 2:
            out.append((line, y))
    return out


def draw_text_page(width: int = 640, height: int = 360, offset: int = 0) -> np.ndarray:
    """A white page with lines of black text, scrolled up by `offset` px."""
    page = np.full((height, width, 3), 255, np.uint8)
    for line, y in line_positions(offset, height):
        cv2.putText(page, line, (24, y), FONT, SCALE, (0, 0, 0), THICKNESS, cv2.LINE_AA)
    return page


def make_video(path: Path, frames: int = FRAMES, fps: int = FPS) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    for i in range(frames):
        writer.write(draw_text_page(*SIZE, offset=i * SPEED))
    writer.release()


def visible_lines(seq: int) -> list:
    """(text, top, bottom) of the lines wholly inside frame `seq` of the looping video."""
    out = []
    for line, y in line_positions((seq % FRAMES) * SPEED):
        (_, h), base = cv2.getTextSize(line, FONT, SCALE, THICKNESS)
        top, bottom = y - h - THICKNESS, y + base + THICKNESS
        if top >= 0 and bottom <= SIZE[1]:
            out.append((line, top, bottom))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score(result: dict) -> list:
    """(drawn, read) for each line wholly inside the result's frame: the text of
    the detection whose box centre lies in that line's band ("" when none)."""
    pairs = []
    for line, top, bottom in visible_lines(result["seq"]):
        read = ""
        for det in result["detections"]:
            centre = (det["box"][1] + det["box"][3]) / 2
            if top <= centre <= bottom and "text" in det:
                read = det["text"]
        pairs.append((line, read))
    return pairs


def accuracy(pairs: list) -> float:
    """Character accuracy: 1 - edit distance / characters drawn (a missed line counts all its characters)."""
    drawn = sum(len(line) for line, _ in pairs)
    return 1.0 - sum(edit_distance(read, line) for line, read in pairs) / drawn if drawn else 0.0


def read_text(pub: str, seconds: float, frames: int) -> tuple:
    """Results until `frames` frames were read or `seconds` passed: (results, pairs)."""
    from lited.client import Subscriber

    results, pairs, read = [], [], 0
    deadline = time.monotonic() + seconds
    with Subscriber(pub, streams=["cam0"]) as sub:
        while time.monotonic() < deadline and read < frames:
            msg = sub.recv(timeout=0.5)
            if msg is None or msg.get("type") != "result":
                continue
            results.append(msg)
            if not any("text" in d for d in msg["detections"]):
                continue  # not read: no text found, or the frame was gone before its lines were cut (torn)
            texts = [d["text"] for d in sorted(msg["detections"], key=lambda d: d["box"][1]) if d.get("text")]
            t = msg["timings_ms"]
            stages = ", ".join(f"{k} {t[k]:.0f}" for k in ("infer", "cls", "rec") if k in t)
            say(f"frame {msg['seq']} ({stages} ms): " + (" | ".join(json.dumps(x) for x in texts) or "-"))
            pairs += score(msg)
            read += 1
    return results, pairs


def detector_bundle(dst: Path) -> Path:
    """The demo bundle's text detector alone (x86, no cascade stages) at `dst`: a fast model on
    the demo's video for tests and benchmarks of the frame path."""
    dst.mkdir(parents=True)
    shutil.copy(BUNDLE / "model_x86.nb", dst)
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    manifest.update(schema=1, name="demo_ppocrv4_det", models={"x86": manifest["models"]["x86"]})
    manifest.pop("stages")
    manifest.pop("golden")  # the cascade's: its text is not the detector's to give
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def demo_config(video: Path, run: Path, bundle: Path = BUNDLE) -> dict:
    """The demo's daemon config: the video as a camera at its own rate, the demo bundle, defaults
    otherwise (each result's frame is leased, so no ring size needs raising for a slow model)."""
    return {"runtime_dir": str(run), "models": {"text": str(bundle)},
            "streams": [{"name": "cam0", "source": f"file://{video}?loop=1&realtime=1", "model": "text"}]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="read for at most this long")
    ap.add_argument("--frames", type=int, default=3, help="stop once this many frames were read")
    ap.add_argument("--report", type=Path, help="also write what was read and the accuracy as JSON")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    video = OUT / "scroll.avi"
    say(f"drawing a scrolling-text video -> {video.relative_to(ROOT)}")
    make_video(video)
    run = OUT / "run"
    config = demo_config(video, run)
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
                    if time.monotonic() - t0 > 90:
                        say("lited serve did not answer within 90 s")
                        return 1
            say(f"daemon ready in {time.monotonic() - t0:.1f} s; reading the text as it scrolls by:")
            results, pairs = read_text(f"ipc://{run}/pub.sock", args.seconds, args.frames)
            client.timeout = 10
            snap = client.snapshot("cam0")
            (OUT / "snapshot.jpg").write_bytes(snap["jpeg"])
            say(f"snapshot: frame {snap['seq']} (the latest result's own frame) with its "
                f"{len(snap['detections'])} text boxes -> build/demo/snapshot.jpg")
            status = client.status()
        s = status["streams"][0]
        lat = s["latency_ms"]
        say(f"summary: {s['counters']['inferred']} frames inferred, {s['counters']['skipped']} skipped "
            f"(latest frame wins), {s['counters']['torn']} torn, camera {s['fps']:.1f} fps; latency p50/p99: "
            + ", ".join(f"{k} {v['p50']:.1f}/{v['p99']:.1f} ms" for k, v in lat.items() if k != "wait")
            + f"; daemon RSS {status['rss_mb']:.0f} MB, engines {status.get('engines_rss_mb', 0):.0f} MB")
        acc = accuracy(pairs)
        say(f"read {len(pairs)} whole lines in {len(results)} frames: character accuracy {acc:.3f} "
            "against the text drawn")
        if args.report:
            args.report.write_text(json.dumps({"accuracy": acc, "frames": len(results),
                                               "lines": [{"drawn": d, "read": r} for d, r in pairs]}, indent=1))
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
