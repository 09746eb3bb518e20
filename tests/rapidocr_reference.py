"""rapidocr_onnxruntime 1.4.4's preprocessing of a text-line crop, written
from its source (ch_ppocr_rec/text_recognize.py and ch_ppocr_cls/text_cls.py
`resize_norm_img`): what lited's `fit_height` resize must give."""
from __future__ import annotations

import math

import cv2
import numpy as np


def resize_norm_img(img: np.ndarray, img_w: int, img_h: int = 48) -> np.ndarray:
    """The crop at height 48 and width min(ceil(48 w/h), img_w) (INTER_LINEAR, BGR),
    (x/255 - 0.5)/0.5, then zero-padded on the right to img_w (after normalising)."""
    h, w = img.shape[:2]
    resized_w = min(img_w, int(math.ceil(img_h * w / h)))
    resized = cv2.resize(img, (resized_w, img_h)).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((3, img_h, img_w), np.float32)
    out[:, :, :resized_w] = (resized - 0.5) / 0.5
    return out[None]


def rec_input(img: np.ndarray) -> np.ndarray:
    """The recognizer's input for one crop: as wide as its ratio asks, at least 320."""
    h, w = img.shape[:2]
    return resize_norm_img(img, int(48 * max(320 / 48, w / h)))
