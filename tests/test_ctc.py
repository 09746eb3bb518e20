"""The `ctc` decoder: greedy CTC as PaddleOCR's CTCLabelDecode, and PP-OCRv4
recognition (the demo bundle's rec stage, Paddle Lite) reading lines the
same as onnxruntime on the original ONNX with rapidocr's preprocessing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import DEMO_BUNDLE, need_shared

import rapidocr_reference as rapidocr

from lited.bundle import load_bundle
from lited.decoders import make_decoder
from lited.model import Part


def probs(seq, k):
    p = np.full((1, len(seq), k), 0.01, np.float32)
    for t, c in enumerate(seq):
        p[0, t, c] = 0.9
    return p


def ctc(labels, **params):
    return make_decoder({"type": "ctc", **params}, labels)


def test_repeats_collapse_blanks_split_and_the_space_class():
    d = ctc(["a", "b", "c"], strip=False)  # classes: blank, a, b, c, " "
    out = d.decode([probs([0, 1, 1, 0, 1, 2, 4, 3, 3, 0], 5)])
    assert out["text"] == "aab c" and out["text_score"] == pytest.approx(0.9)
    assert out["detections"] == [] and out["classes"] == []
    assert d.num_classes([probs([0], 5)]) == 3  # the keys, checked against the labels at load


def test_empty_line_min_score_and_strip():
    d = ctc(["a"], min_score=0.95)
    assert d.decode([probs([0, 0], 3)]) == {"detections": [], "classes": [], "text": "", "text_score": 0.0}
    assert d.decode([probs([1], 3)])["text"] == ""  # 0.9 < 0.95
    assert ctc(["a"]).decode([probs([2, 1, 0, 2], 3)])["text"] == "a"  # margins read as spaces: stripped


def test_logits_and_unicode_normalisation():
    out = ctc(["（", "a"], apply_softmax=True, normalize="NFKC").decode([np.log(probs([1, 2, 0], 4))])
    assert out["text"] == "(a" and 0 < out["text_score"] < 1


def test_a_keys_file_that_does_not_match_is_named():
    with pytest.raises(ValueError, match=r"the model read class 5, past the 2 classes of the blank, 1 keys: "
                                         r"the keys file \(or use_space_char\) does not match the model"):
        ctc(["a"], use_space_char=False).decode([probs([5], 6)])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_infinity_in_the_model_s_scores_is_an_error_not_a_text_scored_so(value):
    """argmax takes a NaN for the best class: the text went out with text_score NaN, which
    JSON (the HTTP front end, the uplink) cannot carry."""
    p = probs([1, 2], 4)
    p[0, 1, 2] = value  # the best of its row: class 2, "b", scored NaN or infinity
    with pytest.raises(ValueError, match=rf"{value} where the model scored a character"):
        ctc(["a", "b"]).decode([p])


def test_pp_ocrv4_rec_on_paddle_lite_reads_as_onnxruntime():
    import onnxruntime as ort

    bundle = load_bundle(DEMO_BUNDLE)
    rec_spec = bundle.stages[1]
    rec = Part(rec_spec, None, None, False)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(need_shared("models", "ppocrv4_rec", "onnx", "ch_PP-OCRv4_rec_infer.onnx")),
                                options, providers=["CPUExecutionProvider"])
    decoder = make_decoder(rec_spec.decoder, rec_spec.labels)
    for text in ("Paddle Lite 2.13", "lited reads text"):
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, 1.0, 2)
        img = np.full((th + base + 12, tw + 12, 3), 250, np.uint8)
        cv2.putText(img, text, (6, th + 6), cv2.FONT_HERSHEY_DUPLEX, 1.0, (20, 20, 20), 2, cv2.LINE_AA)
        lite = rec.decoder.decode(*rec.forward(img))
        reference = decoder.decode([sess.run(None, {"x": rapidocr.rec_input(img)})[0]])
        assert lite["text"] == reference["text"] == text
        assert lite["text_score"] == pytest.approx(reference["text_score"], abs=2e-3)
    rec.close()
