"""PP-OCR DB text detection: probability map `[1, 1, H, W]` -> text boxes.

Follows PaddleOCR's `DBPostProcess` (score_mode "fast", no dilation):
binarise at `thresh`, take the first `max_candidates` contours, fit a
rotated rectangle, score it by the mean probability inside it, drop it below
`box_thresh`, grow it by `area * unclip_ratio / perimeter` and drop it when
its short side is under `min_size` (before growing) or `min_size + 2` (after).

PaddleOCR grows the polygon with pyclipper (round joins) and then takes the
minimum-area rectangle of the result; for a rectangle that is exactly the
rectangle with every side pushed out by the distance, so this is done in
closed form and pyclipper is not needed at runtime.

Each detection has label "text", the axis-aligned `box` and the rotated
`polygon` (top-left, top-right, bottom-right, bottom-left), in source pixels.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from ..geometry import Geometry
from .base import Decoder, shapes


def ordered_corners(rect: tuple) -> np.ndarray:
    """The 4 corners of a `cv2.minAreaRect` result as top-left, top-right,
    bottom-right, bottom-left (PaddleOCR's `get_mini_boxes` order)."""
    import cv2  # on use, as every decoder's backend (registry.py): the SDK builder's venv has no OpenCV

    pts = cv2.boxPoints(rect)
    pts = pts[np.argsort(pts[:, 0], kind="stable")]
    left = (0, 1) if pts[1, 1] > pts[0, 1] else (1, 0)
    right = (2, 3) if pts[3, 1] > pts[2, 1] else (3, 2)
    return pts[[left[0], right[0], right[1], left[1]]]


def box_score(prob: np.ndarray, corners: np.ndarray) -> float:
    """Mean probability inside the polygon, over its bounding-box crop only
    (PaddleOCR's `box_score_fast`)."""
    import cv2

    h, w = prob.shape
    x0 = min(max(int(np.floor(corners[:, 0].min())), 0), w - 1)
    x1 = min(max(int(np.ceil(corners[:, 0].max())), 0), w - 1)
    y0 = min(max(int(np.floor(corners[:, 1].min())), 0), h - 1)
    y1 = min(max(int(np.ceil(corners[:, 1].max())), 0), h - 1)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    shifted = (corners - np.array([x0, y0], dtype=corners.dtype)).astype(np.int32)
    cv2.fillPoly(mask, shifted[None], 1)
    return cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0]


class DbTextDecoder(Decoder):
    kind = "db_text"
    TASK = "text_detection"
    OWN_LABELS = ("text",)
    PARAMS = {
        "thresh": (float, 0.3),
        "box_thresh": (float, 0.5),
        "unclip_ratio": (float, 1.6),
        "max_candidates": (int, 1000),
        "min_size": (int, 3),
    }

    def __init__(self, params: dict, labels: List[str]) -> None:
        super().__init__(params, labels)
        # reused while the map size holds; so one Decoder serves one thread
        self._bitmap = np.empty((0, 0), dtype=np.uint8)

    def layout_problem(self, outputs: List[np.ndarray]) -> Optional[str]:
        """A probability map: [1, 1, H, W] (or [1, H, W], [H, W]); FastestDet's [1, 85, 22, 22]
        failed in numpy's words (`cannot reshape array of size 41140 into shape (22,22)`)."""
        prob = outputs[0]
        if prob.ndim < 2 or prob.ndim > 4 or prob.size != prob.shape[-2] * prob.shape[-1]:
            return f"outputs {shapes(outputs)}: the first is not a probability map [1, 1, H, W]"
        return None

    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        import cv2

        prob = outputs[0].reshape(outputs[0].shape[-2:])
        if self._bitmap.shape != prob.shape:
            self._bitmap = np.empty(prob.shape, dtype=np.uint8)
        np.greater(prob, self.thresh, out=self._bitmap.view(bool))
        contours, _ = cv2.findContours(self._bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        polygons, scores = [], []
        for contour in contours[: self.max_candidates]:
            center, (w, h), angle = cv2.minAreaRect(contour)
            if min(w, h) < self.min_size:
                continue
            score = box_score(prob, ordered_corners((center, (w, h), angle)))
            if not self.box_thresh <= score < math.inf:  # NaN or infinity (f16 overflowing): JSON has neither
                continue
            grow = 2.0 * w * h * self.unclip_ratio / (2.0 * (w + h))  # 2 * area*ratio/perimeter
            if min(w, h) + grow < self.min_size + 2:
                continue
            polygons.append(ordered_corners((center, (w + grow, h + grow), angle)))
            scores.append(score)
        if not polygons:
            return {"detections": [], "classes": []}
        polys = geom.points_to_source(np.stack(polygons))
        boxes = np.concatenate([polys.min(axis=1), polys.max(axis=1)], axis=1)
        detections = [{"label": self.OWN_LABELS[0], "class_id": 0, "score": s, "box": b, "polygon": p}
                      for s, b, p in zip(scores, boxes.tolist(), polys.tolist())]
        return {"detections": detections, "classes": []}
