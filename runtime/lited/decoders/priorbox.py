"""SSD-style outputs with priors already decoded (UltraFace).

Outputs: scores `[1, N, C]` (softmax already applied, column
`background_class` is background) and boxes `[1, N, 4]` as normalised
`x1, y1, x2, y2`, in either order: the one of 4 columns is the boxes
(with C = 4 too, the first is the scores). Every (prior, class) pair above the threshold is a
candidate, and NMS runs per class, as the upstream `predict` does.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from ..geometry import Geometry
from .base import Decoder, shapes
from .nms import nms, to_detections


class PriorBoxDecoder(Decoder):
    kind = "priorbox"
    PARAMS = {
        "score_threshold": (float, 0.7),
        "nms_iou": (float, 0.3),
        "top_k": (int, 100),
        "background_class": (int, 0),
    }

    @staticmethod
    def _scores_boxes(outputs: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """(scores, boxes): told apart by the boxes' 4 columns, whatever the model's output order."""
        first, second = outputs[0], outputs[1]
        return (second, first) if first.shape[-1] == 4 and second.shape[-1] != 4 else (first, second)

    def num_classes(self, outputs: List[np.ndarray]) -> int:
        """Score columns, background included (checked against the labels at load)."""
        return int(self._scores_boxes(outputs)[0].shape[-1])

    def layout_problem(self, outputs: List[np.ndarray]) -> Optional[str]:
        if len(outputs) < 2:
            return f"outputs {shapes(outputs)}: expected scores [1, N, C] and boxes [1, N, 4]"
        scores, boxes = self._scores_boxes(outputs)
        if scores.ndim != 3 or boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.shape[1] != boxes.shape[1]:
            return f"outputs {shapes(outputs)}: expected scores [1, N, C] and boxes [1, N, 4]"
        if self.background_class >= scores.shape[-1]:  # no column is background: it kept background boxes
            return f"background_class {self.background_class}, but the scores have {scores.shape[-1]} classes"
        return None

    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        scores, boxes = self._scores_boxes(outputs)
        scores = scores.reshape(-1, scores.shape[-1])
        boxes = boxes.reshape(-1, 4)
        prior, cls = np.nonzero(scores >= self.score_threshold)
        fg = cls != self.background_class
        prior, cls = prior[fg], cls[fg]
        score = scores[prior, cls]
        cand = boxes[prior] * np.array([geom.in_w, geom.in_h, geom.in_w, geom.in_h], np.float32)
        keep = nms(cand, score, self.nms_iou, self.top_k, classes=cls)
        return {"detections": to_detections(cand[keep], score[keep], cls[keep], self.labels, geom),
                "classes": []}
