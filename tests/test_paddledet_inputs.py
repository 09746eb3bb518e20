"""A PaddleDetection-style export end to end: a tiny real Paddle model with
the `im_shape`, `image`, `scale_factor` inputs, built here, converted by
tools/build_sdk.py and run by `lited infer`.

The model's boxes are fractions of `im_shape` (so a missing or swapped
im_shape moves them), divided by `scale_factor` as PaddleDetection does (so
a real scale factor would map them twice), and scaled scores by the image
mean (so the image is really read). Its count output hides a third, best
scoring row. Only a runtime that feeds both extra inputs as documented and
honours the count finds the two boxes below, in the source image's pixels.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import need_shared
from test_build_sdk import run_build_sdk, tools_python, unzip_bundle  # noqa: F401 (tools_python: a fixture)

IN_H, IN_W = 320, 480  # not square: a swapped im_shape shows
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# class, score, x1, y1, x2, y2 in input pixels; the count (2) hides the last row
ROWS = [[0, 0.9, 40, 60, 200, 220], [1, 0.8, 10, 10, 50, 50], [2, 0.99, 0, 0, 10, 10]]
LABELS = ["cup", "saucer", "spoon"]

# Runs in the tools venv (paddlepaddle 2.6.2): argv = out dir, rows, input height, width.
MAKE_MODEL = """
import json, sys
import numpy as np
import paddle

out, rows, in_h, in_w = sys.argv[1], np.array(json.loads(sys.argv[2]), np.float32), *map(int, sys.argv[3:5])
table = np.concatenate([rows[:, :2], rows[:, 2:] / [in_w, in_h, in_w, in_h]], axis=1).astype(np.float32)
paddle.enable_static()
main, startup = paddle.static.Program(), paddle.static.Program()
with paddle.static.program_guard(main, startup):
    im_shape = paddle.static.data("im_shape", [-1, 2], "float32")
    image = paddle.static.data("image", [-1, 3, -1, -1], "float32")
    scale_factor = paddle.static.data("scale_factor", [-1, 2], "float32")
    rows = paddle.static.create_parameter(list(table.shape), "float32", name="rows",
                                          default_initializer=paddle.nn.initializer.Assign(table))
    gain = paddle.reshape(paddle.nn.functional.sigmoid(paddle.mean(image, axis=[1, 2, 3])), [-1, 1])
    h, w = paddle.split(im_shape, 2, axis=-1)
    sy, sx = paddle.split(scale_factor, 2, axis=-1)
    boxes = rows[:, 2:] * paddle.concat([w, h, w, h], axis=-1) / paddle.concat([sx, sy, sx, sy], axis=-1)
    bbox = paddle.concat([rows[:, 0:1], rows[:, 1:2] * gain, boxes], axis=-1)
    bbox_num = paddle.shape(bbox)[0:1] - 1
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(startup)
paddle.static.save_inference_model(out + "/model", [im_shape, image, scale_factor], [bbox, bbox_num], exe,
                                   program=main)
"""

INFER_CFG = f"""mode: paddle
arch: YOLO
draw_threshold: 0.3
Preprocess:
- {{type: Resize, keep_ratio: false, target_size: [{IN_H}, {IN_W}], interp: 2}}
- {{type: NormalizeImage, is_scale: true, mean: {MEAN}, std: {STD}}}
- {{type: Permute}}
label_list: {json.dumps(LABELS)}
"""


def lited_infer(bundle: Path, image: Path) -> list:
    """`lited infer --json` as a user runs it: the detections."""
    proc = subprocess.run([sys.executable, "-m", "lited.cli", "infer", "--bundle", str(bundle), "--json", str(image)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])["detections"]


def image_gain(image: Path) -> float:
    """sigmoid(mean) of the model input, computed here with OpenCV, not with lited's preprocessing."""
    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    x = cv2.resize(rgb, (IN_W, IN_H), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    return float(1 / (1 + np.exp(-((x - MEAN) / STD).mean())))


def expected_boxes(src_w: int, src_h: int) -> list:
    """The two counted rows, input pixels scaled to the source image's."""
    sx, sy = src_w / IN_W, src_h / IN_H
    return [[r[2] * sx, r[3] * sy, r[4] * sx, r[5] * sy] for r in ROWS[:2]]


@pytest.mark.slow
def test_paddledet_export_is_fed_im_shape_and_unit_scale_factor(
        tools_python: Path, tmp_path: Path) -> None:  # noqa: F811 (the fixture imported above)
    from lited.bundle import load_bundle

    coffee = need_shared("images", "coffee.png")  # 600x400: neither the input's size nor its aspect
    model = tmp_path / "ppdet_tiny"
    model.mkdir()
    made = subprocess.run([str(tools_python), "-c", MAKE_MODEL, str(model), json.dumps(ROWS), str(IN_H), str(IN_W)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "GLOG_minloglevel": "2"})
    assert made.returncode == 0, made.stderr
    cfg = tmp_path / "infer_cfg.yml"
    cfg.write_text(INFER_CFG)
    out = tmp_path / "ppdet_tiny.zip"
    proc = run_build_sdk(tools_python, "--model", model, "--config", cfg, "--targets", "x86", "--name", "ppdet_tiny",
                         "--golden", coffee, "--out", out)
    assert proc.returncode == 0, proc.stderr

    root = unzip_bundle(out, "ppdet_tiny", tmp_path / "unzipped")
    bundle = load_bundle(root)
    assert [(i["name"], i["shape"], i.get("fill")) for i in bundle.inputs] == [
        ("im_shape", [1, 2], "im_shape"), ("image", [1, 3, IN_H, IN_W], None),
        ("scale_factor", [1, 2], "scale_factor")]
    found = lited_infer(root, coffee)
    assert [d["label"] for d in found] == ["cup", "saucer"]  # "spoon" is past the count
    for d, box, row in zip(found, expected_boxes(600, 400), ROWS):
        assert d["box"] == pytest.approx(box, abs=0.1)
        assert d["score"] == pytest.approx(row[1] * image_gain(coffee), abs=2e-3)
    assert bundle.golden["expected"]["detections"] == found

    # A dynamic input: im_shape must be the size this image was resized to (320x224), not the manifest's.
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["inputs"][1]["shape"] = [1, 3, -1, -1]
    manifest["preprocess"]["resize"] = {"mode": "keep_ratio", "interpolation": "cubic", "max_side": 320,
                                        "multiple": 32}
    (root / "manifest.json").write_text(json.dumps(manifest))
    found = lited_infer(root, coffee)
    assert [d["label"] for d in found] == ["cup", "saucer"]
    for d, box in zip(found, expected_boxes(600, 400)):
        assert d["box"] == pytest.approx(box, abs=0.1)
