"""An independent reference decode of NanoDet-m (the shared ONNX) on onnxruntime.

Written from RangiLyu/nanodet v0.x `gfl_head.py` (`get_single_level_center_point`:
centres (i + 0.5) * stride; `distance2bbox` clipped to the input; softmax and
integral over the 8 bins; `multiclass_nms`: every (anchor, class) over the
threshold, per-class NMS, the best 100) and hpc203's `main_nanodet.py`
(its preprocessing: plain INTER_AREA resize to 416, (x - mean) / std in BGR),
not from lited's `gfl` decoder: its own per-level loops and OpenCV's NMS.
"""
from __future__ import annotations

import cv2
import numpy as np

from lited.selftest import iou

SIZE = 416
STRIDES = (8, 16, 32)
REG_MAX = 7
MEAN = np.array([103.53, 116.28, 123.675], np.float32)
STD = np.array([57.375, 57.12, 58.395], np.float32)


def preprocess(bgr: np.ndarray) -> np.ndarray:
    img = cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return np.ascontiguousarray(((img - MEAN) / STD).transpose(2, 0, 1)[None])


def session(onnx_path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def run_onnx(sess, blob: np.ndarray) -> list:
    return sess.run([o.name for o in sess.get_outputs()], {sess.get_inputs()[0].name: blob})


def reference_decode(outs: list, src_w: int, src_h: int, score_thr: float, nms_thr: float) -> list:
    """[(class id, score, x1, y1, x2, y2)] in source pixels."""
    cls_maps, box_maps = outs[:3], outs[3:]  # the export's order: 3 class maps, then 3 distributions
    project = np.arange(REG_MAX + 1, dtype=np.float32)
    boxes, scores = [], []
    for stride, cls_score, bbox_pred in zip(STRIDES, cls_maps, box_maps):
        feat = SIZE // stride
        ys, xs = np.mgrid[0:feat, 0:feat]
        cx, cy = (xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride
        logits = bbox_pred[0].reshape(-1, REG_MAX + 1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        dist = (e / e.sum(axis=1, keepdims=True)).dot(project).reshape(-1, 4) * stride
        boxes.append(np.stack([np.clip(cx - dist[:, 0], 0, SIZE), np.clip(cy - dist[:, 1], 0, SIZE),
                               np.clip(cx + dist[:, 2], 0, SIZE), np.clip(cy + dist[:, 3], 0, SIZE)], axis=1))
        scores.append(cls_score[0])
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    rows, cols = np.where(scores > score_thr)
    conf, chosen = scores[rows, cols], boxes[rows]
    xywh = chosen.copy()
    xywh[:, 2:] -= xywh[:, :2]
    keep = np.array(cv2.dnn.NMSBoxesBatched(xywh.tolist(), conf.tolist(), cols.tolist(), score_thr, nms_thr),
                    dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-conf[keep], kind="stable")][:100]
    sx, sy = src_w / SIZE, src_h / SIZE
    return [(int(cols[i]), float(conf[i]), chosen[i, 0] * sx, chosen[i, 1] * sy, chosen[i, 2] * sx,
             chosen[i, 3] * sy) for i in keep]


def match(got: list, want: list, min_iou: float = 0.7) -> tuple:
    """(true positives, IoUs of the matches): greedy, same label, best IoU first.
    `got` and `want` hold (label, box) pairs."""
    used, ious = set(), []
    for label, box in got:
        best, best_j = 0.0, None
        for j, (wl, wb) in enumerate(want):
            if j not in used and wl == label:
                v = iou(box, wb)
                if v > best:
                    best, best_j = v, j
        if best_j is not None and best >= min_iou:
            used.add(best_j)
            ious.append(best)
    return len(ious), ious


def f1(tp: int, n_got: int, n_want: int) -> float:
    return 1.0 if n_got == n_want == 0 else 2.0 * tp / (n_got + n_want)
