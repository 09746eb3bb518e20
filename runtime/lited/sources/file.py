"""file://PATH?loop=1&realtime=1 — a video file decoded by OpenCV's FFmpeg.

Without `realtime` frames come as fast as the consumer reads, none dropped
(batch processing); with it they are paced at the file's own fps, like a
camera. `loop` reopens the file at its end instead of ending the stream.
"""
from __future__ import annotations

import math
import os
import stat
from typing import Optional

import cv2
import numpy as np

from lited.sources import opencv
from lited.sources.base import Pacer
from lited.sources.errors import Shape
from lited.sources.options import Option, flag


class FileSource(opencv.CaptureSource):
    kind = "file"
    PACED_BY = "realtime"
    FINITE = True
    OPTIONS = {
        "loop": Option(flag, False),
        "realtime": Option(flag, False),
    }

    def __init__(self, uri: str, target: str, options: dict) -> None:
        super().__init__(uri, target, options)
        self.path = self.local_path("no file path (write file:///abs/path.mp4 or file://rel/path.mp4)")

    def open(self) -> Shape:
        problem = file_problem(self.path)
        if problem:
            raise self.error(problem)
        self._cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        shape = opencv.first_frame(self, self._cap, self.path)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and fps > 0 else None
        if self.options["realtime"] and self.fps is None:
            self.close()
            raise self.error(f"realtime=1 but {self.path} does not say its fps")
        self.pacer = Pacer(self.fps if self.options["realtime"] else None)
        return shape

    def _read(self, out: np.ndarray) -> bool:
        assert self._cap is not None
        if opencv.read_into(self, self._cap, out):
            return True
        if not self.options["loop"]:
            return False
        # Reopening rewinds every container; seeking does not always. A file
        # gone or broken meanwhile is an error, so the stream retries with
        # backoff: ending it would end a looping stream for good.
        self._cap.release()
        self._cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if opencv.read_into(self, self._cap, out):
            return True
        self.close()
        raise self.error(f"loop: cannot start {self.path} again: {file_problem(self.path) or 'it gives no frame'}")


def file_problem(path: str) -> Optional[str]:
    """Why `path` cannot be a video file, seen without opening it, or None: said at once, where
    FFmpeg would try it for the whole open timeout and say only that it did not open."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"no such file {path}"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a folder, not a video file (images:// reads a folder of images)"
    if not stat.S_ISREG(st.st_mode):
        return f"{path}: not a regular file"
    if st.st_size == 0:
        return f"{path} is empty (0 bytes)"
    return None
