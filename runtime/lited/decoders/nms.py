"""What every box decoder shares: greedy NMS, the candidates over a threshold
of a dense head's class scores (`candidates`: gfl, yolo), and building result
entries.

Decoders differ only in how their output layout becomes boxes, scores and
class ids (in model-input pixels); candidate selection, suppression, label
lookup and the mapping to source pixels live here once so they behave the
same for every model.

NMS is OpenCV's (cv2.dnn.NMSBoxes / NMSBoxesBatched) up to
`OPENCV_UP_TO` candidates and numpy's above: measured side by side
(docs/BENCHMARKS.md, "NMS"), OpenCV is 5-30x faster on the tens of
candidates a thresholded detector leaves, but it cannot stop at `top_k`
kept boxes, so with a thousand candidates of many classes the numpy loop,
which stops there, wins. Both keep the same boxes in the same order.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..geometry import Geometry

OPENCV_UP_TO = 500  # candidates; see the module docstring


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        top_k: int = 0, classes: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices of the `[x1, y1, x2, y2]` boxes greedy NMS keeps, best first.

    A box is dropped when its IoU with an already kept, better box is above
    `iou_threshold`; equal scores keep their input order. With `classes`,
    boxes only suppress boxes of their own class. `top_k` > 0 keeps at most
    that many. Scores must be above 0 (decoders threshold them first).
    """
    if len(scores) == 0:
        return np.empty(0, dtype=np.intp)
    if len(scores) <= OPENCV_UP_TO:
        return nms_opencv(boxes, scores, iou_threshold, top_k, classes)
    return nms_numpy(boxes, scores, iou_threshold, top_k, classes)


def nms_opencv(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
               top_k: int = 0, classes: Optional[np.ndarray] = None) -> np.ndarray:
    """`nms` by cv2.dnn (its loop in C++; its own top_k limits candidates, not kept boxes)."""
    import cv2  # on use: the SDK builder imports the decoders for their layouts, in a venv without OpenCV

    xywh = np.array(boxes, dtype=np.float64)
    xywh[:, 2:] -= xywh[:, :2]
    score = np.asarray(scores, dtype=np.float32)
    if classes is None:
        keep = cv2.dnn.NMSBoxes(xywh, score, 0.0, iou_threshold)
    else:
        keep = cv2.dnn.NMSBoxesBatched(xywh, score, np.asarray(classes, dtype=np.int32), 0.0, iou_threshold)
    keep = np.asarray(keep, dtype=np.intp).reshape(-1)
    return keep[:top_k] if top_k > 0 else keep


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
              top_k: int = 0, classes: Optional[np.ndarray] = None) -> np.ndarray:
    """`nms` in numpy: one pass per *kept* box, each vectorised over the
    remaining candidates, stopping at `top_k`. Classes are shifted into
    disjoint regions (the batched NMS trick), so one pass serves all."""
    boxes = np.asarray(boxes, dtype=np.float64)  # float64: class offsets stay exact
    if classes is not None:
        span = boxes.max() - boxes.min() + 1.0
        boxes = boxes + (np.asarray(classes, dtype=np.float64) * span)[:, None]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: List[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if 0 < top_k <= len(keep):
            break
        rest = order[1:]
        w = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        h = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


ACTIVATIONS = ("auto", "sigmoid", "none")  # a score tensor's cls_activation: see candidates()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def rows_reaching(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Rows of the `[N, C]` scores with any class at or over `threshold`, ascending.

    Each row's classes side by side in memory (NanoDet, PP-PicoDet): one comparison over
    the array, then the few hits' rows; numpy's maximum along each row of 80 classes costs
    2-3x that. A transposed table (`[C, N]` in memory, YOLOv8's) takes the maximum across
    its rows, which numpy runs as one vectorised pass, faster than the comparison there.
    Measured side by side: docs/BENCHMARKS.md, "NMS"."""
    if scores.strides[0] < scores.strides[1]:
        return np.flatnonzero(scores.max(axis=1) >= threshold)
    return np.unique(np.flatnonzero(scores >= threshold) // scores.shape[1])


def candidates(scores: Union[np.ndarray, Sequence[np.ndarray]], threshold: float, activation: str,
               multi_label: bool, nms_top_k: int,
               objectness: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, classes, scores) of the `[N, C]` class scores at or over `threshold`: every
    (row, class) pair over it (`multi_label`) or each row's best class, the best `nms_top_k`
    of them (0: all), scores as float64 probabilities. `scores` may be a list of `[n_i, C]`
    parts (a head's levels), read as if stacked (rows count on across the parts) without
    stacking them. `activation`: "none" (the scores are probabilities), "sigmoid" (logits),
    "auto" (logits when any value lies outside [0, 1]: decided on all the scores, which a
    sigmoid output never trips). With logits the threshold is taken in logit space, so the
    sigmoid runs on the candidates only.
    `objectness` (`[N]`, through the same activation) multiplies each row's scores; only rows
    whose objectness alone reaches the threshold are looked at (a product of shares is never
    above either)."""
    parts = [scores] if isinstance(scores, np.ndarray) else list(scores)
    logits = activation == "sigmoid" or (activation == "auto" and any(
        a.min() < 0.0 or a.max() > 1.0 for a in parts + ([objectness] if objectness is not None else [])))
    if objectness is not None:
        p_obj = _sigmoid(objectness) if logits else objectness
        rows = np.flatnonzero(p_obj >= threshold)
        part = parts[0][rows].astype(np.float32)
        part = _sigmoid(part) if logits else part
        part *= p_obj[rows, None]
        r, cls, score = candidates(part, threshold, "none", multi_label, nms_top_k)
        return rows[r], cls, score
    if logits:
        th = min(max(threshold, 1e-7), 1 - 1e-7)
        threshold = math.log(th / (1.0 - th))
    found, start = [], 0
    for part in parts:
        rows = rows_reaching(part, threshold)
        sub = part[rows]
        if multi_label:
            r, cls = np.nonzero(sub >= threshold)
        else:
            r = np.arange(rows.size)
            cls = sub.argmax(axis=1)
        found.append((rows[r] + start, cls, sub[r, cls]))
        start += part.shape[0]
    row, cls, score = found[0] if len(found) == 1 else (np.concatenate(f) for f in zip(*found))
    if 0 < nms_top_k < score.size:
        pick = np.argpartition(-score, nms_top_k - 1)[:nms_top_k]
        row, cls, score = row[pick], cls[pick], score[pick]
    score = score.astype(np.float64)
    return row, cls, _sigmoid(score) if logits else score


def label_for(labels: Sequence[str], index: int) -> str:
    """Class name for `index`; the index itself when the labels run short,
    so a short labels file degrades the output instead of crashing."""
    return labels[index] if 0 <= index < len(labels) else str(index)


def to_detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                  labels: Sequence[str], geom: Geometry) -> List[dict]:
    """Result entries for Nx4 model-input-pixel boxes, in source pixels. A box with no
    width or height once clipped to the image (one wholly in a letterbox's pad) is left
    out: there is nothing of the image in it; so is one scored infinity or NaN (an
    engine's f16 overflowing), which JSON cannot carry (a NaN side is no width)."""
    if len(scores) == 0:
        return []
    src = geom.boxes_to_source(np.array(boxes, dtype=np.float32))
    inside = (src[:, 2] > src[:, 0]) & (src[:, 3] > src[:, 1]) & np.isfinite(scores)
    return [{"label": label_for(labels, c), "class_id": c, "score": s, "box": b}
            for c, s, b in zip(np.asarray(classes)[inside].astype(int).tolist(),
                               np.asarray(scores, dtype=np.float64)[inside].tolist(),
                               src[inside].tolist())]
