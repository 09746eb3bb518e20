"""The manifest's preprocessing, compiled once into a function that writes
straight into the model's preallocated float32 input.

Per frame: one resize into a preallocated uint8 canvas (the only pass over the
source frame), one split into planes, then one table lookup per channel
(`cv2.LUT` into the tensor's plane): a pixel has 256 values, so its scale
and shift are computed once per value, by the same `cv2.addWeighted` that
computed them per pixel before, and the lookup gives the same float32
(measured on a 352x352 plane: 28 us against addWeighted's 41). Colour order
costs nothing: it only picks which plane goes where. Nothing is allocated
while the source size stays the same; a new size rebuilds the buffers once
(and the pad of a letterbox is filled once, not per frame).

An input the engine takes as float16 (OpenVINO's `f16_images`) is looked up
in tables of those values rounded to float16, in the same pass and time: half
the bytes for the engine's core to read (docs/bundle.md).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from lited.geometry import Geometry
from lited.validate import image_input_problem

INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
                 "cubic": cv2.INTER_CUBIC}
# fit_height's default pad pixel: mid-grey, which PP-OCR's (x/255 - 0.5)/0.5 makes 0, as PaddleOCR pads
FIT_HEIGHT_PAD = 127.5


# What a lookup writes for an input of each dtype: float16 as its bits (cv2.LUT knows no half type)
TABLE_TYPES = {np.dtype(np.float32): np.dtype(np.float32), np.dtype(np.float16): np.dtype(np.int16)}


class Preprocessor:
    """`geom = pre(image)` fills `pre.tensor` (N=1) from a BGR uint8 HxWx3 image.

    `input_shape` is the model input as in the manifest: NCHW or NHWC, with
    -1 for dynamic sides (then `resize.mode` must be `keep_ratio`, which
    decides the size from the image, or `fit_height` with a dynamic width,
    which rounds the width up to one of `resize.widths`).
    """

    def __init__(self, spec: dict, input_shape: list | tuple) -> None:
        problem = image_input_problem(spec, list(input_shape))
        if problem:
            raise ValueError(problem)
        self.layout = spec.get("layout", "NCHW")
        if self.layout == "NCHW":
            _, _, in_h, in_w = input_shape
        else:
            _, in_h, in_w, _ = input_shape
        resize = spec["resize"]
        self.mode = resize["mode"]
        self.dynamic = in_h == -1 or in_w == -1
        self.widths = sorted(int(w) for w in resize.get("widths", ()))
        self.in_h, self.in_w = in_h, in_w
        self.resize = resize
        self.interp = INTERPOLATION[resize.get("interpolation", "linear")]
        scale = float(spec.get("scale", 1 / 255))
        mean = [float(m) for m in spec.get("mean", (0, 0, 0))]
        std = [float(s) for s in spec.get("std", (1, 1, 1))]
        # out = (pixel * scale - mean) / std = pixel * alpha + beta, per model channel
        self.alpha = [scale / s for s in std]
        self.beta = [-m / s for m, s in zip(mean, std)]
        # model channel c reads frame (BGR) channel src[c]
        self.src_channel = (2, 1, 0) if spec.get("color", "BGR") == "RGB" else (0, 1, 2)
        self.pad_value = float(resize.get("pad_value", FIT_HEIGHT_PAD if self.mode == "fit_height" else 114))
        # fit_height pads in float, exactly: the pad pixel's value in each model channel
        self.pad_norm = [self.pad_value * a + b for a, b in zip(self.alpha, self.beta)]
        self._pad_from = 0  # fit_height: the first padded column of the tensor (0: none)
        self._tables: dict = {}  # the tensor's dtype -> its lookup tables (_tables_for)
        self._src_size: tuple | None = None
        self.tensor = np.empty(0, np.float32)
        self.geometry: Geometry | None = None

    def plan(self, image_shape: tuple) -> tuple:
        """The input tensor shape an image of `image_shape` (H, W, ...) gives."""
        if tuple(image_shape[:2]) != self._src_size:
            self._plan(*image_shape[:2])
        return self.tensor.shape

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None) -> Geometry:
        """Fill `self.tensor`, or `out` (of shape `plan(image.shape)`, e.g. a view
        of the engine's own input buffer) from a BGR uint8 image."""
        h, w = image.shape[:2]
        if (h, w) != self._src_size:
            self._plan(h, w)
        tensor = self.tensor if out is None else out
        tables = self._tables.get(tensor.dtype)
        if tables is None:
            tables = self._tables[tensor.dtype] = self._tables_for(tensor.dtype)
        bits = tables[0].dtype  # the tensor as what the tables hold
        cv2.resize(image, self._resize_to, dst=self._resized, interpolation=self.interp)
        pad = self._pad_from
        if self.layout == "NCHW":
            cv2.split(self._canvas, self._planes)
            for c, src in enumerate(self.src_channel):
                cv2.LUT(self._planes[src], tables[c], dst=(tensor[0, c, :, :pad] if pad else tensor[0, c]).view(bits))
                if pad:
                    tensor[0, c, :, pad:] = self.pad_norm[c]
        else:
            canvas = self._canvas
            if self.src_channel[0] == 2:
                cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB, dst=self._swapped)
                canvas = self._swapped
            cv2.LUT(canvas, tables[0], dst=(tensor[0, :, :pad] if pad else tensor[0]).view(bits))
            if pad:
                tensor[0, :, pad:] = self.pad_norm
        return self.geometry  # type: ignore[return-value]

    def _tables_for(self, dtype: np.dtype) -> list:
        """Lookup tables for a tensor of `dtype`: NCHW, one per model channel; NHWC, one
        three-channel table. Each holds what the pixel values 0-255 become."""
        if dtype not in TABLE_TYPES:
            raise ValueError(f"the engine takes the image as {dtype}; preprocessing writes float32 or float16")
        ramp = np.arange(256, dtype=np.uint8).reshape(1, 256)
        values = [cv2.addWeighted(ramp, a, ramp, 0.0, b, dtype=cv2.CV_32F) for a, b in zip(self.alpha, self.beta)]
        tables = [v.astype(dtype).view(TABLE_TYPES[dtype]).reshape(256) for v in values]
        if self.layout == "NCHW":
            return tables
        return [np.ascontiguousarray(np.stack(tables, axis=-1).reshape(1, 256, 3))]

    def _plan(self, h: int, w: int) -> None:
        """Size the buffers and the source<->input mapping for one source size."""
        in_w, in_h, mode = self.in_w, self.in_h, self.mode
        ox = oy = 0.0
        crop = None
        if mode == "stretch":
            rw, rh = in_w, in_h
        elif mode == "letterbox":
            s = min(in_w / w, in_h / h)
            rw, rh = max(1, round(w * s)), max(1, round(h * s))
            if self.resize.get("align", "center") == "center":
                ox, oy = (in_w - rw) // 2, (in_h - rh) // 2
        elif mode == "short_side_crop":
            s = self.resize["short_side"] / min(w, h)
            rw, rh = max(in_w, int(w * s)), max(in_h, int(h * s))
            cx, cy = (rw - in_w) // 2, (rh - in_h) // 2
            crop = (cy, cx)
            ox, oy = -cx, -cy
        elif mode == "fit_height":  # height fixed, width as the ratio says (up to a bucket), pad right
            rh = in_h
            wanted = max(1, math.ceil(in_h * w / h))
            if in_w == -1:
                in_w = next((b for b in self.widths if b >= wanted), self.widths[-1])
            rw = min(wanted, in_w)  # squeezed beyond the widest
        else:  # keep_ratio
            s = 1.0
            if max(h, w) > self.resize["max_side"]:
                s = self.resize["max_side"] / max(h, w)
            min_side = self.resize.get("min_side")
            if min_side and min(h, w) * s < min_side:
                s = min_side / min(h, w)
            m = self.resize.get("multiple", 32)
            rh, rw = max(m, round(h * s / m) * m), max(m, round(w * s / m) * m)
            if self.dynamic:
                in_h, in_w = rh, rw
            else:  # a fixed input: fit the rounded size inside it, pad the rest
                rh, rw = min(rh, in_h), min(rw, in_w)
        self._resize_to = (rw, rh)
        self._pad_from = rw if mode == "fit_height" and rw < in_w else 0
        if mode == "fit_height":
            canvas = self._resized = np.empty((rh, rw, 3), np.uint8)
        elif mode == "letterbox" or (mode == "keep_ratio" and (rw, rh) != (in_w, in_h)):
            canvas = np.empty((in_h, in_w, 3), np.uint8)
            canvas[...] = np.uint8(min(255, max(0, round(self.pad_value))))
            self._resized = canvas[int(oy):int(oy) + rh, int(ox):int(ox) + rw]
        elif crop is not None:
            self._resized = np.empty((rh, rw, 3), np.uint8)
            canvas = self._resized[crop[0]:crop[0] + in_h, crop[1]:crop[1] + in_w]
        else:
            canvas = self._resized = np.empty((in_h, in_w, 3), np.uint8)
        self._canvas = canvas
        self._planes = [np.empty(canvas.shape[:2], np.uint8) for _ in range(3)]
        shape = (1, 3, in_h, in_w) if self.layout == "NCHW" else (1, in_h, in_w, 3)
        if self.tensor.shape != shape:  # crops of a cascade change the source size, rarely the tensor's
            self.tensor = np.empty(shape, np.float32)
        if self.layout != "NCHW":
            self._swapped = np.empty(canvas.shape, np.uint8)
        self.geometry = Geometry(w, h, in_w, in_h, rw / w, rh / h, float(ox), float(oy))
        self._src_size = (h, w)
