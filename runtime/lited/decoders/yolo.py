"""Dense boxes and class scores with no NMS in the graph: the YOLO family's ONNX
exports (YOLOv5, YOLOv7, YOLOX, YOLOv8, YOLO11) and PaddleDetection's PP-YOLOE
exported without NMS.

Layouts, found by shape (a batch axis of 1 may lead):
- one tensor of N rows of K columns, `[1, N, K]` or channels first `[1, K, N]`
  (YOLOv8's `[1, 84, 8400]`): the box (4 columns), then an objectness column
  where the family has one (YOLOv5, v7, YOLOX: K = 5 + C; YOLOv8, YOLO11:
  K = 4 + C), then C class scores. A row's class score is its class column
  times its objectness;
- two tensors: boxes `[1, N, 4]` (or `[1, N, 1, 4]`, `[1, 4, N]`) and class
  scores `[1, N, C]` or `[1, C, N]` (PP-YOLOE: `[1, 8400, 4]` + `[1, 80, 8400]`).

`objectness` "auto" tells 4 + C from 5 + C by the labels: the one whose C is
the labels' count (a model without labels, or with a count that fits neither,
is refused at load and asks for `yes` or `no`). The rows are the longer axis
(a model has more anchors than columns: YOLOv8n at 160x160 still 525 to 84). `box_format`
"auto" is centre and size (`cxcywh`) for one tensor, corners (`xyxy`) for two;
`normalized` boxes are shares of the input size, else input pixels. Scores
are probabilities or logits (`cls_activation`, as `gfl`'s); a row's
objectness is taken through the same activation as its classes.

NMS runs on the boxes as given, clipped to the image after, as the families'
own post-processing does (clipped first, a box running off the edge overlaps
its neighbours more, and NMS dropped one that upstream keeps).

Vectorised: candidates are chosen once (`nms.candidates`, which thresholds
rows on objectness first), and boxes converted for the candidates only.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from ..geometry import Geometry
from .base import Decoder, shapes
from .nms import ACTIVATIONS, candidates, nms, to_detections

OBJECTNESS = ("auto", "yes", "no")
BOX_FORMATS = ("auto", "cxcywh", "xyxy")


class _Layout(NamedTuple):
    """Where the parts lie: `rows` (one tensor's, or the scores') index, channels first or not;
    the boxes' index and orientation when they are a tensor of their own; objectness; C."""
    rows: int
    rows_first_axis: bool        # True: [N, K] (rows on the first axis of the 2-D view); False: [K, N]
    boxes: Optional[int]
    boxes_rows_first: bool
    objectness: bool
    num_classes: int
    box_format: str


def _matrix_shape(shape: Tuple[int, ...]) -> Optional[Tuple[int, int]]:
    """The 2-D shape of an output once a leading batch of 1 (and YOLOv4's `[N, 1, 4]` middle 1) is gone."""
    dims = list(shape)
    while len(dims) > 2 and dims[0] == 1:
        dims.pop(0)
    if len(dims) == 3 and dims[1] == 1:
        dims.pop(1)
    return (int(dims[0]), int(dims[1])) if len(dims) == 2 else None


class YoloDecoder(Decoder):
    kind = "yolo"
    PARAMS = {
        "score_threshold": (float, 0.25),
        "nms_iou": (float, 0.45),
        "top_k": (int, 100),             # kept after NMS
        "nms_top_k": (int, 1000),        # best candidates entering NMS; 0: all
        "objectness": (str, "auto"),     # auto | yes | no
        "box_format": (str, "auto"),     # auto | cxcywh | xyxy
        "normalized": (bool, False),     # boxes as shares of the input size
        "cls_activation": (str, "auto"),  # auto | sigmoid | none
        "multi_label": (bool, False),    # a row may give one box per class over the threshold
        "class_agnostic": (bool, False),  # NMS across classes
    }
    CHOICES = {"cls_activation": ACTIVATIONS, "objectness": OBJECTNESS, "box_format": BOX_FORMATS}

    def __init__(self, params: dict, labels: List[str]) -> None:
        super().__init__(params, labels)
        self._layouts: dict = {}

    # -- layout ---------------------------------------------------------------
    def layout(self, outputs: List[np.ndarray]) -> _Layout:
        """The layout of outputs of these shapes; ValueError saying why they are none."""
        key = tuple(tuple(o.shape) for o in outputs)
        found = self._layouts.get(key)
        if found is None:
            if len(self._layouts) > 8:  # a dynamic input gives outputs of many shapes
                self._layouts.clear()
            found = self._layouts[key] = self._resolve(key)
        return found

    def _resolve(self, key: tuple) -> _Layout:
        dims = [_matrix_shape(s) for s in key]
        if len(key) == 1 and dims[0] is not None:
            return self._one_tensor(dims[0], list(key[0]))
        if len(key) == 2 and None not in dims:
            return self._two_tensors(dims, [list(k) for k in key])
        raise ValueError(f"outputs {[list(s) for s in key]}: expected one [1, N, 4 (+1) + C] (or [1, 4 (+1) + C, N]), "
                         "or boxes [1, N, 4] and scores [1, N, C] (or [1, C, N])")

    def _one_tensor(self, dims: Tuple[int, int], shape: list) -> _Layout:
        obj_options = {"yes": (True,), "no": (False,), "auto": (True, False)}[self.objectness]
        fits = [(rows_first, obj) for rows_first in (True, False) for obj in obj_options
                if dims[1 if rows_first else 0] - 4 - obj >= 1]
        count = len(self.labels)
        if count:
            exact = [f for f in fits if dims[1 if f[0] else 0] - 4 - f[1] == count]
            fits = exact or ([] if self.objectness == "auto" else fits)
        fits = [f for f in fits if dims[0 if f[0] else 1] >= dims[1 if f[0] else 0]]  # rows outnumber columns
        what = f"outputs [{shape}]"
        if not fits:
            by_labels = count and self.objectness == "auto"
            raise ValueError(f"{what}: no rows (the longer axis) of 4 box columns, "
                             f"{'an objectness column, ' if self.objectness == 'yes' else ''}then "
                             + (f"{count} class columns (one per label; or set objectness: yes or no)" if by_labels
                                else "a class column"))
        if len(fits) > 1:
            k = dims[1 if fits[0][0] else 0]
            raise ValueError(f"{what}: {k} columns are 4 + {k - 4} classes or 4 + objectness + {k - 5} classes; "
                             "set objectness: yes (YOLOv5, YOLOv7, YOLOX) or no (YOLOv8, YOLO11)"
                             + (", or give labels" if not count else ""))
        rows_first, obj = fits[0]
        k = dims[1 if rows_first else 0]
        return _Layout(0, rows_first, None, True, obj, k - 4 - obj,
                       "cxcywh" if self.box_format == "auto" else self.box_format)

    def _two_tensors(self, dims: list, shapes_: list) -> _Layout:
        if self.objectness == "yes":
            raise ValueError("objectness: yes is for one tensor of rows; boxes and scores apart have none")
        for b in (0, 1):
            box, score = dims[b], dims[1 - b]
            for box_rows_first in (True, False):
                n = box[0 if box_rows_first else 1]
                if box[1 if box_rows_first else 0] != 4:
                    continue
                for rows_first in (True, False):
                    if score[0 if rows_first else 1] == n:
                        return _Layout(1 - b, rows_first, b, box_rows_first, False,
                                       score[1 if rows_first else 0],
                                       "xyxy" if self.box_format == "auto" else self.box_format)
        raise ValueError(f"outputs {shapes_}: no boxes [N, 4] with scores of N rows beside them")

    def layout_problem(self, outputs: List[np.ndarray]) -> Optional[str]:
        try:
            self.layout(outputs)
        except ValueError as exc:
            return str(exc)
        return None

    def describe(self, outputs: List[np.ndarray]) -> Optional[str]:
        lay = self.layout(outputs)
        box = f"{lay.box_format} in {'shares of the input' if self.normalized else 'input pixels'}"
        rows = f"{list(outputs[lay.rows].shape)} ({'channels last' if lay.rows_first_axis else 'channels first'})"
        if lay.boxes is None:
            obj = "objectness" if lay.objectness else "no objectness"
            if self.objectness == "auto":  # a labels file one line off reads the other way: say it was the labels
                obj += f" (auto: by the {len(self.labels)} labels)"
            return f"one output {rows}: box {box}, {obj}, {lay.num_classes} classes"
        return f"boxes {list(outputs[lay.boxes].shape)} ({box}), scores {rows}: {lay.num_classes} classes"

    def num_classes(self, outputs: List[np.ndarray]) -> Optional[int]:
        try:
            return self.layout(outputs).num_classes
        except ValueError:
            return None

    # -- decode ---------------------------------------------------------------
    def decode(self, outputs: List[np.ndarray], geom: Geometry) -> dict:
        lay = self.layout(outputs)
        table = outputs[lay.rows].reshape(_matrix_shape(outputs[lay.rows].shape))
        table = table if lay.rows_first_axis else table.T         # [N, K] (a view)
        first = 0 if lay.boxes is not None else 4 + lay.objectness
        scores = table[:, first:first + lay.num_classes]           # [N, C]
        row, cls, score = candidates(scores, self.score_threshold, self.cls_activation, self.multi_label,
                                     self.nms_top_k, table[:, 4] if lay.objectness else None)
        if row.size == 0:
            return {"detections": [], "classes": []}
        if lay.boxes is None:
            boxes = table[row, :4].astype(np.float32)
        else:
            box_table = outputs[lay.boxes].reshape(_matrix_shape(outputs[lay.boxes].shape))
            boxes = (box_table[row] if lay.boxes_rows_first else box_table[:, row].T).astype(np.float32)
        if lay.box_format == "cxcywh":
            half = boxes[:, 2:] / 2
            boxes[:, 2:] = boxes[:, :2] + half
            boxes[:, :2] -= half
        if self.normalized:
            boxes *= np.array([geom.in_w, geom.in_h, geom.in_w, geom.in_h], np.float32)
        keep = nms(boxes, score, self.nms_iou, self.top_k, classes=None if self.class_agnostic else cls)
        return {"detections": to_detections(boxes[keep], score[keep], cls[keep], self.labels, geom),
                "classes": []}
