"""Already-decoded detections (PaddleDetection export with NMS in the graph;
YOLOv10 and Ultralytics' `nms=True` exports).

Output 0 is `[N, 6]` (or `[1, N, 6]`): class, score, x1, y1, x2, y2
(`columns: class_score_box`, PaddleDetection's `multiclass_nms3`) or x1, y1,
x2, y2, score, class (`box_score_class`, the YOLO exports), with boxes assumed to be
in *model-input* pixels. PaddleDetection exports fed a real `scale_factor`
return boxes in original-image pixels instead; such a model must be fed
`scale_factor = 1` so the geometry mapping here is not applied twice. An
optional second output of one element is the count of valid rows (the
export pads); rows with a negative class are padding too.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..geometry import Geometry
from .base import Decoder, shapes
from .nms import to_detections


class BoxesDecoder(Decoder):
    kind = "boxes"
    PARAMS = {"score_threshold": (float, 0.5), "top_k": (int, 100), "columns": (str, "class_score_box")}
    CHOICES = {"columns": ("class_score_box", "box_score_class")}
    ORDER = {"class_score_box": [0, 1, 2, 3, 4, 5], "box_score_class": [5, 4, 0, 1, 2, 3]}  # -> class, score, box

    def layout_problem(self, outputs: List[np.ndarray]) -> Optional[str]:
        rows = outputs[0]
        if rows.ndim not in (2, 3) or rows.shape[-1] != 6 or (rows.ndim == 3 and rows.shape[0] != 1):
            what = "class, score, x1, y1, x2, y2" if self.columns == "class_score_box" else "x1, y1, x2, y2, score, class"
            return f"outputs {shapes(outputs)}: the first is not [N, 6] ({what})"
        return None

    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        rows = outputs[0].reshape(-1, 6)
        if self.columns != "class_score_box":
            rows = rows[:, self.ORDER[self.columns]]
        if len(outputs) > 1 and outputs[1].size == 1:
            rows = rows[: int(outputs[1].reshape(-1)[0])]
        rows = rows[(rows[:, 0] >= 0) & (rows[:, 1] >= self.score_threshold)]
        order = np.argsort(-rows[:, 1], kind="stable")
        if self.top_k > 0:
            order = order[: self.top_k]
        rows = rows[order]
        return {"detections": to_detections(rows[:, 2:6], rows[:, 1], rows[:, 0], self.labels, geom),
                "classes": []}
