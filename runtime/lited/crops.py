"""Crops of detections: a box grown by a margin, clipped to the frame, as JPEG.

The one place that turns a detection's box into a region of its frame, so the
uplink (docs/uplink.md) and a cascade's second stage crop the same pixels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

Rect = Tuple[int, int, int, int]


def crop_rect(box: Sequence[float], margin: float, width: int, height: int) -> Optional[Rect]:
    """Integer (x1, y1, x2, y2) of `box` grown by `margin` times its width and
    height on each side, clipped to a width x height frame; None if empty."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    right, bottom = min(width, int(np.ceil(x2 + mx))), min(height, int(np.ceil(y2 + my)))
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """A BGR image (or a view into one) as JPEG file bytes."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()

