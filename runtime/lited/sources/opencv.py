"""The OpenCV helper: cv2.VideoCapture decoding into the caller's buffer,
for every kind that decodes through OpenCV (file, network, v4l2, gst on a
GStreamer build). Not a kind itself: `CaptureSource` sets no `kind`."""
from __future__ import annotations

import cv2
import numpy as np

from typing import Any, Dict, Optional

from lited.sources.base import Source
from lited.sources.errors import Shape


class CaptureSource(Source):
    """A source backed by one cv2.VideoCapture (`self._cap`), released on close."""

    def __init__(self, uri: str, target: str, options: Dict[str, Any]) -> None:
        super().__init__(uri, target, options)
        self._cap: Optional[cv2.VideoCapture] = None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        super().close()


def first_frame(source: Source, cap: cv2.VideoCapture, what: str) -> Shape:
    """The shape of `cap`'s first frame, kept for the first read; SourceError
    (naming `what`) when it did not open or gives no frame."""
    if not cap.isOpened():
        cap.release()
        raise source.error(f"cannot open {what}")
    ok, frame = cap.read()
    if not ok or frame is None:
        cap.release()
        raise source.error(f"{what} opened but gave no frame")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        cap.release()
        raise source.error(f"{what} gives {frame.dtype} frames of shape {frame.shape}, not BGR uint8")
    return source.keep_first_frame(frame)


def read_into(source: Source, cap: cv2.VideoCapture, out: np.ndarray) -> bool:
    """Decode the next frame straight into `out`; False when `cap` has none.

    OpenCV decodes into the array it is given when the size matches and
    allocates a new one otherwise: a new array means the stream's size
    changed, so it becomes FrameShapeChanged with `out` untouched.
    """
    ok, frame = cap.read(image=out)
    if not ok:
        return False
    if frame is not out:
        raise source.frame_shape_changed(frame)
    return True
