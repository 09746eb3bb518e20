"""Preprocessing equals the obvious numpy/OpenCV recipe for every mode, maps
boxes back to source pixels, and allocates nothing per frame."""
from __future__ import annotations

import math
import tracemalloc

import cv2
import numpy as np
import pytest

from lited.geometry import Geometry
from lited.preprocess import Preprocessor

RNG = np.random.default_rng(7)
FRAME = RNG.integers(0, 256, (300, 451, 3), dtype=np.uint8)  # chelsea.png's size, odd width
NORM = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def reference(img: np.ndarray, spec: dict, canvas: np.ndarray) -> np.ndarray:
    """What the model should see, from a canvas built the plain way."""
    x = canvas.astype(np.float32)
    if spec.get("color") == "RGB":
        x = x[:, :, ::-1]
    x = (x * spec.get("scale", 1 / 255) - np.float32(spec.get("mean", [0, 0, 0]))) / np.float32(spec.get("std", [1, 1, 1]))
    return x.transpose(2, 0, 1)[None] if spec.get("layout", "NCHW") == "NCHW" else x[None]


def run(spec: dict, shape: list, img: np.ndarray = FRAME) -> tuple:
    pre = Preprocessor(spec, shape)
    geom = pre(img)
    return pre, geom


@pytest.mark.parametrize("color", ["BGR", "RGB"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_stretch(color, layout):
    spec = {"color": color, "layout": layout, "resize": {"mode": "stretch", "interpolation": "area"}, **NORM}
    shape = [1, 3, 240, 320] if layout == "NCHW" else [1, 240, 320, 3]
    pre, geom = run(spec, shape)
    want = reference(FRAME, spec, cv2.resize(FRAME, (320, 240), interpolation=cv2.INTER_AREA))
    np.testing.assert_allclose(pre.tensor, want, atol=1e-5)
    assert (geom.sx, geom.sy) == (320 / 451, 240 / 300)


@pytest.mark.parametrize("align", ["center", "top_left"])
def test_letterbox(align):
    spec = {"color": "BGR", "resize": {"mode": "letterbox", "pad_value": 114, "align": align}, "scale": 1 / 255}
    pre, geom = run(spec, [1, 3, 352, 352])
    s = min(352 / 451, 352 / 300)
    w, h = round(451 * s), round(300 * s)
    canvas = np.full((352, 352, 3), 114, np.uint8)
    y0 = (352 - h) // 2 if align == "center" else 0
    canvas[y0:y0 + h, :w] = cv2.resize(FRAME, (w, h))
    np.testing.assert_allclose(pre.tensor, reference(FRAME, spec, canvas), atol=1e-5)
    # a box covering the whole resized image maps back to the whole frame
    box = geom.boxes_to_source(np.array([[0, y0, w, y0 + h]], np.float32))[0]
    np.testing.assert_allclose(box, [0, 0, 451, 300], atol=0.5)


def test_short_side_crop():
    spec = {"color": "RGB", "resize": {"mode": "short_side_crop", "short_side": 256}, **NORM}
    pre, geom = run(spec, [1, 3, 224, 224])
    resized = cv2.resize(FRAME, (int(451 * 256 / 300), 256))
    cx, cy = (resized.shape[1] - 224) // 2, (256 - 224) // 2
    want = reference(FRAME, spec, resized[cy:cy + 224, cx:cx + 224])
    np.testing.assert_allclose(pre.tensor, want, atol=1e-5)
    # the centre of the model input is the centre of the frame
    centre = geom.points_to_source(np.array([[112.0, 112.0]]))[0]
    np.testing.assert_allclose(centre, [225.5, 150], atol=1.5)


def test_keep_ratio_dynamic_rounds_to_the_multiple():
    spec = {"resize": {"mode": "keep_ratio", "max_side": 320, "multiple": 32}, "mean": [0.5] * 3, "std": [0.5] * 3}
    pre, geom = run(spec, [1, 3, -1, -1])
    assert pre.tensor.shape == (1, 3, 224, 320)  # 300x451 * 320/451 = 213x320 -> 224x320
    want = reference(FRAME, spec, cv2.resize(FRAME, (320, 224)))
    np.testing.assert_allclose(pre.tensor, want, atol=1e-5)
    assert isinstance(geom, Geometry) and (geom.in_w, geom.in_h) == (320, 224)


def test_a_new_source_size_replans_and_the_old_one_still_works():
    spec = {"resize": {"mode": "keep_ratio", "max_side": 960}}
    pre = Preprocessor(spec, [1, 3, -1, -1])
    pre(FRAME)
    assert pre.tensor.shape == (1, 3, 288, 448)
    pre(np.zeros((100, 640, 3), np.uint8))
    assert pre.tensor.shape == (1, 3, 96, 640)
    pre(FRAME)
    np.testing.assert_allclose(pre.tensor, reference(FRAME, {}, cv2.resize(FRAME, (448, 288))), atol=1e-5)


def test_no_allocation_per_frame():
    spec = {"color": "RGB", "resize": {"mode": "letterbox"}, **NORM}
    pre = Preprocessor(spec, [1, 3, 352, 352])
    frames = [RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2)]
    tensor = pre.tensor
    pre(frames[0])
    tensor = pre.tensor
    tracemalloc.start()
    pre(frames[1])
    before = tracemalloc.take_snapshot()
    for i in range(500):
        pre(frames[i % 2])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 4096, f"preprocessing grew {grown} bytes over 500 frames"
    assert pre.tensor is tensor  # the same input buffer, written in place


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match=r"the input \[1, 3, -1, -1\] is dynamic, which needs mode 'keep_ratio'"):
        Preprocessor({"resize": {"mode": "stretch"}}, [1, 3, -1, -1])
    with pytest.raises(ValueError, match=r"expected 3 colour channels, got 1$"):
        Preprocessor({"resize": {"mode": "stretch"}}, [1, 1, 32, 32])
    # an NHWC model given the default layout: the other layout named, as the fix
    with pytest.raises(ValueError, match=r"got 128 \(preprocess.layout is NCHW; as NHWC it has 3: set layout: NHWC\)"):
        Preprocessor({"resize": {"mode": "stretch"}}, [1, 128, 128, 3])


@pytest.mark.parametrize("size", [(30, 200), (40, 600), (33, 1500), (50, 20), (48, 192)])
def test_fit_height_is_rapidocr_exactly(size):
    """Text lines: height 48, the width the ratio asks (squeezed beyond the input, or the widest
    bucket), padded on the right with 0 after (x/255 - 0.5)/0.5, as rapidocr/PaddleOCR feed them."""
    import rapidocr_reference as rapidocr

    image = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
    spec = {"color": "BGR", "resize": {"mode": "fit_height"}, "mean": [0.5] * 3, "std": [0.5] * 3}
    cls = Preprocessor(spec, [1, 3, 48, 192])
    geom = cls(image)
    np.testing.assert_allclose(cls.tensor, rapidocr.resize_norm_img(image, 192), atol=1e-6)
    assert (geom.in_w, geom.in_h, geom.sy) == (192, 48, 48 / size[0])
    widths = [320, 640, 960]
    rec = Preprocessor({**spec, "resize": {"mode": "fit_height", "widths": widths}}, [1, 3, 48, -1])
    rec(image)
    wanted = math.ceil(48 * size[1] / size[0])
    width = next((w for w in widths if w >= wanted), widths[-1])
    assert rec.tensor.shape == (1, 3, 48, width)
    np.testing.assert_allclose(rec.tensor, rapidocr.resize_norm_img(image, width), atol=1e-6)
    nhwc = Preprocessor({**spec, "layout": "NHWC", "resize": {"mode": "fit_height", "widths": widths}},
                        [1, 48, -1, 3])
    nhwc(image)
    np.testing.assert_allclose(nhwc.tensor[0].transpose(2, 0, 1)[None], rec.tensor, atol=1e-6)


@pytest.mark.parametrize("spec, shape", [
    ({"resize": {"mode": "fit_height"}, "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}, [1, 3, 48, 192]),
    ({"color": "RGB", "layout": "NHWC", "resize": {"mode": "letterbox"}, **NORM}, [1, 320, 320, 3]),
])
def test_a_float16_input_gets_the_float32_tensor_rounded_in_place(spec, shape):
    """An engine that takes its image as float16 (OpenVINO's `f16_images`) gets what a
    float32 input would, rounded to the nearest float16, in the very array it handed over."""
    pre = Preprocessor(spec, shape)
    pre(FRAME)
    expected = pre.tensor.astype(np.float16)
    out = np.full(shape, np.nan, np.float16)
    pre(FRAME, out=out)
    np.testing.assert_array_equal(out, expected)
    assert np.abs(out.astype(np.float32) - pre.tensor).max() <= np.abs(pre.tensor).max() * 2.0 ** -11
