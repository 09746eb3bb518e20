"""Frame sources: where the pipeline's images come from, named by a URI.

One module per kind (a `base.Source` subclass that sets `kind`):

    synth://?size=640x480&fps=30&frames=0          synth.py    drawn test pattern
    file:///path/video.mp4?loop=1&realtime=1       file.py     video file (FFmpeg)
    images:///path/dir?fps=2&loop=1                images.py   folder of images
    rtsp://cam/stream?lited_transport=tcp          network.py  RTSP camera (FFmpeg)
    http(s)://host/stream.mjpg?lited_read_timeout=5 network.py HTTP stream (FFmpeg)
    v4l2:///dev/video0?width=640&height=480&fps=30&fourcc=MJPG   v4l2.py
    gst://videotestsrc ! ... ! video/x-raw,format=BGR ! appsink  gst.py

Contract (`base.Source`): `open()` opens and returns the frame shape
(H, W, 3) BGR uint8; `read_into(out)` fills the caller's buffer in place and
returns False at end of stream; errors are `SourceError`, a size change is
`FrameShapeChanged`, one frame that cannot be read (the source goes on) is
`FrameUnreadable` (`out` untouched either way). `open_source` only parses and
validates, so a typo is reported before any device is touched.
"""
from __future__ import annotations

from lited.registry import Registry
from lited.sources.base import Pacer, Source
from lited.sources.errors import FrameShapeChanged, FrameUnreadable, SourceError
from lited.sources.options import split_uri

__all__ = ["FrameShapeChanged", "FrameUnreadable", "Pacer", "SOURCES", "Source", "SourceError", "open_source"]

SOURCES: Registry[Source] = Registry("lited.sources", Source)  # scheme -> Source subclass, one file per kind


def open_source(uri: str) -> Source:
    """Parse and validate `uri` into an unopened `Source`; SourceError if bad."""
    scheme, target, query = split_uri(uri)
    if scheme not in SOURCES:
        raise SourceError(uri, f"unknown scheme {scheme!r} (known: {', '.join(SOURCES.kinds())})")
    return SOURCES.get(scheme).from_uri(uri, target, query)
