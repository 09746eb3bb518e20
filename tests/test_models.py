"""The real models through lited, end to end: right answers in the photo's
own pixels, raw outputs equal to onnxruntime on the ONNX originals."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import need_shared
from lited.model import load_model
from lited.preprocess import Preprocessor

ONNX = {
    "ultraface": "version-RFB-320.onnx",
    "fastestdet": "FastestDet.onnx",
    "mobilenetv2": "mobilenet_v2_dequant_fp32.onnx",
    "ppocrv4_det": "ch_PP-OCRv4_det_infer.onnx",
    "ppocr_cls": "ch_ppocr_mobile_v2.0_cls_sanitized.onnx",
    "nanodet_m": "nanodet_m.onnx",
}
IMAGE_FOR = {"ultraface": "astronaut", "fastestdet": "coffee", "mobilenetv2": "chelsea",
             "ppocrv4_det": "page", "ppocr_cls": "page", "nanodet_m": "astronaut"}


@pytest.fixture(scope="module")
def models(bundles_dir):
    return {name: load_model(str(bundles_dir / name)) for name in ONNX}


def image(name: str) -> np.ndarray:
    return cv2.imread(str(need_shared("images", f"{name}.png")))


def test_ultraface_finds_the_one_face_where_it_is(models):
    result = models["ultraface"].infer(image("astronaut"))
    faces = result["detections"]
    assert len(faces) == 1, faces
    x1, y1, x2, y2 = faces[0]["box"]
    assert faces[0]["label"] == "face" and faces[0]["score"] > 0.9
    # Eileen Collins' face in the 512x512 photo: centre near (225, 118), about 90 px wide
    assert 200 < (x1 + x2) / 2 < 250 and 95 < (y1 + y2) / 2 < 145
    assert 60 < x2 - x1 < 130


def test_fastestdet_finds_the_cat_and_the_cup(models):
    cat = models["fastestdet"].infer(image("chelsea"))["detections"]
    assert [d["label"] for d in cat][:1] == ["cat"], cat
    x1, y1, x2, y2 = cat[0]["box"]
    assert x2 - x1 > 200 and y2 - y1 > 150  # the cat fills most of the 451x300 photo
    cups = [d for d in models["fastestdet"].infer(image("coffee"))["detections"] if d["label"] == "cup"]
    assert cups, "no cup in coffee.png"
    x1, y1, x2, y2 = cups[0]["box"]
    assert 150 < (x1 + x2) / 2 < 450 and (y1 + y2) / 2 < 250  # the cup is in the upper middle


def test_mobilenetv2_top1_on_chelsea_is_a_cat(models):
    classes = models["mobilenetv2"].infer(image("chelsea"))["classes"]
    assert len(classes) == 5
    assert classes[0]["label"] in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
    assert classes[0]["score"] > 0.5
    assert classes == sorted(classes, key=lambda c: -c["score"])


def test_ppocrv4_det_finds_the_text_lines_on_the_page(models):
    page = image("page")
    h, w = page.shape[:2]
    lines = models["ppocrv4_det"].infer(page)["detections"]
    assert len(lines) >= 6, lines
    for d in lines:
        x1, y1, x2, y2 = d["box"]
        assert d["label"] == "text" and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert x2 - x1 > y2 - y1  # text lines are wide
    assert len({round((d["box"][1] + d["box"][3]) / 20) for d in lines}) >= 4  # several distinct rows


def test_nanodet_finds_the_astronaut_with_its_gfl_head(models):
    people = [d for d in models["nanodet_m"].infer(image("astronaut"))["detections"] if d["label"] == "person"]
    assert people and people[0]["score"] > 0.4
    x1, y1, x2, y2 = people[0]["box"]
    assert x1 < 200 < 300 < x2 and y2 - y1 > 300  # the astronaut, standing in the 512x512 photo


def test_ppocr_cls_scores_both_orientations(models):
    classes = models["ppocr_cls"].infer(image("page"))["classes"]
    assert {c["label"] for c in classes} == {"0", "180"}
    assert abs(sum(c["score"] for c in classes) - 1) < 1e-3


@pytest.mark.parametrize("name", sorted(ONNX))
def test_raw_outputs_match_onnxruntime(models, name):
    ort = pytest.importorskip("onnxruntime")
    model = models[name]
    model.preprocess(image(IMAGE_FOR[name]))
    x = model.preprocess.tensor
    model.engine.set_input(0, x)
    ours = [o.copy() for o in model.engine.run()]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(need_shared("models", name, "onnx", ONNX[name])), options,
                                   providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: x})
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_results_are_stable_across_runs_and_shapes(models):
    """Same image -> same result, also after other input shapes ran (dynamic model)."""
    det = models["ppocrv4_det"]
    first = det.infer(image("page"))["detections"]
    det.infer(image("coffee"))
    det.infer(image("astronaut"))
    again = det.infer(image("page"))["detections"]
    assert first == again


def test_infer_preprocesses_straight_into_paddle_lites_input_tensor(models):
    """No hand-over copy: the input is written into the tensor Paddle Lite
    runs on, and lited's own staging buffer is never touched."""
    model = models["ultraface"]
    image_of = image("astronaut")
    model.infer(image_of)
    staging = model.preprocess.tensor
    staging.fill(np.nan)
    result = model.infer(image_of)
    assert np.isnan(staging).all()
    inside = model.engine._inputs[0].numpy()  # Paddle Lite's own input memory
    reference = Preprocessor(model.bundle.preprocess, model.bundle.inputs[0]["shape"])
    reference(image_of)
    np.testing.assert_array_equal(inside, reference.tensor)
    assert [d["label"] for d in result["detections"]] == ["face"]
