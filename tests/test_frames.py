"""Every result keeps its own frame, against a real `lited serve`.

Subscribers in other processes read each result's frame the moment it
arrives, in the demo's configuration and with a model far slower than its
camera: every frame must be readable and be the frame the source produced.
The demo's snapshot must draw its boxes on the text of its own frame. A
client written from docs/protocol.md alone must read the right frame for
every result while the ring is rebuilt for new frame sizes. A reader that
maps frames and never lets go must not stop capture.
"""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap

import cv2
import numpy as np

from conftest import ROOT, _load_tool, need_shared
from daemon_process import DaemonProcess
from lited.client import Client
from lited.sources.synth import draw
from test_daemon import wait_until

SUBSCRIBER = ROOT / "tests" / "subscriber_process.py"


def md5(frame: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(frame).tobytes()).hexdigest()


def read_on_arrival(d: DaemonProcess, tmp_path, stream: str, count: int) -> dict:
    """A subscriber process that copies each result's frame as it arrives:
    {"seqs", "digests": {seq: md5}, "overwritten", "gone"}."""
    out = tmp_path / f"{stream}.json"
    proc = subprocess.run([sys.executable, str(SUBSCRIBER), d.pub, stream, str(out), "--frames",
                           "--count", str(count), "--timeout", "180"], timeout=240)
    assert proc.returncode == 0
    return json.loads(out.read_text())


def stream_status(client: Client, name: str) -> dict:
    return next(s for s in client.status()["streams"] if s["stream"] == name)


def test_demo_reads_every_result_frame_and_its_snapshot_boxes_sit_on_the_text(tmp_path):
    demo = _load_tool("demo")
    video = tmp_path / "scroll.avi"
    demo.make_video(video)
    cap, frames = cv2.VideoCapture(str(video)), []
    ok, frame = cap.read()
    while ok:  # what the daemon's FFmpeg decode gives, byte for byte
        frames.append(frame)
        ok, frame = cap.read()
    detector = demo.detector_bundle(tmp_path / "det")   # the demo's first stage: 12 results in seconds
    d = DaemonProcess(tmp_path, demo.demo_config(video, tmp_path / "run", detector)).start().wait_ready()
    try:
        got = read_on_arrival(d, tmp_path, "cam0", 12)
        with d.client(timeout=30) as client:
            snap = client.snapshot("cam0")
    finally:
        assert d.stop() == 0, d.output()
    # The snapshot is the latest result's own frame: the best match among all frames of the video
    image = cv2.imdecode(np.frombuffer(snap["jpeg"], np.uint8), cv2.IMREAD_COLOR)
    diffs = [float(np.abs(image.astype(np.int16) - f).mean()) for f in frames]
    assert int(np.argmin(diffs)) == snap["seq"] % len(frames)
    # and its boxes sit on the text: each box holds dark text pixels, and the dark pixels (away from
    # the top and bottom edges, where a line cut in half may go undetected) lie in the boxes
    dark = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) < 80  # black text; the green boxes are lighter
    boxes = [[int(round(v)) for v in det["box"]] for det in snap["detections"]]
    assert len(boxes) >= 2
    inside = np.zeros_like(dark)
    for x1, y1, x2, y2 in boxes:
        interior = dark[max(0, y1):y2 + 1, max(0, x1):x2 + 1]
        assert y2 - y1 < 12 or interior.mean() > 0.01, (x1, y1, x2, y2, interior.mean())
        inside[max(0, y1 - 4):y2 + 5, max(0, x1 - 4):x2 + 5] = True
    core = slice(20, dark.shape[0] - 20)
    assert dark[core][inside[core]].sum() >= 0.97 * dark[core].sum()  # boxes 2 frames off: 0.86-0.99
    assert snap["frame"]["width"] == image.shape[1] and "generation" in snap["frame"]

    # and every result's frame was readable by the subscriber, and was the frame the file gave (it loops)
    assert (got["overwritten"], got["gone"], len(got["digests"])) == (0, 0, 12), got
    for seq, digest in got["digests"].items():
        assert digest == md5(frames[int(seq) % len(frames)]), seq


def test_a_model_20x_slower_than_the_camera_keeps_every_result_frame(tmp_path):
    detector = _load_tool("demo").detector_bundle(tmp_path / "det")
    d = DaemonProcess(tmp_path, {"models": {"text": str(detector)},
                                 "streams": [{"name": "fast", "source": "synth://?size=480x192&fps=200"}]}).start().wait_ready()
    try:
        with d.client(timeout=30) as client:
            before = stream_status(client, "fast")["counters"]
            got = read_on_arrival(d, tmp_path, "fast", 8)
            after = stream_status(client, "fast")["counters"]
    finally:
        assert d.stop() == 0, d.output()
    captured, inferred = (after[k] - before[k] for k in ("captured", "inferred"))
    assert captured >= 20 * inferred, (captured, inferred)
    assert (got["overwritten"], got["gone"], len(got["digests"])) == (0, 0, 8), got
    expected = np.empty((192, 480, 3), np.uint8)
    for seq, digest in got["digests"].items():  # synth frame n is a pure function of n
        draw(expected, int(seq))
        assert digest == md5(expected), seq


def test_an_independent_client_reads_the_right_frame_across_resizes(tmp_path, bundles_dir):
    """tests/independent_client.py knows only docs/protocol.md; the images
    change size every 4 frames, so the ring is rebuilt every half second."""
    folder = tmp_path / "images"
    folder.mkdir()
    expected = []
    for i in range(8):
        name = ("chelsea", "coffee", "astronaut")[i % 3]
        size = (320, 240) if i < 4 else (288, 224)
        image = cv2.resize(cv2.imread(str(need_shared("images", f"{name}.png"))), size)
        image = cv2.flip(image, 1) if i % 2 else image
        cv2.imwrite(str(folder / f"{i}.png"), image)
        expected.append(md5(cv2.imread(str(folder / f"{i}.png"))))
    d = DaemonProcess(tmp_path, {"models": {"det": str(bundles_dir / "fastestdet")},
                                 "streams": [{"name": "cam", "source": f"images://{folder}?fps=8&loop=1"}]}).start().wait_ready()
    out = tmp_path / "client.json"
    client = ROOT / "tests" / "independent_client.py"
    try:
        proc = subprocess.run([sys.executable, str(client), d.pub, d.req, "cam", "40", str(out)], timeout=240)
    finally:
        assert d.stop() == 0, d.output()
    assert proc.returncode == 0
    seen = json.loads(out.read_text())
    source = client.read_text()
    assert "import lited" not in source and "from lited" not in source
    results = seen["results"]
    assert len(results) == 40
    for entry in results:
        assert "error" not in entry, entry
        assert entry["md5"] == expected[entry["seq"] % 8], entry  # the right frame, never a look-alike
        assert entry["row_frame"] == entry["seq"]  # the slot row numbers frames as results do
        assert entry["shape"][:2] == entry["size"][::-1]
    seqs = [e["seq"] for e in results]
    assert all(b - a == e["skipped"] + 1 for a, b, e in zip(seqs, seqs[1:], results[1:]))
    generations = [e["generation"] for e in results]
    assert generations == sorted(generations) and len(set(generations)) >= 4  # rebuilt at least 3 times
    assert seen["name"]["missing"] == 0 and seen["name"]["half_made"] == 0 and seen["name"]["opened"] > 100
    assert seen["wrong_version"]["id"] == 77 and not seen["wrong_version"]["ok"]
    assert seen["wrong_version"]["error"]["code"] == "bad_request"
    # one model, two names, linked: the bundle's name and the config's key
    assert all(e["model"] == ["fastestdet", "det"] for e in results)
    assert seen["models"]["det"]["name"] == "fastestdet" and seen["stream_model"]["key"] == "det"
    assert seen["ready"] is True
    snap = seen["snapshot"]["result"]
    assert seen["snapshot"]["ok"] and snap["seq"] >= seqs[-1] and snap["frame"]["generation"] >= generations[-1]


_STUCK_READER = """
import signal, sys, time
from lited.client import Subscriber
from lited.stream.ring import FrameRing

with Subscriber(sys.argv[1], streams=["cam"]) as sub:
    result = sub.recv(timeout=60)
    ring = FrameRing.attach(result["frame"]["ring"])
    views = [ring.view(slot) for slot in range(ring.slots)]   # every slot, mapped and never let go
    with sub.frame_view(result) as frame:
        print("holding", flush=True)
        signal.pause()                                          # frozen mid-read (and SIGSTOPped)
"""


def test_a_reader_that_never_lets_go_cannot_stop_capture(tmp_path, bundles_dir):
    d = DaemonProcess(tmp_path, {"models": {"face": str(bundles_dir / "ultraface")},
                                 "streams": [{"name": "cam", "source": "synth://?size=320x240&fps=30"}]}).start().wait_ready()
    stuck = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_STUCK_READER), d.pub],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert stuck.stdout.readline().strip() == "holding"
        stuck.send_signal(signal.SIGSTOP)
        with d.client() as client:
            before = stream_status(client, "cam")["counters"]
            got = read_on_arrival(d, tmp_path, "cam", 20)
            wait_until(lambda: stream_status(client, "cam")["counters"]["captured"] >= before["captured"] + 60)
            after = stream_status(client, "cam")
    finally:
        stuck.kill()
        stuck.wait()
        assert d.stop() == 0, d.output()
    assert after["state"] == "streaming" and after["counters"]["inferred"] > before["inferred"] + 20
    assert (got["overwritten"], got["gone"], len(got["digests"])) == (0, 0, 20), got
    expected = np.empty((240, 320, 3), np.uint8)
    for seq, digest in got["digests"].items():
        draw(expected, int(seq))
        assert digest == md5(expected), seq
