"""v4l2:///dev/video0?width=640&height=480&fps=30&fourcc=MJPG — a USB or
CSI camera through OpenCV's V4L2 backend.

Options left out keep the driver's defaults. The fourcc is set first:
drivers offer sizes and rates per pixel format, and MJPG is usually what
gets a USB camera past 640x480 at full rate. The driver may round what was
asked, so the shape is taken from the first frame, not from the options.
"""
from __future__ import annotations

import os
from urllib.parse import unquote

import cv2
import numpy as np

from lited.sources import opencv
from lited.sources.errors import Shape
from lited.sources.options import Option, fourcc, positive_int, rate


PROPS = ((cv2.CAP_PROP_FRAME_WIDTH, "width"), (cv2.CAP_PROP_FRAME_HEIGHT, "height"), (cv2.CAP_PROP_FPS, "fps"))


class V4l2Source(opencv.CaptureSource):
    kind = "v4l2"
    OPTIONS = {
        "width": Option(positive_int, None),
        "height": Option(positive_int, None),
        "fps": Option(rate, None),
        "fourcc": Option(fourcc, None),
    }

    def __init__(self, uri: str, target: str, options: dict) -> None:
        super().__init__(uri, target, options)
        self.device = unquote(target)
        if not self.device.startswith("/dev/"):
            raise self.error(f"device must be a /dev path like /dev/video0, got {self.device!r}")

    def open(self) -> Shape:
        if not os.path.exists(self.device):
            raise self.error(f"cannot open {self.device}: no such device")
        opts = self.options
        self._cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if self._cap.isOpened():
            if opts["fourcc"]:
                self._cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*opts["fourcc"]))
            for prop, name in PROPS:
                if opts[name]:
                    self._cap.set(prop, opts[name])
        shape = opencv.first_frame(self, self._cap, self.device)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps > 0 else None
        return shape

    def _read(self, out: np.ndarray) -> bool:
        assert self._cap is not None
        if not opencv.read_into(self, self._cap, out):
            raise self.error(f"{self.device} stopped giving frames (unplugged?)")
        return True
