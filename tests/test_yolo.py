"""The `yolo` decoder on a real model: FastestDet's grid head rewritten, inside
the graph, into the layouts of the YOLO family and PP-YOLOE (one tensor of
rows, channels last or first, with or without an objectness column; boxes and
scores apart). Each must find what the `grid` decoder finds on FastestDet's
own output: the same boxes, scores and labels. Also the layouts it refuses,
and the choices it cannot make alone, named at load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_bundle, need_shared, reseal
from lited.bundle import BundleError, load_bundle
from lited.decoders import make_decoder
from lited.engines import ENGINES
from lited.geometry import Geometry
from lited.model import Model

pytestmark = pytest.mark.skipif(not ENGINES.get("openvino").available(), reason="openvino not installed")
THRESHOLD = 0.3
IMAGES = ("chelsea", "coffee", "astronaut")


def _rewrite(onnx: Path, out: Path, layout: str) -> None:
    """FastestDet's `[1, 5+C, H, W]` as `layout`, the grid decoder's arithmetic done in the graph:
    class score obj^0.6 * cls^0.4, centre (cell + tanh(t)) * stride, size sigmoid(t) * input."""
    from lited.engines.openvino import import_openvino
    ov = import_openvino()
    import openvino.opset13 as ops

    model = ov.Core().read_model(str(onnx))
    (_, _, in_h, in_w) = model.inputs[0].get_shape()
    head = model.get_results()[0].input_value(0)
    (_, k, gh, gw) = head.get_shape()
    n = gh * gw
    rows = ops.reshape(head, ops.constant(np.array([1, k, n], np.int64)), False)

    def part(a: int, b: int):
        return ops.slice(rows, ops.constant(np.array([a], np.int64)), ops.constant(np.array([b], np.int64)),
                         ops.constant(np.array([1], np.int64)), ops.constant(np.array([1], np.int64)))

    def const(values) -> object:
        return ops.constant(np.asarray(values, np.float32).reshape(1, 1, -1))

    cell = np.arange(n)
    cx = ops.multiply(ops.add(const(cell % gw), ops.tanh(part(1, 2))), const([in_w / gw]))
    cy = ops.multiply(ops.add(const(cell // gw), ops.tanh(part(2, 3))), const([in_h / gh]))
    w = ops.multiply(ops.sigmoid(part(3, 4)), const([in_w]))
    h = ops.multiply(ops.sigmoid(part(4, 5)), const([in_h]))
    obj, cls = ops.power(part(0, 1), const([0.6])), ops.power(part(5, k), const([0.4]))
    last = ops.constant(np.array([0, 2, 1], np.int64))
    if layout == "v8":        # [1, 4 + C, N]
        outs = [ops.concat([cx, cy, w, h, ops.multiply(obj, cls)], 1)]
    elif layout == "v8_rows":  # [1, N, 4 + C]
        outs = [ops.transpose(ops.concat([cx, cy, w, h, ops.multiply(obj, cls)], 1), last)]
    elif layout == "v5":      # [1, N, 5 + C], boxes normalised
        boxes = [ops.divide(cx, const([in_w])), ops.divide(cy, const([in_h])),
                 ops.divide(w, const([in_w])), ops.divide(h, const([in_h]))]
        outs = [ops.transpose(ops.concat([*boxes, obj, cls], 1), last)]
    else:                     # PP-YOLOE: boxes [1, N, 4] x1y1x2y2, scores [1, C, N]
        half_w, half_h = ops.multiply(w, const([0.5])), ops.multiply(h, const([0.5]))
        corners = [ops.subtract(cx, half_w), ops.subtract(cy, half_h), ops.add(cx, half_w), ops.add(cy, half_h)]
        outs = [ops.transpose(ops.concat(corners, 1), last), ops.multiply(obj, cls)]
    ov.save_model(ov.Model(outs, list(model.get_parameters())), str(out), compress_to_fp16=False)


def _variant(base: Path, tmp: Path, layout: str, decoder: dict) -> Path:
    root = tmp / layout
    shutil.copytree(base, root)
    onnx = next(root.glob("*.onnx"))
    _rewrite(onnx, root / "yolo.xml", layout)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["schema"] = 2
    manifest["models"] = {"x86": [{"file": "yolo.xml", "params": {"file": "yolo.bin"}, "engines": ["openvino"]}]}
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


@pytest.mark.parametrize("layout", ["v8", "v8_rows", "v5", "ppyoloe"])
def test_every_layout_finds_what_the_grid_decoder_finds(fastestdet, expected, tmp_path, layout):
    """objectness, box format and orientation all found by shape and labels (auto); NMS across
    classes as the grid decoder's; v5 with normalised boxes."""
    import cv2
    decoder = {"type": "yolo", "score_threshold": THRESHOLD, "nms_iou": 0.45, "class_agnostic": True,
               **({"normalized": True} if layout == "v5" else {})}
    model = Model(load_bundle(_variant(fastestdet, tmp_path, layout, decoder)), engine="openvino")
    try:
        for name in IMAGES:
            _same(model.infer(cv2.imread(str(need_shared("images", f"{name}.png"))))["detections"], expected[name])
    finally:
        model.close()


def test_an_objectness_the_labels_cannot_tell_is_asked_for_at_load(fastestdet, tmp_path):
    """85 columns and 79 labels fit neither 4 + C nor 5 + C: refused naming the decoder, asking."""
    root = _variant(fastestdet, tmp_path, "v5", {"type": "yolo"})
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


def test_bad_choices_are_refused_by_name(fastestdet, tmp_path):
    root = _variant(fastestdet, tmp_path, "v8", {"type": "yolo", "objectness": "maybe", "box_format": "xywh"})
    with pytest.raises(BundleError) as err:
        load_bundle(root)
    message = str(err.value)
    assert "decoder.objectness" in message and "decoder.box_format" in message, message
