"""Where a model-input pixel lies in the source image.

Preprocessing resizes, pads or crops; decoders work in model-input pixels.
One affine map per axis, `source = (model - offset) / scale`, covers stretch,
letterbox, centre crop and keep-ratio, so decoders never need to know which
resize mode ran.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Geometry:
    """Where the model input's pixels came from in the source image: the resize and pad that
    preprocessing did, undone for boxes and points."""
    src_w: int
    src_h: int
    in_w: int
    in_h: int
    sx: float = 1.0
    sy: float = 1.0
    ox: float = 0.0
    oy: float = 0.0

    def boxes_to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map Nx4 `[x1, y1, x2, y2]` boxes in model-input pixels to source
        pixels, clipped to the image. Writes in place when `boxes` is float."""
        boxes = np.asarray(boxes, dtype=np.float32)
        boxes[:, 0::2] -= self.ox
        boxes[:, 0::2] /= self.sx
        boxes[:, 1::2] -= self.oy
        boxes[:, 1::2] /= self.sy
        np.clip(boxes[:, 0::2], 0, self.src_w, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, self.src_h, out=boxes[:, 1::2])
        return boxes

    def points_to_source(self, points: np.ndarray) -> np.ndarray:
        """Map `[..., 2]` (x, y) points in model-input pixels to source pixels."""
        points = np.asarray(points, dtype=np.float32)
        points[..., 0] = np.clip((points[..., 0] - self.ox) / self.sx, 0, self.src_w)
        points[..., 1] = np.clip((points[..., 1] - self.oy) / self.sy, 0, self.src_h)
        return points
