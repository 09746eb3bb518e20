"""The `gfl` decoder (GFL heads: PP-PicoDet, NanoDet, GFL) on NanoDet-m's real
outputs (onnxruntime on the shared ONNX), against the independent reference
decode in nanodet_reference.py, and on every output layout the decoder finds
by shape (re-arrangements of the same real outputs must decode alike).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import need_shared

import nanodet_reference as ref
from lited.decoders import make_decoder
from lited.decoders.gfl import LayoutError, resolve_layout
from lited.geometry import Geometry

IMAGES = ("astronaut", "chelsea", "coffee", "page")
NANODET = {"type": "gfl", "strides": [8, 16, 32], "reg_max": 7, "cell_offset": 0.5, "cls_activation": "none",
           "nms_iou": 0.3}


@pytest.fixture(scope="module")
def nanodet() -> dict:
    """{image: (outputs, width, height)} of NanoDet-m on onnxruntime."""
    import cv2

    sess = ref.session(str(need_shared("models", "nanodet_m", "onnx", "nanodet_m.onnx")))
    out = {}
    for name in IMAGES:
        img = cv2.imread(str(need_shared("images", f"{name}.png")))
        outs = [np.asarray(o, np.float32) for o in ref.run_onnx(sess, ref.preprocess(img))]
        out[name] = (outs, img.shape[1], img.shape[0])
    return out


@pytest.fixture(scope="module")
def labels() -> list:
    return need_shared("models", "nanodet_m", "labels.txt").read_text().splitlines()


def geometry(w: int, h: int) -> Geometry:
    return Geometry(w, h, ref.SIZE, ref.SIZE, ref.SIZE / w, ref.SIZE / h)


def decoded(outs, w, h, labels, **params) -> list:
    dec = make_decoder({**NANODET, **params}, labels)
    return [(d["label"], d["box"], d["score"]) for d in dec.decode(outs, geometry(w, h))["detections"]]


@pytest.mark.parametrize("threshold", [0.4, 0.25, 0.1])
def test_gfl_matches_the_reference_decode(nanodet, labels, threshold):
    """Same boxes as the reference (per-class NMS, every class over the threshold), to the pixel."""
    total = 0
    for name, (outs, w, h) in nanodet.items():
        got = decoded(outs, w, h, labels, score_threshold=threshold)
        want = [(labels[c], box) for c, _, *box in ref.reference_decode(outs, w, h, threshold, 0.3)]
        tp, ious = ref.match([(lab, box) for lab, box, _ in got], want, min_iou=0.99)
        assert tp == len(got) == len(want), (name, got, want)
        total += len(want)
    assert total >= {0.4: 4, 0.25: 20, 0.1: 150}[threshold]


def test_nanodet_finds_the_person_the_cat_and_the_cup(nanodet, labels):
    found = {name: {lab for lab, _, _ in decoded(outs, w, h, labels, score_threshold=0.4)}
             for name, (outs, w, h) in nanodet.items()}
    assert "person" in found["astronaut"] and "cat" in found["chelsea"] and "cup" in found["coffee"]
    assert found["page"] == set()


def to_chw(a, h, w):  # [1, n, k] -> [1, k, h, w]
    return np.ascontiguousarray(a[0].T.reshape(1, -1, h, w))


def test_every_layout_decodes_alike(nanodet, labels):
    """Found by shape: order, channels-first maps, one tensor per level, one for all levels
    (NanoDet-Plus), no batch axis; strides and reg_max inferred when not given."""
    outs, w, h = nanodet["astronaut"]
    base = decoded(outs, w, h, labels, score_threshold=0.1)
    assert len(base) > 50
    cls, box = outs[:3], outs[3:]
    hw = [(52, 52), (26, 26), (13, 13)]
    variants = {
        "shuffled": [box[1], cls[2], cls[0], box[2], cls[1], box[0]],
        "chw": [to_chw(c, *s) for c, s in zip(cls, hw)] + [to_chw(b, *s) for b, s in zip(box, hw)],
        "channels_first_flat": [np.ascontiguousarray(o.transpose(0, 2, 1)) for o in outs],
        "combined_per_level": [np.concatenate([c, b], axis=2) for c, b in zip(cls, box)],
        "combined_per_level_chw": [to_chw(np.concatenate([c, b], axis=2), *s) for c, b, s in zip(cls, box, hw)],
        "nanodet_plus_single": [np.concatenate([np.concatenate([c, b], axis=2) for c, b in zip(cls, box)], axis=1)],
        "no_batch_dim": [o[0] for o in outs],
    }
    for name, variant in variants.items():
        got = decoded(variant, w, h, labels, score_threshold=0.1, strides=[], reg_max=-1)
        assert got == base, name
        assert make_decoder({"type": "gfl"}, labels).num_classes(variant) == 80, name


def test_logits_are_thresholded_as_logits(nanodet, labels):
    outs, w, h = nanodet["astronaut"]
    base = decoded(outs, w, h, labels, score_threshold=0.1)
    p = [np.clip(c, 1e-12, 1 - 1e-7) for c in outs[:3]]
    logits = [np.log(c / (1 - c)) for c in p] + outs[3:]
    for mode in ("auto", "sigmoid"):
        got = decoded(logits, w, h, labels, score_threshold=0.1, cls_activation=mode)
        assert [g[0] for g in got] == [b[0] for b in base], mode
        assert np.allclose([g[2] for g in got], [b[2] for b in base], atol=1e-4), mode


def test_wrong_strides_or_reg_max_are_named(nanodet, labels):
    outs, w, h = nanodet["astronaut"]
    with pytest.raises(LayoutError, match=r"^decoder\.strides: a level of \d+ anchors matches no stride"):
        decoded(outs, w, h, labels, strides=[8, 16, 64])
    with pytest.raises(LayoutError, match=r"^decoder\.strides: 3 levels in the outputs, 4 strides given"):
        decoded(outs, w, h, labels, strides=[8, 16, 32, 64])
    with pytest.raises(LayoutError, match=r"^decoder\.reg_max: output \d: 32 box channels, expected 4 \* \(reg_max "
                                          r"\+ 1\) = 68 \(outputs \[\["):
        decoded(outs, w, h, labels, reg_max=16)
    with pytest.raises(LayoutError, match="^outputs .* are not a GFL head"):  # no parameter to blame
        decoded(outs[:5], w, h, labels)


def test_what_decode_read_is_described_and_counts_the_classes(nanodet, labels):
    """`decoder reads` (inspect, build_sdk) gives the strides and reg_max found; outputs no
    layout fits at the input size count no classes (a count from a split decode does not make
    blamed the labels)."""
    outs, w, h = nanodet["astronaut"]
    dec = make_decoder({**NANODET, "strides": [], "reg_max": -1}, labels)
    assert dec.describe(outs) is None  # nothing read yet
    dec.decode(outs, geometry(w, h))
    assert dec.describe(outs) == ("3 levels (52x52 at stride 8, 26x26 at stride 16, 13x13 at stride 32) in 6 outputs, "
                                  "reg_max 7, 80 classes")
    assert dec.num_classes(outs) == 80
    odd = [np.zeros((1, 7, 100), np.float32)]
    dec = make_decoder({"type": "gfl"}, ["a", "b", "c"])
    assert dec.num_classes(odd) == 68  # split by shape alone, before any decode
    with pytest.raises(LayoutError, match="7 anchors"):
        dec.decode(odd, Geometry(320, 320, 320, 320))
    assert dec.num_classes(odd) is None and dec.describe(odd) is None


def test_picodet_320_with_four_levels():
    """PP-PicoDet 320 without post-process: 4 levels, stride 64 has 25 anchors (fewer than 80 classes)."""
    rng = np.random.default_rng(0)
    ns = [40 * 40, 20 * 20, 10 * 10, 5 * 5]
    cls = [rng.uniform(0, 0.05, (1, n, 80)).astype(np.float32) for n in ns]
    box = [rng.normal(0, 1, (1, n, 32)).astype(np.float32) for n in ns]
    cls[3][0, 2 * 5 + 3, 17] = 0.9  # stride 64, row 2, column 3: centre (3.5 * 64, 2.5 * 64)
    box[3][0, 2 * 5 + 3] = -20.0
    box[3][0, 2 * 5 + 3, [1, 9, 17, 25]] = 20.0  # every side: bin 1 -> 64 px
    labels = [str(i) for i in range(80)]
    out = make_decoder({"type": "gfl", "score_threshold": 0.5}, labels).decode(
        cls + box, Geometry(320, 320, 320, 320))["detections"]
    assert len(out) == 1 and out[0]["label"] == "17"
    assert np.allclose(out[0]["box"], [224 - 64, 160 - 64, 224 + 64, 160 + 64], atol=1e-3)
    layout = resolve_layout([c.shape for c in cls + box], (320, 320))
    assert [lv["stride"] for lv in layout.levels] == [8, 16, 32, 64] and layout.reg_max == 7
    plus = make_decoder({"type": "gfl", "score_threshold": 0.5, "cell_offset": 0.0}, labels)  # NanoDet-Plus
    assert np.allclose(plus.decode(cls + box, Geometry(320, 320, 320, 320))["detections"][0]["box"],
                       [192 - 64, 128 - 64, 192 + 64, 128 + 64], atol=1e-3)


def test_non_square_input_and_reg_max_16():
    """416x320 (W x H): levels of ceil(320/s) x ceil(416/s) anchors, row-major; GFL R50's 17 bins."""
    hw = [(40, 52), (20, 26), (10, 13)]
    cls = [np.zeros((1, h * w, 3), np.float32) for h, w in hw]
    box = [np.full((1, h * w, 4 * 17), -30.0, np.float32) for h, w in hw]
    r, c = 7, 11
    cls[1][0, r * 26 + c, 2] = 0.8
    box[1][0, r * 26 + c, [0, 17, 34, 51]] = 30.0
    box[1][0, r * 26 + c, [2, 19, 36, 53]] = 31.0  # bin 2 wins over bin 0
    out = make_decoder({"type": "gfl", "score_threshold": 0.5}, ["a", "b", "c"]).decode(
        cls + box, Geometry(416, 320, 416, 320))["detections"]
    cx, cy = (c + 0.5) * 16, (r + 0.5) * 16
    dist = 2 * np.e / (1 + np.e) * 16
    assert len(out) == 1 and out[0]["label"] == "c"
    assert np.allclose(out[0]["box"], [cx - dist, cy - dist, cx + dist, cy + dist], atol=1e-2)



def test_the_builder_checks_given_strides_and_reg_max_against_the_converted_model():
    """Right after conversion, not at the golden run: a wrong `strides` or
    `reg_max` in a fragment is refused naming the fragment and the field."""
    from lited.sdk import BuildError
    from lited.sdk.paddledet_cfg import complete_gfl

    shapes = [[1, 2704, 80], [1, 676, 80], [1, 169, 80], [1, 2704, 32], [1, 676, 32], [1, 169, 32]]  # NanoDet-m
    assert complete_gfl({"type": "gfl"}, shapes, (416, 416), "f.json") == \
        {"type": "gfl", "reg_max": 7, "strides": [8, 16, 32]}
    for given, said in (({"strides": [8, 16, 32, 64]}, "frag.json: decoder.strides: 3 levels in the outputs, 4 "),
                        ({"reg_max": 16}, "frag.json: decoder.reg_max: output 3: 32 box channels")):
        with pytest.raises(BuildError, match=re.escape(said)):
            complete_gfl({"type": "gfl", **given}, shapes, (416, 416), "frag.json")
