"""An encoded image's size, read from its header before anything decodes it.

Why: a 1.1 MB PNG can say it is 20000 x 20000 pixels, and decoding it
allocates 1.2 GB (measured: the daemon went from 105 MB to 2,364 MB). So the
daemon reads the size first and refuses an image over its limit without
decoding a pixel. The formats lited takes from clients are JPEG, PNG and BMP
(docs/protocol.md); anything else is not decoded at all. `decode_bounded`
decodes a file's bytes within such a limit (files may be other formats too).
"""
from __future__ import annotations

import struct
from typing import Any, NamedTuple, Optional

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_PIXELS = 8192 * 8192  # the most pixels lited decodes an image of, or takes a frame of
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); not DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI


class ImageSize(NamedTuple):
    format: str  # "jpeg", "png" or "bmp"
    width: int
    height: int


def image_size(data: bytes) -> Optional[ImageSize]:
    """The format and size a JPEG, PNG or BMP header declares; None when
    `data` is none of them or its header is cut short or says no size."""
    try:
        if data.startswith(PNG_MAGIC):
            size = _png(data)
        elif data.startswith(b"\xff\xd8"):
            size = _jpeg(data)
        elif data.startswith(b"BM"):
            size = _bmp(data)
        else:
            return None
    except (struct.error, IndexError):  # the header ends early
        return None
    return size if size is not None and size.width > 0 and size.height > 0 else None


def _png(data: bytes) -> Optional[ImageSize]:
    length, kind, width, height = struct.unpack_from(">I4sII", data, 8)
    return ImageSize("png", width, height) if kind == b"IHDR" and length >= 8 else None


def _jpeg(data: bytes) -> Optional[ImageSize]:
    """Walk the marker segments up to the first start-of-frame."""
    pos = 2
    while True:
        while data[pos] != 0xFF:  # IndexError at the end: no frame header
            pos += 1
        while data[pos] == 0xFF:  # fill bytes
            pos += 1
        marker = data[pos]
        pos += 1
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        length, = struct.unpack_from(">H", data, pos)
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            return ImageSize("jpeg", width, height)
        pos += length


def _bmp(data: bytes) -> Optional[ImageSize]:
    header, = struct.unpack_from("<I", data, 14)
    if header == 12:  # BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return ImageSize("bmp", width, abs(height))  # negative height: rows stored top-down



class ImageTooLarge(ValueError):
    """An image whose header says more pixels than the limit: 'WxH is over N pixels'."""


JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"


def imdecode(data: bytes) -> Any:
    """The BGR image `data` encodes, or None if OpenCV cannot decode it. A JPEG cut short (a
    file copied or sent while still written, a camera that closed mid-frame) is decoded as far
    as it came, as `cv2.imread` and viewers do: `cv2.imdecode` refuses one without its end
    marker, so it is given one (a copy of the bytes, for such a JPEG only)."""
    import cv2
    import numpy as np

    if not data:
        return None
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None and data[:2] == JPEG_SOI and data[-2:] != JPEG_EOI:
            image = cv2.imdecode(np.frombuffer(data + JPEG_EOI, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV's own pixel limit, for formats whose header this module does not read
        return None
    return image if image is not None and image.size else None


def decode_bounded(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """The BGR image `data` encodes; None if OpenCV cannot decode it (or
    refuses: its own pixel limit, for formats whose header this module does
    not read, raised a cv2.error and a traceback in `lited infer`);
    ImageTooLarge if its header says more than `max_pixels` pixels, before
    anything is decoded."""
    size = image_size(data)
    if size is not None and size.width * size.height > max_pixels:
        raise ImageTooLarge(f"{size.width}x{size.height} is over {max_pixels} pixels")
    return imdecode(data)

