"""Cascades: a bundle's later stages run on crops of its first stage's
detections (cascade.py), in `lited infer`, in a stream and in the demo.

The OCR bundle committed as the demo (PP-OCRv4 det + cls + rec) is the real
cascade here; stream tests use a copy with the orientation stage only, so
they take seconds, not minutes (the recognizer runs ~1 s per line on x86).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DEMO_BUNDLE, ROOT, need_shared, reseal

sys.path.insert(0, str(ROOT / "tools"))
import demo  # noqa: E402 - tools/demo.py: its video, and how it scores what was read

from lited.bundle import BundleError, load_bundle, read_labels
from lited.cascade import Stage, box_crop, quad_crop
from lited.model import Model, Part
from lited.stream import Stream

PAGE_LINES = [  # page.png, transcribed by hand
    "Region-based segmentation",
    "Let us first determine markers of the coins and the",
    "background. These markers are pixels that we can label",
    "unambiguously as either object or background. Here,",
    "the markers are found at the two extreme parts of the",
    "histogram of grey values:",
    ">>> markers = np.zeros_like(coins)",
]


def lited(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("lited")), *args], capture_output=True, text=True,
                          timeout=600)


def edit(root: Path, change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def ocr_copy(tmp_path) -> Path:
    """The demo bundle's x86 files, to edit."""
    dst = tmp_path / "ocr"
    shutil.copytree(DEMO_BUNDLE, dst, ignore=shutil.ignore_patterns("*model_arm.nb"))
    edit(dst, lambda m: [part["models"].pop("arm") for part in [m, *m["stages"]]])
    return dst


@pytest.fixture
def det_cls(ocr_copy) -> Path:
    """Text detection with the orientation classifier as its only later stage."""
    edit(ocr_copy, lambda m: m.update(stages=m["stages"][:1]))
    return ocr_copy


# -- the bundle format --------------------------------------------------------

def test_the_demo_bundle_is_a_three_stage_cascade():
    bundle = load_bundle(DEMO_BUNDLE)
    assert bundle.manifest["schema"] == 2 and [s.name for s in bundle.stages] == ["cls", "rec"]
    assert bundle.stages[0].crop["mode"] == "quad" and bundle.stages[0].batch == 6
    assert bundle.stages[1].decoder["type"] == "ctc"
    keys = bundle.stages[1].labels
    assert len(keys) == 6623 and keys[5709] == "\u3000"  # kept: every later key keeps its index


def test_labels_are_kept_exactly(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_bytes("a\r\n \n\u3000\n\nb\n\n\n".encode())
    assert read_labels(path) == ["a", " ", "\u3000", "", "b"]


def test_stage_problems_are_named_by_field_path(ocr_copy):
    def break_it(m):
        m["stages"][0]["crop"] = {"mode": "circle"}
        m["stages"][0]["select"] = {"min_score": 2}
        m["stages"][0]["batch"] = 0
        m["stages"][1]["decoder"] = {"type": "db_text"}
        m["stages"][1]["name"] = "cls"
        m["stages"][1]["preprocess"]["resize"].pop("widths")
        m["stages"][1]["rotate"] = {"label": "180"}
        m["stages"][1]["colour"] = "RGB"
        m["stages"][0]["models"]["x86"]["file"] = "../x.nb"
    edit(ocr_copy, break_it)
    with pytest.raises(BundleError) as info:
        load_bundle(ocr_copy)
    message = str(info.value)
    for part in ["stages[0].crop.mode: unknown \"circle\", expected one of quad, box",
                 "stages[0].select.min_score: expected a number from 0 to 1, got 2",
                 "stages[0].batch: expected an integer from 1 to 64, got 0",
                 "stages[1].decoder.type: 'db_text' finds boxes; a stage adds one result to each detection",
                 "stages[1].name: 'cls' is used by an earlier stage",
                 "stages[1].preprocess.resize.widths: missing: a dynamic input width",
                 "stages[1].colour: unknown field",
                 # the last stage turns its crop for no one: the stages were given in the wrong order
                 "stages[1].rotate: no stage after it to turn the crop for",
                 "stages[0].models.x86.file: '../x.nb' leaves the bundle"]:
        assert part in message, (part, message)


def test_a_label_a_stage_names_must_be_one_its_labels_file_has(ocr_copy):
    """A typo in `select.labels` switched the stage off, one in `rotate.label` the rotation, and
    both passed `config check` in silence (the cascade audit)."""
    def typo(m):
        m["stages"][0]["select"] = {"labels": ["txet"]}
        m["stages"][0]["rotate"] = {"label": "108"}
    edit(ocr_copy, typo)  # no labels file: db_text labels every detection "text" (the re-check)
    with pytest.raises(BundleError) as info:
        load_bundle(ocr_copy)
    message = str(info.value)
    assert ("stages[0].select.labels: 'txet' not among the first stage's labels ('db_text' labels every "
            "detection text): the stage would never run") in message, message
    assert "stages[0].rotate.label: '108' not among the stage's labels (cls_labels.txt)" in message, message


def test_a_stage_needs_schema_2_and_a_model_for_each_target(ocr_copy):
    edit(ocr_copy, lambda m: m.update(schema=1))
    with pytest.raises(BundleError, match=r"stages: needs \"schema\": 2"):
        load_bundle(ocr_copy)
    edit(ocr_copy, lambda m: (m.update(schema=2), m["stages"][1]["models"].pop("x86")))
    with pytest.raises(BundleError, match=r"stages\[1\]\.models: no model for target x86"):
        load_bundle(ocr_copy)


def test_a_batch_needs_a_model_that_batches(ocr_copy):
    edit(ocr_copy, lambda m: m["stages"][1].update(batch=4))
    with pytest.raises(BundleError, match=r"stages\[1\]\.batch: 4, but the model's batch is fixed at 1"):
        load_bundle(ocr_copy)


def test_a_missing_stage_model_is_refused_before_loading(ocr_copy):
    (ocr_copy / "rec_model_x86.nb").unlink()
    with pytest.raises(BundleError, match=r"rec_model_x86.nb: missing \(stages\[1\]\.models\.x86\.file\)"):
        load_bundle(ocr_copy)


# -- crops ----------------------------------------------------------------------

def test_the_self_test_checks_what_the_cascade_reads(ocr_copy):
    """A bundle whose recognizer reads other text than its golden result says
    (shifted labels, another model) must fail its self-test: the installer
    switches to a bundle only after it passes."""
    def misread(m: dict) -> None:
        m["golden"]["expected"]["detections"][0]["text"] = "something else"
    edit(ocr_copy, misread)
    proc = lited("selftest", "--bundle", str(ocr_copy))
    assert proc.returncode == 1 and "'something else' expected" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_quad_crop_turns_a_tilted_line_upright():
    page = np.full((200, 400, 3), 255, np.uint8)
    cv2.putText(page, "tilted text", (60, 110), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2, cv2.LINE_AA)
    rect = ((200.0, 100.0), (300.0, 60.0), 0.0)
    upright = quad_crop(page, cv2.boxPoints(rect)[[1, 2, 3, 0]])  # tl, tr, br, bl
    turn = cv2.getRotationMatrix2D((200, 100), 12, 1.0)
    tilted = cv2.warpAffine(page, turn, (400, 200), borderValue=(255, 255, 255))
    corners = cv2.transform(cv2.boxPoints(rect)[[1, 2, 3, 0]][None], turn)[0]
    crop = quad_crop(tilted, corners)
    assert crop.shape == upright.shape == (60, 300, 3)
    assert np.abs(crop.astype(int) - upright.astype(int)).mean() < 12  # the same line, resampled twice
    tall = quad_crop(page, [[50, 10], [80, 10], [80, 110], [50, 110]])
    assert tall.shape[:2] == (30, 100)  # a vertical line is turned to be read left to right
    assert quad_crop(page, [[5, 5], [5, 5], [5, 5], [5, 5]]) is None


def test_box_crop_grows_by_its_margin_and_stays_inside():
    image = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    crop = box_crop(image, [50, 20, 150, 60], 0.1)
    assert crop.shape[:2] == (48, 120) and crop.flags.c_contiguous
    assert box_crop(image, [-30, -30, 20, 20], 0.5).shape[:2] == (45, 45)
    assert box_crop(image, [250, 10, 260, 20], 0.0) is None


# -- running stages -------------------------------------------------------------

def page_crops(bundle) -> tuple:
    """The page's text lines as the cls stage crops them, and the stage."""
    image = cv2.imread(str(need_shared("images", "page.png")))
    det = Part(bundle, None, None, False)
    detections = det.decoder.decode(*det.forward(image))["detections"]
    det.close()
    stage = Stage(bundle.stages[0], Part(bundle.stages[0], None, None, False))
    crops = [stage.cut(image, detections[i]) for i in stage.pick(detections)]
    return [c for c in crops if c is not None], stage


def test_crops_are_batched_when_the_model_allows_it(det_cls):
    """The orientation classifier (batch -1) reads 6 crops per run, with the same results as one by one."""
    crops, stage = page_crops(load_bundle(det_cls))
    assert len(crops) >= 6 and stage.batch == 6
    runs = []
    engine = stage.part.engine
    real_run = engine.run
    engine.run = lambda: runs.append(1) or real_run()  # count engine runs (the real engine runs)
    batched = stage.read(crops)
    stage.batch = 1
    single = stage.read(crops)
    assert len(runs) == -(-len(crops) // 6) + len(crops)
    for a, b in zip(batched, single):
        assert a["classes"][0]["label"] == b["classes"][0]["label"]
        assert a["classes"][0]["score"] == pytest.approx(b["classes"][0]["score"], abs=1e-5)
    stage.part.close()


@pytest.mark.slow
def test_lited_infer_reads_the_page(shared_images):
    """`lited infer` on the scanned page with the demo bundle: every line, almost every character."""
    proc = lited("infer", "--bundle", str(DEMO_BUNDLE), "--json", str(shared_images / "page.png"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    lines = sorted(result["detections"], key=lambda d: d["box"][1])
    assert len(lines) == len(PAGE_LINES)
    for det in lines:
        assert {"text", "text_score", "classes"} <= set(det) and det["classes"][0]["label"] in ("0", "180")
    read = [d["text"] for d in lines]
    errors = sum(demo.edit_distance(got, want) for got, want in zip(read, PAGE_LINES))
    accuracy = 1 - errors / sum(map(len, PAGE_LINES))
    assert accuracy >= 0.9, (accuracy, read)
    assert set(result["timings_ms"]) >= {"preprocess", "infer", "postprocess", "crop", "cls", "rec"}


# -- streams ----------------------------------------------------------------------

def text_video(path: Path, frames: int, fps: int) -> None:
    demo.make_video(path, frames=frames, fps=fps)


def stream_results(bundle_dir: Path, uri: str, slots: int, count: int, timeout: float = 120) -> tuple:
    bundle = load_bundle(bundle_dir)
    results: list = []
    lock = threading.Lock()

    def publish(result: dict) -> None:
        with lock:
            results.append(result)

    s = Stream("ocr", uri, lambda: Model(bundle, isolated=True), publish, lambda e: None, slots=slots)
    s.start()
    deadline = time.monotonic() + timeout
    try:
        while len(results) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        counters = dict(s.stats.counters)
    finally:
        s.stop()
    return list(results), counters


def test_a_stream_runs_the_stage_on_every_frame_it_can_still_crop(det_cls, tmp_path):
    video = tmp_path / "text.avi"
    text_video(video, frames=8, fps=5)
    results, counters = stream_results(det_cls, f"file://{video}", slots=8, count=8)  # lossless file
    assert len(results) == 8 and counters["torn"] == 0
    for result in results:
        assert result["detections"]
        for det in result["detections"]:
            assert det["classes"][0]["label"] in ("0", "180")
        assert result["timings_ms"]["cls"] > 0


def test_a_frame_without_detections_has_the_stage_timings_infer_gives_it(det_cls, tmp_path):
    """The cascade audit: a stream's result of a frame with nothing found had no `crop` nor stage
    key in `timings_ms`, where `lited infer` of the same frame has them."""
    blank = tmp_path / "blank"
    blank.mkdir()
    cv2.imwrite(str(blank / "white.png"), np.full((240, 320, 3), 255, np.uint8))
    results, _ = stream_results(det_cls, f"images://{blank}", slots=4, count=1)
    assert results and results[0]["detections"] == [], results
    infer = lited("infer", "--bundle", str(det_cls), "--json", str(blank / "white.png"))
    assert infer.returncode == 0, infer.stderr
    from_infer = set(json.loads(infer.stdout)["timings_ms"])
    assert {"crop", "cls"} <= from_infer and {"crop", "cls"} <= set(results[0]["timings_ms"]), results[0]


def test_a_live_stream_cuts_every_crop_from_its_own_held_frame(det_cls, tmp_path):
    """No ring margin at 30 fps: the camera fills many frames while the detector works on one, yet
    that frame is held until its result is out, so every result gets its stage fields, none torn
    (before frames were leased, all but the first were overwritten and published without them)."""
    video = tmp_path / "text.avi"
    text_video(video, frames=60, fps=30)
    results, counters = stream_results(det_cls, f"file://{video}?realtime=1&loop=1", slots=0, count=4)
    assert len(results) >= 4 and counters["torn"] == 0
    assert counters["captured"] > 2 * len(results), counters   # the camera did overtake the model
    for result in results:
        assert result["detections"] and all("classes" in d for d in result["detections"])


def test_a_cascade_result_total_is_the_sum_of_its_timings(det_cls, tmp_path):
    """A frame collected while the post thread still ran the previous frame's
    cascade waited there, in no key: total was about twice the sum of the
    parts on the demo (post_wait now)."""
    video = tmp_path / "text.avi"
    text_video(video, frames=60, fps=30)
    results, _ = stream_results(det_cls, f"file://{video}?realtime=1&loop=1", slots=0, count=4)
    assert len(results) >= 4
    for result in results:
        t = result["timings_ms"]
        parts = sum(v for k, v in t.items() if k not in ("capture", "total"))
        assert "post_wait" in t and abs(t["total"] - parts) < 5 + 0.02 * t["total"], t


def test_status_and_metrics_show_what_each_stage_engine_computed(det_cls, tmp_path):
    """Which engine of a cascade is the busy one: the stream's own (`engine_busy_s`) and each later
    stage's, in status and in /metrics (they were the first stage's only)."""
    from prometheus_client.parser import text_string_to_metric_families

    from lited.service.metrics import Metrics

    video = tmp_path / "text.avi"
    text_video(video, frames=60, fps=30)
    results: list = []
    s = Stream("ocr", f"file://{video}?realtime=1&loop=1", lambda: Model(load_bundle(det_cls), isolated=True),
               results.append, lambda e: None)
    s.start()
    try:
        deadline = time.monotonic() + 60
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = s.status()
        daemon = {"version": "t", "uptime_s": 1.0, "rss_mb": 1.0, "engines_rss_mb": 1.0, "peak_rss_mb": 1.0,
                  "models": {}, "streams": [status]}
        figures = {"requests": {}, "live_clients": 0, "event_clients": 0, "live": {}}
        text = Metrics(lambda: daemon, {}, lambda: figures).render()[0].decode()
    finally:
        s.stop()
    (cls,) = status["model"]["stages"]
    assert cls["name"] == "cls" and cls["engine_pid"] and 0 < cls["engine_busy_s"], cls
    samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
               for f in text_string_to_metric_families(text) for x in f.samples}
    assert samples[("lited_stream_stage_engine_busy_seconds_total", (("stage", "cls"), ("stream", "ocr")))] \
        == cls["engine_busy_s"]
    assert samples[("lited_stream_engine_busy_seconds_total", (("stream", "ocr"),))] == status["model"]["engine_busy_s"]


def test_a_stage_engine_that_cannot_restart_backs_off_says_so_and_comes_back(det_cls, tmp_path):
    """The stage's engine dies while its model file is away (an upgrade moving files): each fresh
    try fails. It was tried at every frame, two `engine` events and a log line a frame, and status
    never said so. Now the tries back off (0.5 s doubling), `engine_down` says it, results carry
    the first stage's fields only, and once the file is back the stage runs again."""
    video = tmp_path / "text.avi"
    text_video(video, frames=60, fps=30)
    bundle = load_bundle(det_cls)
    results, events = [], []
    s = Stream("ocr", f"file://{video}?realtime=1&loop=1", lambda: Model(bundle, isolated=True),
               results.append, events.append)
    s.start()
    model_file = det_cls / "cls_model_x86.nb"
    try:
        deadline = time.monotonic() + 60
        while len(results) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        (cls,) = s.status()["model"]["stages"]
        assert (cls["name"], cls["engine"]) == ("cls", "paddle_lite") and cls["engine_busy_s"] > 0, cls
        model_file.rename(tmp_path / "away.nb")
        os.kill(cls["engine_pid"], signal.SIGKILL)
        time.sleep(4)
        down = s.status()["engine_down"]
        (cls_down,) = s.status()["model"]["stages"]
        during = len(results)
        tries = [e["detail"] for e in events if e["event"] == "engine"]
        (tmp_path / "away.nb").rename(model_file)
        time.sleep(5)
        after = [r for r in results[during:] if r["detections"]]
        up = s.status()["engine_down"]
        (cls_up,) = s.status()["model"]["stages"]
    finally:
        s.stop()
    assert down and "stage cls" in down and "first stage's fields only" in down, down
    # status shows the stage's engine down (no pid), then a fresh one adding to the same busy time
    assert cls_down["engine_pid"] is None and cls_up["engine_pid"] not in (None, cls["engine_pid"]), (cls_down, cls_up)
    assert cls["engine_busy_s"] <= cls_down["engine_busy_s"] < cls_up["engine_busy_s"], (cls, cls_down, cls_up)
    assert 2 <= len(tries) <= 5, tries  # 0.5 + 1 + 2 s of backoff in 4 s, not one a frame
    assert all("restarting in" in t for t in tries), tries
    assert up is None and after and all("classes" in d for d in after[-1]["detections"]), (up, after[-1:])


@pytest.mark.slow
def test_the_demo_reads_the_scrolling_text(tmp_path):
    """`make demo`: the daemon reads the lines it scrolls by; character accuracy against what it drew."""
    report = tmp_path / "demo.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--report", str(report),
                           "--seconds", "150", "--frames", "3"], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(report.read_text())
    assert out["frames"] >= 1 and len(out["lines"]) >= 3, out
    assert out["accuracy"] >= 0.95, out
    printed = [line for line in proc.stdout.splitlines() if line.startswith("demo: frame ")]
    assert printed and any(pair["read"] in printed[0] for pair in out["lines"] if pair["read"])


def test_a_reload_refuses_a_stage_gone_or_classifying_into_other_labels(ocr_copy, tmp_path):
    """The daemon refuses a reload whose bundle has another task or labels; a cascade's orientation
    classifier relabelled (0/180 -> 0/90) or dropped went through, though apps read its classes on
    every detection."""
    from lited.bundle import load_bundle
    from lited.service.daemon import change_problem

    old = load_bundle(ocr_copy)
    relabelled = tmp_path / "relabelled"
    shutil.copytree(ocr_copy, relabelled)
    (relabelled / "cls_labels.txt").write_text("0\n90\n")
    reseal(relabelled)
    edit(relabelled, lambda m: m["stages"][0]["rotate"].update(label="90"))
    assert change_problem("ocr", old, load_bundle(relabelled)).startswith(
        f"model ocr: demo_ppocrv4 1.0.0 ({relabelled}) would replace demo_ppocrv4 1.0.0 ({ocr_copy}) with another "
        "cascade: stage cls with labels -180, +90;")
    dropped = tmp_path / "dropped"
    shutil.copytree(ocr_copy, dropped)
    edit(dropped, lambda m: m["stages"].pop(0))
    assert "another cascade: stage cls gone;" in change_problem("ocr", old, load_bundle(dropped))
    keys = tmp_path / "keys"  # a recognizer's keys are how it spells, not labels apps look up: a new one is fine
    shutil.copytree(ocr_copy, keys)
    (keys / "rec_labels.txt").write_text((ocr_copy / "rec_labels.txt").read_text().replace("a", "A", 1))
    reseal(keys)
    assert change_problem("ocr", old, load_bundle(keys)) is None


def test_a_plain_reload_goes_back_after_a_swap_that_added_a_stage(ocr_copy, tmp_path):
    """`reload --model NAME --bundle DIR` onto the same detector with a stage more is taken without
    --force (apps only get more fields). Going back was then refused ("stage cls gone"), so every
    plain reload and SIGHUP after it failed. The config's bundle comes back now, as config.md says."""
    from daemon_process import DaemonProcess
    from lited.client import ClientError

    det_only = tmp_path / "det_only"
    shutil.copytree(ocr_copy, det_only)
    edit(det_only, lambda m: m.pop("stages"))
    other = tmp_path / "det_only_too"
    shutil.copytree(det_only, other)
    d = DaemonProcess(tmp_path, {"models": {"ocr": str(det_only)}, "streams": []})
    d.start()
    try:
        with d.client(timeout=120) as client:
            assert client.reload(model="ocr", bundle=str(ocr_copy))["reloaded"] == ["ocr"]
            assert client.reload()["reloaded"] == ["ocr"]
            assert client.status()["models"]["ocr"]["bundle"] == str(det_only)
            client.reload(model="ocr", bundle=str(ocr_copy))
            with pytest.raises(ClientError, match="stage cls gone"):  # to a bundle not the config's: asked
                client.reload(model="ocr", bundle=str(other))
    finally:
        d.stop()
