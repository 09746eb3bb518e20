"""The `yolo` decoder on a real model: FastestDet's grid head rewritten, inside
the graph, into the layouts of the YOLO family and PP-YOLOE (one tensor of
rows, channels last or first, with or without an objectness column; boxes and
scores apart). Each must find what the `grid` decoder finds on FastestDet's
own output: the same boxes, scores and labels. Also the layouts it refuses,
and the choices it cannot make alone, named at load."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, make_bundle, need_shared, reseal, shared_onnx
from test_build_sdk import TOOLS_VENV, _skip_or_fail, run_build_sdk, unzip_bundle
from lited.bundle import BundleError, load_bundle
from lited.decoders import make_decoder
from lited.engines import ENGINES
from lited.geometry import Geometry
from lited.model import Model

pytestmark = pytest.mark.skipif(not (ENGINES.get("openvino").available() and ENGINES.get("onnxruntime").available()),
                                reason="openvino or onnxruntime not installed")
THRESHOLD = 0.3
IMAGES = ("chelsea", "coffee", "astronaut")


LAYOUTS = ("v8", "v8_rows", "v5", "ppyoloe")
READS = {  # what each layout's decoder says it found (Model.decoder_reads, lited inspect)
    "v8": "one output [1, 84, 484] (channels first): box cxcywh in input pixels, no objectness (auto: by the 80 labels), 80 classes",
    "v8_rows": "one output [1, 484, 84] (channels last): box cxcywh in input pixels, no objectness (auto: by the 80 labels), 80 classes",
    "v5": "one output [1, 484, 85] (channels last): box cxcywh in shares of the input, objectness (auto: by the 80 labels), 80 classes",
    "ppyoloe": "boxes [1, 484, 4] (xyxy in input pixels), scores [1, 80, 484] (channels first): 80 classes",
}


@pytest.fixture(scope="module")
def yolo_onnx(tmp_path_factory) -> Path:
    """FastestDet in each layout, as ONNX (tests/build_yolo_onnx.py, run in the tools venv)."""
    python = TOOLS_VENV / "bin" / "python"
    if not python.is_file():
        _skip_or_fail(f"{TOOLS_VENV} is absent (make tools-venv)")
    out = tmp_path_factory.mktemp("yolo_onnx")
    proc = subprocess.run([str(python), str(ROOT / "tests" / "build_yolo_onnx.py"), "--src", str(shared_onnx("fastestdet")),
                           "--layouts", ",".join(LAYOUTS), "--out-dir", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def _variant(base: Path, models: Path, tmp: Path, layout: str, decoder: dict) -> Path:
    """FastestDet's bundle with the model in `layout` (ONNX, OpenVINO and onnxruntime) and `decoder`."""
    root = tmp / layout
    shutil.copytree(base, root)
    shutil.copyfile(models / f"{layout}.onnx", root / "yolo.onnx")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["schema"] = 2
    manifest["models"] = {"x86": [{"file": "yolo.onnx", "engines": ["openvino", "onnxruntime"]}]}
    manifest["decoder"] = decoder
    manifest.pop("golden", None)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return reseal(root)


@pytest.fixture(scope="module")
def fastestdet(tmp_path_factory) -> Path:
    return make_bundle("fastestdet", tmp_path_factory.mktemp("fastestdet"), engines=("openvino",))


@pytest.fixture(scope="module")
def expected(fastestdet) -> dict:
    """The grid decoder's detections on FastestDet's own output, per image."""
    bundle = load_bundle(fastestdet)
    bundle.decoder["score_threshold"] = THRESHOLD
    model = Model(bundle, engine="openvino")
    import cv2

    found = {name: model.infer(cv2.imread(str(need_shared("images", f"{name}.png"))))["detections"]
             for name in IMAGES}
    model.close()
    assert sum(len(d) for d in found.values()) >= 3, found  # something to compare
    return found


def _same(got: list, want: list) -> None:
    assert [d["label"] for d in got] == [d["label"] for d in want], "\n".join(map(str, [*got, "---", *want]))
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["score"], abs=1e-3), (g, w)
        assert np.allclose(g["box"], w["box"], atol=0.5), (g, w)


def _finds(model: Model, expected: dict) -> None:
    import cv2
    try:
        for name in IMAGES:
            _same(model.infer(cv2.imread(str(need_shared("images", f"{name}.png"))))["detections"], expected[name])
    finally:
        model.close()


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_finds_what_the_grid_decoder_finds(fastestdet, yolo_onnx, expected, tmp_path, layout, engine):
    """objectness, box format and orientation all found by shape and labels (auto); NMS across
    classes as the grid decoder's; v5 with normalised boxes."""
    decoder = {"type": "yolo", "score_threshold": THRESHOLD, "nms_iou": 0.45, "class_agnostic": True,
               **({"normalized": True} if layout == "v5" else {})}
    model = Model(load_bundle(_variant(fastestdet, yolo_onnx, tmp_path, layout, decoder)), engine=engine)
    assert model.decoder_reads == READS[layout]
    _finds(model, expected)


def test_inspect_shows_what_the_decoder_found(fastestdet, yolo_onnx, tmp_path):
    root = _variant(fastestdet, yolo_onnx, tmp_path, "ppyoloe", {"type": "yolo"})
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "inspect", "--bundle", str(root)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"  decoder reads: {READS['ppyoloe']}\n" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_build_sdk_makes_a_yolo_export_a_bundle_paddle_lite_runs(yolo_onnx, expected, tmp_path):
    """The way a team ships a YOLO export: ONNX and a fragment naming the decoder, through
    build_sdk (x2paddle, paddle_lite_opt, the golden self-test on every engine); Paddle Lite's
    .nb then finds what the grid decoder finds on FastestDet."""
    frag = tmp_path / "frag.json"
    manifest = json.loads((ROOT / "tests" / "bundles" / "fastestdet.json").read_text())
    frag.write_text(json.dumps({"name": "yolo_v8", "version": "1.0.0", "preprocess": manifest["preprocess"],
                                "decoder": {"type": "yolo", "score_threshold": THRESHOLD, "class_agnostic": True},
                                "labels": str(need_shared("models", "fastestdet", "labels.txt"))}))
    proc = run_build_sdk(TOOLS_VENV / "bin" / "python", "--model", yolo_onnx / "v8.onnx", "--config", frag,
                         "--targets", "x86", "--golden", need_shared("images", "coffee.png"),
                         "--out", tmp_path / "yolo.zip")
    assert proc.returncode == 0, proc.stderr
    assert "ok on onnxruntime, openvino, paddle_lite" in proc.stdout, proc.stdout
    assert f"build_sdk: decoder reads: {READS['v8']}\n" in proc.stdout, proc.stdout  # what auto decided, said
    assert "warning" not in proc.stderr, proc.stderr
    bundle = load_bundle(unzip_bundle(tmp_path / "yolo.zip", "yolo_v8", tmp_path / "out"))
    assert bundle.task == "detection"
    _finds(Model(bundle, engine="paddle_lite"), expected)


@pytest.mark.slow
def test_a_labels_file_a_line_short_and_an_empty_golden_are_said_at_build(yolo_onnx, tmp_path):
    """A YOLOv8 export with one label too few reads as objectness + 79 classes (auto): the
    build says what the decoder read, by the labels, and that a golden image the model finds
    nothing in makes a self-test that passes whatever the engines compute."""
    import cv2

    labels = need_shared("models", "fastestdet", "labels.txt").read_text().splitlines()[:-1]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((120, 160, 3), 128, np.uint8))
    frag = tmp_path / "frag.json"
    manifest = json.loads((ROOT / "tests" / "bundles" / "fastestdet.json").read_text())
    frag.write_text(json.dumps({"name": "yolo_v8", "version": "1.0.0", "preprocess": manifest["preprocess"],
                                "decoder": {"type": "yolo"}, "labels": str(tmp_path / "labels.txt")}))
    proc = run_build_sdk(TOOLS_VENV / "bin" / "python", "--model", yolo_onnx / "v8.onnx", "--config", frag,
                         "--targets", "x86", "--golden", grey, "--out", tmp_path / "yolo.zip")
    assert proc.returncode == 0, proc.stderr
    assert ("build_sdk: decoder reads: one output [1, 84, 484] (channels first): box cxcywh in input pixels, "
            "objectness (auto: by the 79 labels), 79 classes\n") in proc.stdout, proc.stdout
    assert "build_sdk: warning: grey.png: the model finds nothing in it" in proc.stderr, proc.stderr


def test_labels_are_counted_as_the_decoder_reads_the_outputs_at_the_input_size(fastestdet, yolo_onnx, tmp_path):
    """A YOLO table [1, 84, 484] read as a GFL head: at the model's 352x352 input it is 484
    anchors of 52 classes and 32 box bins, which is what decode reads; the labels were counted
    against 452 "classes" of a split found without the input size, and blamed. Counted as
    decoded, 80 labels pass, and inspect says 28 are never read (a decoder that reads the
    outputs as something else finds nothing to refuse in their shapes)."""
    root = _variant(fastestdet, yolo_onnx, tmp_path, "v8", {"type": "gfl"})
    model = Model(load_bundle(root), engine="openvino")
    model.close()
    assert model.decoder_classes == 52
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "inspect", "--bundle", str(root), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert "labels.txt: 80 labels for 52 classes: the last 28 are never read (is it this model's labels file?)" \
        in json.loads(proc.stdout)["warnings"], proc.stdout + proc.stderr


def test_an_objectness_the_labels_cannot_tell_is_asked_for_at_load(fastestdet, yolo_onnx, tmp_path):
    """85 columns and 79 labels fit neither 4 + C nor 5 + C: refused naming the decoder, asking."""
    root = _variant(fastestdet, yolo_onnx, tmp_path, "v5", {"type": "yolo"})
    labels = (root / "labels.txt").read_text().splitlines()
    (root / "labels.txt").write_text("\n".join(labels[:-1]) + "\n")
    with pytest.raises(BundleError) as err:
        Model(load_bundle(reseal(root)), engine="openvino")
    message = str(err.value)
    assert "decoder: yolo" in message and "objectness" in message, message


def test_objectness_given_decodes_without_the_labels_deciding():
    """Synthetic rows: objectness yes reads column 4 as objectness, no as a class."""
    table = np.zeros((1, 50, 7), np.float32)  # 50 rows: box, obj, 2 classes
    table[0, 3] = [40, 40, 20, 20, 0.9, 0.1, 0.8]
    geom = Geometry(100, 100, 100, 100)
    yes = make_decoder({"type": "yolo", "objectness": "yes"}, ["a", "b"]).decode([table], geom)["detections"]
    assert [(d["label"], round(d["score"], 3), d["box"]) for d in yes] == [("b", 0.72, [30, 30, 50, 50])]
    no = make_decoder({"type": "yolo", "objectness": "no"}, ["a", "b", "c"]).decode([table], geom)["detections"]
    assert [(d["label"], round(d["score"], 3)) for d in no] == [("a", 0.9)]


@pytest.mark.parametrize("shapes, why", [
    ([(1, 8400, 4)], "no rows (the longer axis) of 4 box columns"),
    ([(1, 3, 4, 5)], "expected one"),
    ([(1, 8400, 4), (1, 80, 100)], "no boxes [N, 4] with scores of N rows"),
])
def test_layouts_it_cannot_read_are_named(shapes, why):
    decoder = make_decoder({"type": "yolo", "objectness": "no"}, [])
    problem = decoder.layout_problem([np.zeros(s, np.float32) for s in shapes])
    assert problem and why in problem, problem


def test_bad_choices_are_refused_by_name(fastestdet, yolo_onnx, tmp_path):
    root = _variant(fastestdet, yolo_onnx, tmp_path, "v8", {"type": "yolo", "objectness": "maybe", "box_format": "xywh"})
    with pytest.raises(BundleError) as err:
        load_bundle(root)
    message = str(err.value)
    assert "decoder.objectness" in message and "decoder.box_format" in message, message


@pytest.mark.slow
def test_a_ppyoloe_without_nms_is_refused_before_optimising_then_built_with_the_yolo_decoder(
        yolo_onnx, expected, tmp_path):
    """A PaddleDetection yml maps to `boxes` (its export with NMS); a PP-YOLOE exported without NMS
    is told apart only by its outputs: refused right after conversion, naming the config and the
    decoder that fits, and built with the second --config build_sdk.md shows."""
    yml = tmp_path / "infer_cfg.yml"
    yml.write_text("arch: YOLO\ndraw_threshold: 0.3\nPreprocess:\n"
                   "- {type: Resize, keep_ratio: false, target_size: [352, 352], interp: 3}\n"
                   "- {type: NormalizeImage, mean: [0, 0, 0], std: [1, 1, 1], is_scale: true}\n"
                   "- {type: Permute, to_bgr: true}\n"  # FastestDet's order (BGR, stretch, area, 1/255)
                   f"label_list: {json.dumps(need_shared('models', 'fastestdet', 'labels.txt').read_text().splitlines())}\n")
    python = TOOLS_VENV / "bin" / "python"
    args = ["--model", yolo_onnx / "ppyoloe.onnx", "--config", yml, "--targets", "x86",
            "--golden", need_shared("images", "coffee.png"), "--out", tmp_path / "ppyoloe.zip"]
    proc = run_build_sdk(python, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"build_sdk: infer_cfg.yml: decoder: boxes: outputs [[1, 484, 4], [1, 80, 484]]: the first is not [N, 6] "
        "(class, score, x1, y1, x2, y2); they fit the yolo decoder (docs/bundle.md)"), proc.stderr
    assert "paddle_lite_opt" not in proc.stdout and not (tmp_path / "ppyoloe.zip").exists()
    nms = tmp_path / "nms.json"
    nms.write_text(json.dumps({"decoder": {"type": "yolo", "multi_label": True, "nms_iou": 0.7, "nms_top_k": 1000,
                                           "top_k": 300}}))
    proc = run_build_sdk(python, *args, "--config", nms)
    assert proc.returncode == 0, proc.stderr
    bundle = load_bundle(unzip_bundle(tmp_path / "ppyoloe.zip", "ppyoloe", tmp_path / "out"))
    assert bundle.decoder["type"] == "yolo" and bundle.decoder["score_threshold"] == 0.3
    model = Model(bundle, engine="paddle_lite")
    try:  # multi-label, per-class NMS: at least every box the grid decoder finds, each of its labels
        import cv2
        got = model.infer(cv2.imread(str(need_shared("images", "coffee.png"))))["detections"]
        assert {d["label"] for d in expected["coffee"]} <= {d["label"] for d in got}, got
    finally:
        model.close()
