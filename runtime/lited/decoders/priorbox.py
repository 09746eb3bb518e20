"""SSD-style outputs with priors already decoded (UltraFace).

Outputs: scores `[1, N, C]` (softmax already applied, column
`background_class` is background) and boxes `[1, N, 4]` as normalised
`x1, y1, x2, y2`. Every (prior, class) pair above the threshold is a
candidate, and NMS runs per class, as the upstream `predict` does.
"""
from __future__ import annotations

from typing import List

import numpy as np

from ..geometry import Geometry
from .base import Decoder
from .nms import nms, to_detections


class PriorBoxDecoder(Decoder):
    kind = "priorbox"
    PARAMS = {
        "score_threshold": (float, 0.7),
        "nms_iou": (float, 0.3),
        "top_k": (int, 100),
        "background_class": (int, 0),
    }

    def num_classes(self, outputs: List[np.ndarray]) -> int:
        """Score columns, background included (checked against the labels at load)."""
        return int(outputs[0].shape[-1])

    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        scores = outputs[0].reshape(-1, outputs[0].shape[-1])
        boxes = outputs[1].reshape(-1, 4)
        prior, cls = np.nonzero(scores >= self.score_threshold)
        fg = cls != self.background_class
        prior, cls = prior[fg], cls[fg]
        score = scores[prior, cls]
        cand = boxes[prior] * np.array([geom.in_w, geom.in_h, geom.in_w, geom.in_h], np.float32)
        keep = nms(cand, score, self.nms_iou, self.top_k, classes=cls)
        return {"detections": to_detections(cand[keep], score[keep], cls[keep], self.labels, geom),
                "classes": []}
