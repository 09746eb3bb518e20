"""Native libraries' own stderr lines, silenced unless --debug.

OpenCV (`[ WARN:0@0.134] ... findDecoder`), libpng (`libpng warning: iCCP:
known incorrect sRGB profile`), FFmpeg (`[tcp @ 0x...] Connection refused`),
GStreamer and Paddle Lite write straight to file descriptor 2, past Python,
and again at every reconnect. lited's own message already says what went
wrong, in one line. So the command line, unless --debug, moves Python's
`sys.stderr` to a copy of fd 2 and points fd 2 itself at /dev/null (engine
processes inherit it), and asks OpenCV and its FFmpeg to log errors only
(cheaper than writing to nowhere). `--debug` leaves all of it alone.
"""
from __future__ import annotations

import faulthandler
import os
import sys

#: OpenCV reads these when it loads (and the FFmpeg backend when it starts): set before `import cv2`.
NATIVE_LOG_LEVELS = {"OPENCV_LOG_LEVEL": "ERROR", "OPENCV_FFMPEG_LOGLEVEL": "-8"}  # -8: AV_LOG_QUIET


def quiet_native_output() -> None:
    """Keep Python's stderr; send what native code writes to fd 2 to /dev/null."""
    for name, value in NATIVE_LOG_LEVELS.items():
        os.environ.setdefault(name, value)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr at all: nothing to keep quiet
        return
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = os.fdopen(saved, "w", buffering=1, encoding=encoding, errors="backslashreplace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    if faulthandler.is_enabled():  # PYTHONFAULTHANDLER (the unit sets it): its stacks must still be seen
        faulthandler.enable(file=sys.stderr)
