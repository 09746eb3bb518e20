"""images://DIR?fps=N&loop=1 — the images of a folder, in name order.

The folder is listed once at open. Images are not resized: one of another
size raises FrameShapeChanged and the pipeline decides. cv2.imread cannot
decode into a given buffer, so each image costs one allocation and one copy
into `out` (stills, not a camera: acceptable). `fps` paces (0: as fast as
the consumer reads); `loop` starts over after the last image.
"""
from __future__ import annotations

import os
from typing import List

import cv2
import numpy as np

from lited.sources.base import Pacer, Source
from lited.sources.errors import Shape
from lited.sources.options import Option, flag, rate

EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


class ImagesSource(Source):
    kind = "images"
    PACED_BY = "fps"
    FINITE = True
    OPTIONS = {
        "fps": Option(rate, 0.0),
        "loop": Option(flag, False),
    }

    def __init__(self, uri: str, target: str, options: dict) -> None:
        super().__init__(uri, target, options)
        self.path = self.local_path("no folder (write images:///abs/dir)")
        self.files: List[str] = []
        self.index = 0

    def open(self) -> Shape:
        if not os.path.isdir(self.path):
            raise self.error(f"no such folder {self.path}")
        self.files = sorted(
            os.path.join(self.path, name)
            for name in os.listdir(self.path)
            if name.lower().endswith(EXTENSIONS)
        )
        if not self.files:
            raise self.error(f"no images ({', '.join(EXTENSIONS)}) in {self.path}")
        self.index = 1
        self.fps = self.options["fps"] or None
        self.pacer = Pacer(self.fps)
        return self._first_frame(self._load(self.files[0]))

    def _load(self, path: str) -> np.ndarray:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise self.error(f"cannot decode {path}")
        return image

    def _read(self, out: np.ndarray) -> bool:
        if self.index >= len(self.files):
            if not self.options["loop"]:
                return False
            self.index = 0
        image = self._load(self.files[self.index])
        self.index += 1
        if image.shape != out.shape:
            raise self._frame_shape_changed(image)
        np.copyto(out, image)
        return True
