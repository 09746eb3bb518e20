"""Decoders on real model outputs, checked against upstream-style decodes.

Each real model runs once (module-scoped fixtures) through Paddle Lite on a
real image with the preprocessing its model card gives; the decoder's result
must match a plain reference decode written the way the model's own project
writes it, and make semantic sense (one face, a cat, a cup, text lines).
Small synthetic tests cover NMS and the `boxes` decoder, which has no real
model here.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from conftest import need_shared

from lited.decoders import DECODERS, make_decoder
from lited.decoders.nms import OPENCV_UP_TO, candidates, nms, nms_numpy, nms_opencv, to_detections
from lited.geometry import Geometry

# --------------------------------------------------------------------------
# running the real models


def model_dir(name):
    return need_shared("models", name)


def read_labels(name):
    return model_dir(name).joinpath("labels.txt").read_text().splitlines()


def read_image(name):
    return cv2.imread(str(need_shared("images", name)), cv2.IMREAD_COLOR)


def load_predictor(name):
    from paddlelite.lite import MobileConfig, create_paddle_predictor

    config = MobileConfig()
    config.set_model_from_file(str(model_dir(name) / "model_x86.nb"))
    return create_paddle_predictor(config)


def run(predictor, x):
    """Raw outputs by index, copied: Paddle Lite reuses them on the next run.
    Paddle Lite x86 gives wrong maps when one predictor sees a second input
    shape, so each predictor here only ever gets one shape."""
    predictor.get_input(0).from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    predictor.run()
    return [predictor.get_output(i).numpy().copy()
            for i in range(len(predictor.get_output_names()))]


def stretch_geometry(img, in_w, in_h):
    h, w = img.shape[:2]
    return Geometry(w, h, in_w, in_h, in_w / w, in_h / h)


def to_nchw(img):
    return img.transpose(2, 0, 1)[None]


@pytest.fixture(scope="module")
def ultraface():
    img = read_image("astronaut.png")
    x = (cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (320, 240)).astype(np.float32) - 127) / 128
    return run(load_predictor("ultraface"), to_nchw(x)), stretch_geometry(img, 320, 240), read_labels("ultraface")


@pytest.fixture(scope="module")
def fastestdet():
    predictor = load_predictor("fastestdet")
    runs = {}
    for name in ("chelsea.png", "coffee.png"):
        img = read_image(name)
        x = cv2.resize(img, (352, 352), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        runs[name] = (run(predictor, to_nchw(x)), stretch_geometry(img, 352, 352))
    return runs, read_labels("fastestdet")


@pytest.fixture(scope="module")
def mobilenetv2():
    img = cv2.cvtColor(read_image("chelsea.png"), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    s = 256 / min(h, w)
    rw, rh = round(w * s), round(h * s)
    x0, y0 = (rw - 224) // 2, (rh - 224) // 2
    crop = cv2.resize(img, (rw, rh))[y0:y0 + 224, x0:x0 + 224].astype(np.float32) / 255
    x = (crop - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    geom = Geometry(w, h, 224, 224, s, s, -x0, -y0)
    return run(load_predictor("mobilenetv2"), to_nchw(x)), geom, read_labels("mobilenetv2")


def cls_input(line):
    """Height 48 keeping ratio (width at most 192), zero pad right."""
    h, w = line.shape[:2]
    rw = min(192, math.ceil(48 * w / h))
    x = np.zeros((48, 192, 3), np.float32)
    x[:, :rw] = (cv2.resize(line, (rw, 48)).astype(np.float32) / 255 - 0.5) / 0.5
    return to_nchw(x)


@pytest.fixture(scope="module")
def ppocr_cls():
    line = read_image("page.png")[8:36, 5:295]  # the heading "Region-based segmentation"
    predictor = load_predictor("ppocr_cls")
    geom = stretch_geometry(line, 192, 48)
    upright = run(predictor, cls_input(line))
    flipped = run(predictor, cls_input(cv2.rotate(line, cv2.ROTATE_180)))
    return upright, flipped, geom, read_labels("ppocr_cls")


@pytest.fixture(scope="module")
def ppocrv4_det():
    img = read_image("page.png")
    h, w = img.shape[:2]
    r = 960 / max(h, w)
    in_h, in_w = (max(32, round(v * r / 32) * 32) for v in (h, w))
    x = (cv2.resize(img, (in_w, in_h)).astype(np.float32) / 255 - 0.5) / 0.5
    return run(load_predictor("ppocrv4_det"), to_nchw(x)), stretch_geometry(img, in_w, in_h)


# --------------------------------------------------------------------------
# upstream-style reference decodes


def ref_ultraface(width, height, confidences, boxes, prob_threshold, iou_threshold, top_k=-1):
    """Linzaer/Ultra-Light-Fast-Generic-Face-Detector-1MB run_ultra_face_onnx.predict."""

    def area_of(left_top, right_bottom):
        hw = np.clip(right_bottom - left_top, 0.0, None)
        return hw[..., 0] * hw[..., 1]

    def iou_of(boxes0, boxes1, eps=1e-5):
        overlap = area_of(np.maximum(boxes0[..., :2], boxes1[..., :2]),
                          np.minimum(boxes0[..., 2:], boxes1[..., 2:]))
        area0 = area_of(boxes0[..., :2], boxes0[..., 2:])
        area1 = area_of(boxes1[..., :2], boxes1[..., 2:])
        return overlap / (area0 + area1 - overlap + eps)

    def hard_nms(box_scores, iou_threshold, top_k=-1, candidate_size=200):
        scores, boxes = box_scores[:, -1], box_scores[:, :-1]
        picked = []
        indexes = np.argsort(scores)[-candidate_size:]
        while len(indexes) > 0:
            current = indexes[-1]
            picked.append(current)
            if 0 < top_k == len(picked) or len(indexes) == 1:
                break
            current_box = boxes[current, :]
            indexes = indexes[:-1]
            iou = iou_of(boxes[indexes, :], np.expand_dims(current_box, axis=0))
            indexes = indexes[iou <= iou_threshold]
        return box_scores[picked, :]

    boxes, confidences = boxes[0], confidences[0]
    picked_box_probs, picked_labels = [], []
    for class_index in range(1, confidences.shape[1]):
        probs = confidences[:, class_index]
        mask = probs > prob_threshold
        probs = probs[mask]
        if probs.shape[0] == 0:
            continue
        box_probs = np.concatenate([boxes[mask, :], probs.reshape(-1, 1)], axis=1)
        box_probs = hard_nms(box_probs, iou_threshold=iou_threshold, top_k=top_k)
        picked_box_probs.append(box_probs)
        picked_labels.extend([class_index] * box_probs.shape[0])
    if not picked_box_probs:
        return np.zeros((0, 4), np.int32), np.array([]), np.array([])
    picked = np.concatenate(picked_box_probs)
    picked[:, 0] *= width
    picked[:, 1] *= height
    picked[:, 2] *= width
    picked[:, 3] *= height
    return picked[:, :4].astype(np.int32), np.array(picked_labels), picked[:, 4]


def ref_fastestdet(feature_map, W, H, thresh, nms_thresh):
    """dog-qiuqiu/FastestDet example/onnx-runtime/runtime.py detection + nms."""

    def sigmoid(x):
        return 1. / (1 + np.exp(-x))

    def tanh(x):
        return 2. / (1 + np.exp(-2 * x)) - 1

    def nms_(dets, thresh):
        x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
        areas = (x2 - x1 + 1) * (y2 - y1 + 1)
        order = scores.argsort()[::-1]
        keep = []
        while order.size > 0:
            i = order[0]
            keep.append(i)
            xx1 = np.maximum(x1[i], x1[order[1:]])
            yy1 = np.maximum(y1[i], y1[order[1:]])
            xx2 = np.minimum(x2[i], x2[order[1:]])
            yy2 = np.minimum(y2[i], y2[order[1:]])
            inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
            ovr = inter / (areas[i] + areas[order[1:]] - inter)
            order = order[np.where(ovr <= thresh)[0] + 1]
        return [dets[i].tolist() for i in keep]

    pred = []
    feature_map = feature_map[0].transpose(1, 2, 0)
    fh, fw = feature_map.shape[:2]
    for h in range(fh):
        for w in range(fw):
            data = feature_map[h][w]
            obj_score, cls_score = data[0], data[5:].max()
            score = (obj_score ** 0.6) * (cls_score ** 0.4)
            if score > thresh:
                cls_index = np.argmax(data[5:])
                x_offset, y_offset = tanh(data[1]), tanh(data[2])
                box_width, box_height = sigmoid(data[3]), sigmoid(data[4])
                box_cx = (w + x_offset) / fw
                box_cy = (h + y_offset) / fh
                x1, y1 = box_cx - 0.5 * box_width, box_cy - 0.5 * box_height
                x2, y2 = box_cx + 0.5 * box_width, box_cy + 0.5 * box_height
                x1, y1, x2, y2 = int(x1 * W), int(y1 * H), int(x2 * W), int(y2 * H)
                pred.append([x1, y1, x2, y2, score, cls_index])
    return nms_(np.array(pred), nms_thresh) if pred else []


def ref_db(pred, dest_width, dest_height, thresh=0.3, box_thresh=0.5, max_candidates=1000,
           unclip_ratio=1.6, min_size=3):
    """PaddleOCR ppocr/postprocess/db_postprocess.py DBPostProcess, score_mode
    "fast", no dilation; shapely's Polygon area/length by the shoelace formula."""
    pyclipper = pytest.importorskip("pyclipper")

    def get_mini_boxes(contour):
        bounding_box = cv2.minAreaRect(contour)
        points = sorted(list(cv2.boxPoints(bounding_box)), key=lambda x: x[0])
        if points[1][1] > points[0][1]:
            index_1, index_4 = 0, 1
        else:
            index_1, index_4 = 1, 0
        if points[3][1] > points[2][1]:
            index_2, index_3 = 2, 3
        else:
            index_2, index_3 = 3, 2
        box = [points[index_1], points[index_2], points[index_3], points[index_4]]
        return box, min(bounding_box[1])

    def box_score_fast(bitmap, _box):
        h, w = bitmap.shape[:2]
        box = _box.copy()
        xmin = np.clip(np.floor(box[:, 0].min()).astype("int32"), 0, w - 1)
        xmax = np.clip(np.ceil(box[:, 0].max()).astype("int32"), 0, w - 1)
        ymin = np.clip(np.floor(box[:, 1].min()).astype("int32"), 0, h - 1)
        ymax = np.clip(np.ceil(box[:, 1].max()).astype("int32"), 0, h - 1)
        mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
        box[:, 0] = box[:, 0] - xmin
        box[:, 1] = box[:, 1] - ymin
        cv2.fillPoly(mask, box.reshape(1, -1, 2).astype("int32"), 1)
        return cv2.mean(bitmap[ymin:ymax + 1, xmin:xmax + 1], mask)[0]

    def unclip(box, unclip_ratio):
        x, y = box[:, 0].astype(np.float64), box[:, 1].astype(np.float64)
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        length = np.sum(np.hypot(x - np.roll(x, 1), y - np.roll(y, 1)))
        distance = area * unclip_ratio / length
        offset = pyclipper.PyclipperOffset()
        offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        return np.array(offset.Execute(distance))

    bitmap = pred > thresh
    height, width = bitmap.shape
    contours, _ = cv2.findContours((bitmap * 255).astype(np.uint8), cv2.RETR_LIST,
                                   cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[:max_candidates]:
        points, sside = get_mini_boxes(contour)
        if sside < min_size:
            continue
        points = np.array(points)
        score = box_score_fast(pred, points.reshape(-1, 2))
        if box_thresh > score:
            continue
        box = unclip(points, unclip_ratio).reshape(-1, 1, 2)
        box, sside = get_mini_boxes(box)
        if sside < min_size + 2:
            continue
        box = np.array(box)
        box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_width), 0, dest_width)
        box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_height), 0, dest_height)
        boxes.append(box.astype("int32"))
        scores.append(score)
    return boxes, scores


# --------------------------------------------------------------------------
# helpers for the checks


def check_contract(result):
    """Both keys, plain Python types, boxes ordered and finite."""
    assert set(result) >= {"detections", "classes"}
    for det in result["detections"]:
        assert type(det["label"]) is str and type(det["score"]) is float
        assert len(det["box"]) == 4 and all(type(v) is float for v in det["box"])
        x1, y1, x2, y2 = det["box"]
        assert x1 <= x2 and y1 <= y2
    for cls in result["classes"]:
        assert type(cls["label"]) is str and type(cls["score"]) is float


def decode_unchanged(decoder, outputs, geom):
    """Decode, asserting the model's outputs are left as they were."""
    before = [o.copy() for o in outputs]
    result = decoder.decode(outputs, geom)
    for a, b in zip(before, outputs):
        np.testing.assert_array_equal(a, b)
    check_contract(result)
    return result


def inside(box, geom):
    x1, y1, x2, y2 = box
    return 0 <= x1 < x2 <= geom.src_w and 0 <= y1 < y2 <= geom.src_h


# --------------------------------------------------------------------------
# real models


def test_priorbox_ultraface_one_face_matches_upstream(ultraface):
    outputs, geom, labels = ultraface
    dec = make_decoder({"type": "priorbox", "score_threshold": 0.7, "nms_iou": 0.3}, labels)
    dets = decode_unchanged(dec, outputs, geom)["detections"]

    assert len(dets) == 1
    face = dets[0]
    assert face["label"] == "face" and face["score"] > 0.9
    assert inside(face["box"], geom)
    x1, y1, x2, y2 = face["box"]
    assert 40 < x2 - x1 < 250 and (y1 + y2) / 2 < geom.src_h / 2  # a head, in the upper half

    ref_boxes, ref_labels, ref_probs = ref_ultraface(geom.src_w, geom.src_h, outputs[0], outputs[1], 0.7, 0.3)
    assert [labels[i] for i in ref_labels] == [d["label"] for d in dets]
    np.testing.assert_allclose([d["score"] for d in dets], ref_probs, rtol=1e-6)
    np.testing.assert_allclose([d["box"] for d in dets], ref_boxes, atol=1.01)  # upstream truncates to int


def test_priorbox_takes_its_outputs_in_either_order(ultraface):
    """A model listing its boxes before its scores decodes the same (the one of 4 columns is the
    boxes); it decoded boxes from scores, or blamed the labels."""
    outputs, geom, labels = ultraface
    dec = make_decoder({"type": "priorbox"}, labels)
    assert dec.layout_problem(list(outputs)) is None and dec.layout_problem(list(outputs)[::-1]) is None
    assert dec.num_classes(list(outputs)[::-1]) == 2
    assert decode_unchanged(dec, list(outputs)[::-1], geom) == decode_unchanged(dec, list(outputs), geom)


@pytest.mark.parametrize("kind, outputs, why", [
    ("grid", [(1, 64, 8)], "outputs [[1, 64, 8]]: the first is not [1, 5+C, H, W]"),
    ("boxes", [(1, 64, 8)], "outputs [[1, 64, 8]]: the first is not [N, 6] (class, score, x1, y1, x2, y2)"),
    ("priorbox", [(1, 64, 8)], "outputs [[1, 64, 8]]: expected scores [1, N, C] and boxes [1, N, 4]"),
    ("priorbox", [(1, 64, 3), (1, 32, 4)], "expected scores [1, N, C] and boxes [1, N, 4]"),
    ("ctc", [(6, 2)], "outputs [[6, 2]]: the first is not [N, T, K] (K: the blank, the keys, the space)"),
    ("ctc", [(1, 40, 2)], "outputs [[1, 40, 2]]: the first is not [N, T, K] (K: the blank, the keys, the space)"),
    # FastestDet's grid under db_text: numpy's "cannot reshape array of size 41140 into shape (22,22)" before
    ("db_text", [(1, 85, 22, 22)], "outputs [[1, 85, 22, 22]]: the first is not a probability map [1, 1, H, W]"),
])
def test_outputs_of_another_layout_are_named(kind, outputs, why):
    dec = make_decoder({"type": kind}, [])
    assert dec.layout_problem([np.zeros(s, np.float32) for s in outputs]).endswith(why)
    fits = {"grid": [(1, 8, 10, 10)], "boxes": [(64, 6), (1,)], "priorbox": [(1, 64, 3), (1, 64, 4)],
            "ctc": [(1, 40, 3)], "db_text": [(1, 1, 32, 64)]}[kind]
    assert dec.layout_problem([np.zeros(s, np.float32) for s in fits]) is None


@pytest.mark.parametrize("image, expected", [("chelsea.png", "cat"), ("coffee.png", "cup")])
def test_grid_fastestdet_matches_upstream(fastestdet, image, expected):
    runs, labels = fastestdet
    outputs, geom = runs[image]
    dec = make_decoder({"type": "grid", "score_threshold": 0.65, "nms_iou": 0.45}, labels)
    dets = decode_unchanged(dec, outputs, geom)["detections"]

    assert expected in [d["label"] for d in dets]
    assert all(inside(d["box"], geom) for d in dets)

    ref = ref_fastestdet(outputs[0], geom.src_w, geom.src_h, 0.65, 0.45)
    assert [labels[int(r[5])] for r in ref] == [d["label"] for d in dets]
    np.testing.assert_allclose([d["score"] for d in dets], [r[4] for r in ref], rtol=1e-5)
    ref_boxes = np.array([r[:4] for r in ref], dtype=np.float64).reshape(-1, 4)
    ref_boxes[:, 0::2] = ref_boxes[:, 0::2].clip(0, geom.src_w)
    ref_boxes[:, 1::2] = ref_boxes[:, 1::2].clip(0, geom.src_h)
    np.testing.assert_allclose(np.array([d["box"] for d in dets]).reshape(-1, 4), ref_boxes, atol=1.01)


def test_fastestdet_outputs_are_already_activated(fastestdet):
    """The decode relies on this: obj is a sigmoid and the class scores a
    softmax inside the graph, so the decoder must not apply them again."""
    runs, _ = fastestdet
    grid = runs["chelsea.png"][0][0][0]
    assert 0 <= grid[0].min() and grid[0].max() <= 1
    np.testing.assert_allclose(grid[5:].sum(axis=0), 1, atol=1e-4)
    assert grid[3:5].min() < 0 or grid[3:5].max() > 1  # tw, th are raw


def test_classification_mobilenetv2_cat(mobilenetv2):
    outputs, geom, labels = mobilenetv2
    dec = make_decoder({"type": "classification", "top_k": 5}, labels)
    classes = decode_unchanged(dec, outputs, geom)["classes"]

    assert classes[0]["label"] in labels[281:286]  # tabby .. Egyptian cat
    logits = outputs[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs)[:5]
    assert [c["label"] for c in classes] == [labels[i] for i in top]
    np.testing.assert_allclose([c["score"] for c in classes], probs[top], rtol=1e-5)


def test_classification_ppocr_cls_orientation(ppocr_cls):
    upright, flipped, geom, labels = ppocr_cls
    assert labels == ["0", "180"]
    dec = make_decoder({"type": "classification", "softmax": False, "top_k": 5}, labels)
    for outputs, expected in ((upright, "0"), (flipped, "180")):
        classes = decode_unchanged(dec, outputs, geom)["classes"]
        assert sorted(c["label"] for c in classes) == ["0", "180"]
        assert classes[0]["label"] == expected and classes[0]["score"] > 0.9
        np.testing.assert_allclose(sum(c["score"] for c in classes), 1, atol=1e-4)
        np.testing.assert_allclose([c["score"] for c in classes], np.sort(outputs[0][0])[::-1], rtol=1e-6)


def test_db_text_ppocrv4_det_finds_the_lines(ppocrv4_det):
    outputs, geom = ppocrv4_det
    dec = make_decoder({"type": "db_text"}, None)
    dets = decode_unchanged(dec, outputs, geom)["detections"]

    # the page has a heading, 5 text lines and a code line; one curved line
    # scores just under box_thresh 0.5 (PaddleOCR's default drops it too)
    assert 6 <= len(dets) <= 8
    for d in dets:
        assert d["label"] == "text" and 0.5 <= d["score"] <= 1
        assert inside(d["box"], geom)
        x1, y1, x2, y2 = d["box"]
        assert x2 - x1 > 3 * (y2 - y1)  # a line, not a blob
        poly = np.array(d["polygon"])
        assert poly.shape == (4, 2)
        np.testing.assert_allclose(poly.min(axis=0), [x1, y1], atol=1e-4)
        np.testing.assert_allclose(poly.max(axis=0), [x2, y2], atol=1e-4)
    heading = min(dets, key=lambda d: d["box"][1])
    assert heading["box"][3] < 40 and heading["score"] > 0.8


def test_db_text_matches_paddleocr_dbpostprocess(ppocrv4_det):
    outputs, geom = ppocrv4_det
    dets = make_decoder({"type": "db_text"}, None).decode(outputs, geom)["detections"]
    ref_boxes, ref_scores = ref_db(outputs[0][0, 0], geom.src_w, geom.src_h)
    np.testing.assert_allclose([d["score"] for d in dets], ref_scores, rtol=1e-6)
    # pyclipper grows an integer polygon with arc steps; the closed form is exact
    np.testing.assert_allclose([d["polygon"] for d in dets], np.array(ref_boxes), atol=1.5)


def test_db_text_parameters_change_the_result(ppocrv4_det):
    outputs, geom = ppocrv4_det
    default = make_decoder({"type": "db_text"}, None).decode(outputs, geom)["detections"]
    lenient = make_decoder({"type": "db_text", "box_thresh": 0.3}, None).decode(outputs, geom)["detections"]
    capped = make_decoder({"type": "db_text", "max_candidates": 2}, None).decode(outputs, geom)["detections"]
    tight = make_decoder({"type": "db_text", "unclip_ratio": 1.0}, None).decode(outputs, geom)["detections"]
    assert len(lenient) > len(default) and len(capped) <= 2
    assert len(tight) == len(default)
    for t, d in zip(tight, default):
        assert t["box"][3] - t["box"][1] < d["box"][3] - d["box"][1]


# --------------------------------------------------------------------------
# synthetic: NMS and the `boxes` decoder


def greedy_nms(boxes, scores, iou_threshold):
    """The textbook loop, one pair at a time."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union

    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if all(iou(boxes[i], boxes[k]) <= iou_threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("impl", [nms_opencv, nms_numpy])
def test_nms_matches_textbook_greedy_on_random_boxes(impl):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    wh = rng.uniform(5, 60, (300, 2))
    boxes = np.hstack([xy, xy + wh]).astype(np.float32)
    scores = rng.uniform(0.01, 1, 300).astype(np.float32)
    classes = rng.integers(0, 5, 300)
    for iou in (0.3, 0.5, 0.7):
        assert impl(boxes, scores, iou).tolist() == greedy_nms(boxes.tolist(), scores.tolist(), iou)
        per_class = sorted((i for c in range(5) for i in np.flatnonzero(classes == c)[
            greedy_nms(boxes[classes == c].tolist(), scores[classes == c].tolist(), iou)]), key=lambda i: -scores[i])
        assert impl(boxes, scores, iou, classes=classes).tolist() == per_class
        assert impl(boxes, scores, iou, top_k=7, classes=classes).tolist() == per_class[:7]


def test_nms_takes_opencv_for_few_candidates_and_numpy_for_many():
    """The two agree (above); which one runs is decided by the candidate count."""
    rng = np.random.default_rng(1)
    for n in (OPENCV_UP_TO, OPENCV_UP_TO + 1):
        xy = rng.uniform(0, 600, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(5, 60, (n, 2))])
        scores = rng.uniform(0.01, 1, n)
        classes = rng.integers(0, 80, n)
        want = (nms_opencv if n <= OPENCV_UP_TO else nms_numpy)(boxes, scores, 0.45, 100, classes)
        assert nms(boxes, scores, 0.45, 100, classes).tolist() == want.tolist()
        assert nms_numpy(boxes, scores, 0.45, 100, classes).tolist() == want.tolist()


def test_a_box_wholly_in_the_letterbox_pad_is_left_out():
    """A 100x50 image letterboxed into 100x100 (pad rows 0-25 and 75-100): a box in the top pad
    clips to no height in the image, and is no detection; one across the edge is clipped."""
    geom = Geometry(100, 50, 100, 100, 1.0, 1.0, 0, 25)
    boxes = np.array([[10, 30, 40, 60], [10, 2, 40, 20], [50, 10, 90, 40]], np.float32)
    found = to_detections(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 2]), ["a", "b", "c"], geom)
    assert [(d["label"], d["box"]) for d in found] == [("a", [10, 5, 40, 35]), ("c", [50, 0, 90, 15])]


def textbook_candidates(scores: np.ndarray, threshold: float, multi_label: bool) -> set:
    """(row, class, score) of every pair at or over the threshold, or each row's best."""
    if multi_label:
        return {(r, c, float(scores[r, c])) for r, c in zip(*np.nonzero(scores >= threshold))}
    best = scores.max(axis=1)
    return {(r, int(scores[r].argmax()), float(best[r])) for r in np.flatnonzero(best >= threshold)}


@pytest.mark.parametrize("multi_label", [False, True])
def test_candidates_read_every_memory_layout_and_parts_alike(multi_label):
    """The same candidates from a table in rows, transposed (YOLOv8's [C, N]), a column slice
    (YOLOv5's classes after the box), or split into levels (a GFL head's per-level outputs)."""
    rng = np.random.default_rng(3)
    table = rng.uniform(0, 0.3, (3549, 85)).astype(np.float32)
    table.flat[rng.choice(table.size, 60, replace=False)] = rng.uniform(0.3, 1, 60)
    scores = np.ascontiguousarray(table[:, 5:])
    want = textbook_candidates(scores, 0.5, multi_label)
    assert len(want) > 10
    layouts = {"rows": scores, "transposed": np.ascontiguousarray(scores.T).T, "slice": table[:, 5:],
               "levels": [scores[:2704], scores[2704:3380], scores[3380:]]}
    for name, layout in layouts.items():
        row, cls, score = candidates(layout, 0.5, "none", multi_label, 0)
        assert set(zip(row.tolist(), cls.tolist(), score.tolist())) == want, name
        # logits: the threshold taken in logit space gives the same pairs, as probabilities
        logit = [np.log(p / (1 - p)) for p in layout] if isinstance(layout, list) else np.log(layout / (1 - layout))
        row, cls, score = candidates(logit, 0.5, "auto", multi_label, 0)
        assert {(r, c) for r, c, _ in want} == set(zip(row.tolist(), cls.tolist())), name
        assert np.allclose(score, [scores[r, c] for r, c in zip(row, cls)], atol=1e-6), name
        row, cls, score = candidates(layout, 0.5, "none", multi_label, 7)
        assert sorted(score.tolist(), reverse=True) == sorted((s for *_, s in want), reverse=True)[:7], name


@pytest.mark.parametrize("nms", [nms, nms_opencv, nms_numpy])
def test_nms_per_class_top_k_and_edges(nms):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.5, classes=np.array([0, 1, 0])).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.5, classes=np.array([3, 3, 3])).tolist() == [0, 2]
    assert nms(boxes, scores, 0.5, top_k=1).tolist() == [0]
    assert nms(boxes, scores, 0.99).tolist() == [0, 1, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []
    # IoU exactly at the threshold is kept, as in the upstream decoders (<=)
    half = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
    assert nms(half, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]


def test_boxes_decoder_threshold_top_k_padding_and_geometry():
    rows = np.array([
        [0, 0.95, 10, 20, 110, 220],
        [2, 0.40, 0, 0, 5, 5],          # below the threshold
        [1, 0.80, 200, 100, 300, 150],
        [1, 0.60, 50, 50, 60, 60],
        [-1, 0.0, 0, 0, 0, 0],          # padding
    ], np.float32)
    # letterbox: a 640x480 image into 320x320, scale 0.5, 40 px bars top and bottom
    geom = Geometry(640, 480, 320, 320, 0.5, 0.5, 0.0, 40.0)
    dec = make_decoder({"type": "boxes", "score_threshold": 0.5, "top_k": 2}, ["person", "car"])
    result = decode_unchanged(dec, [rows], geom)
    assert result["classes"] == []
    assert [d["label"] for d in result["detections"]] == ["person", "car"]
    np.testing.assert_allclose(result["detections"][0]["box"], [20, 0, 220, 360])
    np.testing.assert_allclose(result["detections"][1]["box"], [400, 120, 600, 220])
    assert result["detections"][0]["score"] == pytest.approx(0.95)

    # a count output limits the rows; labels shorter than the class ids
    counted = make_decoder({"type": "boxes", "score_threshold": 0.5}, ["person"]).decode(
        [rows, np.array([3], np.int32)], geom)
    assert [d["label"] for d in counted["detections"]] == ["person", "1"]


def test_boxes_decoder_reads_the_yolo_exports_column_order():
    """YOLOv10 and Ultralytics' nms=True exports: [1, 300, 6] of x1, y1, x2, y2, score, class, padded
    with zero rows: the same detections as the PaddleDetection order gives."""
    rows = np.array([[0, 0.95, 10, 20, 110, 220], [1, 0.80, 200, 100, 300, 150], [0, 0.0, 0, 0, 0, 0]], np.float32)
    geom = Geometry(640, 480, 320, 320, 0.5, 0.5, 0.0, 40.0)
    want = make_decoder({"type": "boxes"}, ["person", "car"]).decode([rows], geom)
    yolo = rows[:, [2, 3, 4, 5, 1, 0]][None]
    got = make_decoder({"type": "boxes", "columns": "box_score_class"}, ["person", "car"]).decode([yolo], geom)
    assert got == want and len(got["detections"]) == 2
    problem = make_decoder({"type": "boxes", "columns": "box_score_class"}, []).layout_problem([np.zeros((1, 300, 7))])
    assert problem == "outputs [[1, 300, 7]]: the first is not [N, 6] (x1, y1, x2, y2, score, class)"


def test_boxes_decoder_empty_output():
    geom = Geometry(100, 100, 100, 100)
    result = make_decoder({"type": "boxes"}, []).decode([np.zeros((0, 6), np.float32)], geom)
    assert result == {"detections": [], "classes": []}


def test_classification_short_labels_and_threshold():
    geom = Geometry(10, 10, 10, 10)
    logits = np.array([[1.0, 3.0, 2.0, 0.0]], np.float32)
    dec = make_decoder({"type": "classification", "top_k": 3, "score_threshold": 0.2}, ["a", "b"])
    classes = dec.decode([logits], geom)["classes"]
    assert [c["label"] for c in classes] == ["b", "2"]  # 'a' scores 0.09, under 0.2
    assert make_decoder({"type": "classification", "top_k": 10}, []).decode([logits], geom)["classes"][3]["label"] == "3"


@pytest.mark.parametrize("kind", DECODERS.kinds())
def test_every_decoder_builds_from_its_defaults(kind):
    cls = DECODERS.get(kind)
    for name, (typ, default) in cls.PARAMS.items():
        assert isinstance(default, typ), f"{kind}.{name}"
    make_decoder({"type": kind}, [])


def test_the_decoder_registry_and_the_manifest_check_load_without_opencv() -> None:
    """The SDK builder's venv has no OpenCV and checks a config's decoder
    before conversion: every decoder imports its backend on use (registry.py)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['cv2'] = None\n"
            "from lited.bundle import config_problems\n"
            "print(config_problems({'preprocess': {}, 'decoder': {'type': 'db_text', 'tresh': 0.3}}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "decoder.tresh: unknown parameter for 'db_text'" in proc.stdout, proc.stdout


def _poisoned(outputs, pattern, value):
    """Copies of `outputs` with `value` in every element (`all`) or every third (`some`)."""
    out = []
    for o in outputs:
        o = np.array(o, dtype=np.float32, copy=True)
        if pattern == "all":
            o[...] = value
        else:
            o.reshape(-1)[::3] = value
        out.append(o)
    return out


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("pattern", ["all", "some"])
def test_nan_or_infinity_in_a_model_s_outputs_never_reaches_a_result(ultraface, fastestdet, mobilenetv2,
                                                                     ppocrv4_det, pattern, value):
    """What an engine precision that overflows (f16) makes: JSON (the HTTP front end, the uplink) has
    no NaN or infinity, so no decoder may put one in a result; it leaves such entries out, or fails."""
    import json

    cases = [("priorbox", {}, *ultraface), ("grid", {}, *fastestdet[0]["coffee.png"], fastestdet[1]),
             ("classification", {}, *mobilenetv2), ("classification", {"softmax": False}, *mobilenetv2),
             ("db_text", {}, *ppocrv4_det, None)]
    carried = {}
    for kind, params, outputs, geom, labels in cases:
        try:
            result = make_decoder({"type": kind, **params}, labels).decode(_poisoned(outputs, pattern, value), geom)
        except ValueError:
            continue
        try:
            json.dumps(result, allow_nan=False)
        except ValueError:
            carried[kind] = str(result)[:300]
    assert not carried, carried
