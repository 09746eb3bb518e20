"""Anchor-free single-scale grid (FastestDet): `[1, 5+C, H, W]`.

Per cell: obj, tx, ty, tw, th, then C class scores. The published FastestDet
ONNX graph already ends obj in a sigmoid and the class scores in a softmax
(obj lies in (0, 1), class scores sum to 1), so they are used as they are;
only the box terms are raw. As in upstream's example:
score = obj^0.6 * cls^0.4, cx = (gx + tanh(tx)) / W, cy = (gy + tanh(ty)) / H,
w = sigmoid(tw), h = sigmoid(th), all normalised to the input size; one box
per cell (its best class); NMS is class-agnostic, like upstream's.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..geometry import Geometry
from .base import Decoder, shapes
from .nms import nms, to_detections


class GridDecoder(Decoder):
    kind = "grid"
    PARAMS = {"score_threshold": (float, 0.65), "nms_iou": (float, 0.45), "top_k": (int, 100)}

    def num_classes(self, outputs: List[np.ndarray]) -> int:
        """Class channels after obj and the 4 box terms (checked against the labels at load)."""
        return int(outputs[0].shape[1]) - 5

    def layout_problem(self, outputs: List[np.ndarray]) -> Optional[str]:
        grid = outputs[0]
        if grid.ndim != 4 or grid.shape[0] != 1 or grid.shape[1] < 6:
            return f"outputs {shapes(outputs)}: the first is not [1, 5+C, H, W]"
        return None

    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        grid = outputs[0][0]
        _, gh, gw = grid.shape
        grid = grid.reshape(grid.shape[0], -1)  # (5+C, H*W), a view
        cls = grid[5:].argmax(axis=0)
        cls_score = grid[5:][cls, np.arange(cls.size)]
        score = grid[0] ** 0.6 * cls_score ** 0.4
        cell = np.flatnonzero(score >= self.score_threshold)
        score, cls = score[cell], cls[cell]
        tx, ty, tw, th = grid[1:5, cell]
        cx = (cell % gw + np.tanh(tx)) * (geom.in_w / gw)
        cy = (cell // gw + np.tanh(ty)) * (geom.in_h / gh)
        half_w = 0.5 * geom.in_w / (1.0 + np.exp(-tw))
        half_h = 0.5 * geom.in_h / (1.0 + np.exp(-th))
        boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
        keep = nms(boxes, score, self.nms_iou, self.top_k)
        return {"detections": to_detections(boxes[keep], score[keep], cls[keep], self.labels, geom),
                "classes": []}
