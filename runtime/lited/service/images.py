"""An `infer` request's image: encoded bytes or a raw BGR array, bounded."""
from __future__ import annotations

import cv2
import numpy as np

from lited.protocol import ProtocolError, param

MAX_IMAGE_PIXELS = 8192 * 8192


def decode_image(params: dict) -> np.ndarray:
    """The image of `params` (`image`: JPEG/PNG/BMP bytes, or `array` +
    `shape` [+ `dtype`]), or ProtocolError naming the field."""
    if "image" in params:
        data = param(params, "image", bytes)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            raise ProtocolError("bad_request", "params.image: not a decodable JPEG/PNG/BMP image")
        return image
    data = param(params, "array", bytes)
    shape = param(params, "shape", list)
    dtype = param(params, "dtype", str, required=False, default="uint8")
    if dtype != "uint8":
        raise ProtocolError("bad_request", "params.dtype: only 'uint8' (BGR) is accepted")
    if (len(shape) != 3 or shape[2] != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                     for d in shape)):
        raise ProtocolError("bad_request", "params.shape: expected [height, width, 3]")
    if shape[0] * shape[1] > MAX_IMAGE_PIXELS:
        raise ProtocolError("too_large", f"params.shape: {shape[0]}x{shape[1]} is over {MAX_IMAGE_PIXELS} pixels")
    if len(data) != shape[0] * shape[1] * 3:
        raise ProtocolError("bad_request", f"params.array: {len(data)} bytes, shape needs {shape[0] * shape[1] * 3}")
    return np.frombuffer(data, np.uint8).reshape(shape)
