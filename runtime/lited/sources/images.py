"""images://DIR?fps=N&loop=1 — the images of a folder, in name order.

The folder is listed at open. With `loop`, a pass in which no image could
be read (the folder deleted, say) is a SourceError: the stream reopens with
backoff (listing the folder again) instead of skipping in a busy loop.
Images are not resized: one of another size raises FrameShapeChanged and the pipeline decides. OpenCV cannot
decode into a given buffer, so each image costs one allocation and one copy
into `out` (stills, not a camera: acceptable). `fps` paces (0: as fast as
the consumer reads); `loop` starts over after the last image.

An image that cannot be read (empty, not an image, a FIFO, over
MAX_STILL_BYTES or MAX_FRAME_PIXELS) is skipped: `FrameUnreadable` names
it once and the next read goes on with the image after it, so no image
after a bad one is lost and none before it is read twice.
"""
from __future__ import annotations

import errno

import os
from typing import List

import numpy as np

from lited.files import read_capped, unreadable
from lited.imageheader import ImageTooLarge, decode_bounded
from lited.sources.base import MAX_FRAME_PIXELS, Pacer, Source
from lited.sources.errors import FrameUnreadable, Shape
from lited.sources.options import Option, flag, rate

EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
MAX_STILL_BYTES = 256 << 20


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
        self._last_why = ""  # why the last image of this pass that could not be opened could not

    def open(self) -> Shape:
        if not os.path.isdir(self.path):
            raise self.error(f"{self.path} is not a folder (images:// reads a folder of images; file:// a video)"
                             if os.path.exists(self.path) else f"no such folder {self.path}")
        self.files = sorted(
            os.path.join(self.path, name)
            for name in os.listdir(self.path)
            if name.lower().endswith(EXTENSIONS)
        )
        if not self.files:
            raise self.error(f"no images ({', '.join(EXTENSIONS)}) in {self.path}")
        self.fps = self.options["fps"] or None
        self.pacer = Pacer(self.fps)
        self._unread: List[str] = []  # images skipped while looking for the first: reported by the next reads
        self._read_this_pass = 1      # the first frame, read here
        self._last_why = ""
        for self.index, path in enumerate(self.files, 1):
            try:
                return self.keep_first_frame(self._load(path))
            except FrameUnreadable as exc:
                self._unread.append(exc.detail)
        raise self.error(f"none of the {len(self.files)} images in {self.path} can be read")

    def _load(self, path: str) -> np.ndarray:
        """The image at `path`; FrameUnreadable (the source goes on) if it cannot be read."""
        try:
            data = read_capped(path, MAX_STILL_BYTES)
        except OSError as exc:
            # out of descriptors is the daemon's trouble, not the image's: said so (the pass that finds
            # none readable names it too)
            why = unreadable(exc) + (" (lited's open-files limit: ulimit -n, LimitNOFILE=)"
                                     if exc.errno in (errno.EMFILE, errno.ENFILE) else "")
            self._last_why = why
            raise FrameUnreadable(self.uri, f"{path}: {why}; skipped") from None
        try:
            image = decode_bounded(data, MAX_FRAME_PIXELS)
        except ImageTooLarge as exc:
            raise FrameUnreadable(self.uri, f"{path}: {exc}; skipped") from None
        if image is None:
            raise FrameUnreadable(self.uri, f"cannot decode {path} ({len(data)} bytes); skipped")
        return image

    def _read(self, out: np.ndarray) -> bool:
        if self._unread:
            raise FrameUnreadable(self.uri, self._unread.pop(0))
        if self.index >= len(self.files):
            if not self.options["loop"]:
                return False
            if not self._read_this_pass:  # the folder is gone or spoilt: reopen with backoff, never spin
                raise self.error(f"none of the {len(self.files)} images in {self.path} could be read in a pass"
                                 + (f" (the last: {self._last_why})" if self._last_why else ""))
            self.index, self._read_this_pass, self._last_why = 0, 0, ""
        self.index += 1  # past this image whatever happens: a bad one is skipped, never retried
        image = self._load(self.files[self.index - 1])
        self._read_this_pass += 1
        if image.shape != out.shape:
            raise self.frame_shape_changed(image)
        np.copyto(out, image)
        return True
