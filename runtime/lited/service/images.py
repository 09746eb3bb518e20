"""An `infer` request's image: encoded bytes or a raw BGR array, bounded
before it is decoded (an encoded image's size comes from its header)."""
from __future__ import annotations

import numpy as np

from lited.imageheader import MAX_IMAGE_PIXELS, image_size, imdecode
from lited.protocol import ProtocolError, integral, param

# Peak bytes OpenCV holds while decoding, per byte of the decoded BGR image
# (measured with 4000x3000 JPEG baseline and progressive, PNG 8/16-bit, grey,
# BGRA and BMP: 2.13-2.16), rounded up.
DECODE_FACTOR = 2.5


def image_cost(params: dict) -> int:
    """Bytes decoding this request's image will hold at its peak (0 for an
    `array`: it is used where it lies); ProtocolError if the image is not
    acceptable: an unknown format, a header that says no size, or more than
    MAX_IMAGE_PIXELS pixels. Reads headers only."""
    if "image" in params:
        size = image_size(param(params, "image", bytes))
        if size is None:
            raise ProtocolError("bad_request", "params.image: not a JPEG, PNG or BMP image (or its header is cut short)")
        _check_pixels("params.image", size.height, size.width, f"a {size.format.upper()} of ")
        return int(size.width * size.height * 3 * DECODE_FACTOR)
    if "array" not in params:  # else "params.shape: missing" named the wrong field
        raise ProtocolError("bad_request", "params.image or params.array: missing (an image to infer)")
    shape = param(params, "shape", list)
    shape[:] = [integral(d) for d in shape]  # 480.0 is 480 (decode_image reads this list after)
    if (len(shape) != 3 or shape[2] != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                     for d in shape)):
        raise ProtocolError("bad_request", "params.shape: expected [height, width, 3]")
    _check_pixels("params.shape", shape[0], shape[1], "")
    return 0


def _check_pixels(field: str, height: int, width: int, what: str) -> None:
    if height * width > MAX_IMAGE_PIXELS:
        raise ProtocolError("too_large", f"{field}: {what}{width}x{height} is over {MAX_IMAGE_PIXELS} pixels")


def decode_image(params: dict) -> np.ndarray:
    """The image of `params` (`image`: JPEG/PNG/BMP bytes, or `array` +
    `shape` [+ `dtype`]), or ProtocolError naming the field."""
    image_cost(params)
    if "image" in params:
        data = param(params, "image", bytes)
        image = imdecode(data)
        if image is None:
            raise ProtocolError("bad_request", "params.image: not a decodable JPEG/PNG/BMP image")
        return image
    data = param(params, "array", bytes)
    shape = param(params, "shape", list)
    dtype = param(params, "dtype", str, required=False, default="uint8")
    if dtype != "uint8":
        raise ProtocolError("bad_request", "params.dtype: only 'uint8' (BGR) is accepted")
    if len(data) != shape[0] * shape[1] * 3:
        raise ProtocolError("bad_request", f"params.array: {len(data)} bytes, shape needs {shape[0] * shape[1] * 3}")
    return np.frombuffer(data, np.uint8).reshape(shape)
