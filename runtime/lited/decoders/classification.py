"""Classification: `[1, C]` logits or probabilities -> the top-k classes.

`softmax: false` is for models whose graph already ends in a softmax (e.g.
PP-OCR's orientation classifier); applying it twice would flatten scores.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..geometry import Geometry
from .base import Decoder, shapes
from .nms import label_for


class ClassificationDecoder(Decoder):
    kind = "classification"
    TASK = "classification"
    PARAMS = {"top_k": (int, 5), "softmax": (bool, True), "score_threshold": (float, 0.0)}
    ADDS = ("classes",)

    def num_classes(self, outputs: List[np.ndarray]) -> int:
        """Classes the model scores (checked against the labels at load): [1, C] or [1, C, 1, 1]."""
        return int(outputs[0].size)

    def layout_problem(self, outputs: List[np.ndarray]) -> Optional[str]:
        """A detector's outputs ([1, 4420, 2]) read as 8840 classes, named by number past the labels."""
        if sum(d > 1 for d in outputs[0].shape) > 1:
            return f"outputs {shapes(outputs)}: the first is not [1, C] (one score per class)"
        return None

    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        scores = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        if self.softmax:
            scores = np.exp(scores - scores.max())  # shifted: no overflow on large logits
            scores /= scores.sum()
        n = scores.size
        k = n if self.top_k <= 0 else min(self.top_k, n)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[(scores[top] >= self.score_threshold) & np.isfinite(scores[top])]  # JSON has no infinity
        classes = [{"label": label_for(self.labels, i), "class_id": i, "score": s}
                   for i, s in zip(top.tolist(), scores[top].astype(np.float64).tolist())]
        return {"detections": [], "classes": classes}
