"""synth://?size=640x480&fps=30&frames=0 — a drawn, moving test pattern.

For trying a pipeline without a camera. Frame n is a pure function of n
(same bytes every run), drawn by OpenCV straight into `out`. `fps` paces
delivery (0: as fast as the consumer reads); `frames` ends the stream after
that many frames (0: never).
"""
from __future__ import annotations

import cv2
import numpy as np

from lited.sources.base import Pacer, Source
from lited.sources.errors import Shape
from lited.sources.options import Option, count, rate, size


class SynthSource(Source):
    kind = "synth"
    PACED_BY = "fps"
    OPTIONS = {
        "size": Option(size, (640, 480)),
        "fps": Option(rate, 30.0),
        "frames": Option(count, 0),
    }

    def __init__(self, uri: str, target: str, options: dict) -> None:
        super().__init__(uri, target, options)
        if target:
            raise self.error(f"synth takes no path, got {target!r} (write synth://?size=WxH)")
        self.index = 0

    @property
    def finite(self) -> bool:
        """With `frames`, it ends there, as a file does (reopened, it drew them again, for ever)."""
        return bool(self.options["frames"])

    def open(self) -> Shape:
        w, h = self.options["size"]
        self.fps = self.options["fps"] or None
        self.pacer = Pacer(self.fps)
        self.index = 0
        self.shape = (h, w, 3)
        return self.shape

    def _read(self, out: np.ndarray) -> bool:
        if self.options["frames"] and self.index >= self.options["frames"]:
            return False
        draw(out, self.index)
        self.index += 1
        return True


def draw(out: np.ndarray, n: int) -> None:
    """Frame `n` of the pattern, in place: a bouncing ball, a sliding bar,
    a colour that cycles and the frame number."""
    h, w = out.shape[:2]
    out[...] = (40 + n % 50, 30, 30)
    r = max(2, min(w, h) // 10)
    x = _bounce(n * 7, r, w - r)
    y = _bounce(n * 5, r, h - r)
    cv2.circle(out, (x, y), r, (0, 200, 255), -1, cv2.LINE_AA)
    bar = max(2, w // 8)
    bx = (n * 4) % (w + bar) - bar
    cv2.rectangle(out, (bx, h - h // 6), (bx + bar, h - 1), (255, 120, 0), -1)
    scale = max(0.4, h / 480)
    cv2.putText(out, str(n), (8, int(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _bounce(t: int, lo: int, hi: int) -> int:
    """Position `t` steps along a path reflected between `lo` and `hi`."""
    span = max(1, hi - lo)
    t %= 2 * span
    return lo + (t if t < span else 2 * span - t)
