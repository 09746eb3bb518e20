"""rtsp://... and http(s)://... — network streams through OpenCV's FFmpeg.

Query options named `lited_*` are ours and are removed from the URL FFmpeg
sees; any other query parameter is the camera's and passes through as is:

    lited_transport=tcp|udp   RTSP transport (default tcp: no lost slices)
    lited_open_timeout=S      give up connecting after S seconds (default 10)
    lited_read_timeout=S      give up on a stream silent for S seconds (default 5)

The timeouts are OpenCV's CAP_PROP_OPEN/READ_TIMEOUT_MSEC: an interrupt
callback that breaks any FFmpeg wait, so a camera that dies or hangs
without an end of stream makes `read_into` raise within the read timeout
instead of blocking. A read that ran into it is a lost stream even if it
returns a frame: on the interrupt OpenCV flushes the decoder, which then
hands out its delayed (stale) frames one timeout apiece. An open that ran
into the open timeout is refused, although OpenCV calls it open: the
interrupt cut FFmpeg's probe of the stream short, and the capture then
hands out the frames it had buffered and fails (measured: a camera that
takes 2 s to open, given 0.5 s, gave 6 frames, then a failed read; the
stream flapped between streaming and backoff for as long as it ran).

Latency options go to FFmpeg in OPENCV_FFMPEG_CAPTURE_OPTIONS, set only
while opening (an admin's own value is appended and wins):
`rtsp_transport;tcp|timeout;<us>|fflags;nobuffer|max_delay;500000`
(`timeout` is FFmpeg 5's name for the socket I/O timeout; `stimeout` is
gone; `flags;low_delay` is a decoder option and OpenCV opens the decoder
without the dictionary, so it would do nothing). OpenCV 4.11.0 ignores that variable (an inverted check, opencv issue
27091, fixed in 4.12): setting it only makes FFmpeg prefer TCP, so there
`lited_transport=udp` is refused rather than silently ignored.

Before OpenCV opens, the server is asked itself (probe.py): OpenCV's
FFmpeg opens one capture at a time per process, and a camera that never
answers must not hold the other streams' opens for lited_open_timeout.

A live stream has no end: losing it is a SourceError (the pipeline
reconnects); only a stream that declares a frame count (a video file served
over HTTP) ends with False.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import cv2
import numpy as np

from lited.sources import opencv, probe
from lited.sources.errors import Shape, SourceError
from lited.sources.options import Option, choice, parse_options, seconds, split_query

PREFIX = "lited_"
# OpenCV 4.11.0 drops OPENCV_FFMPEG_CAPTURE_OPTIONS (see the module doc).
FFMPEG_OPTIONS_IGNORED = cv2.__version__.startswith("4.11.")
ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
OPEN_TIMEOUT_SLACK = 0.02  # s: an open this close to lited_open_timeout was cut short by it
REFUSAL_TIMEOUT = 3.0  # s: to ask a server that FFmpeg could not open why
_env_lock = threading.Lock()


@contextmanager
def ffmpeg_options(options: str) -> Iterator[None]:
    """OPENCV_FFMPEG_CAPTURE_OPTIONS set to `options` (plus the admin's own
    value, which wins) while OpenCV opens a capture; it is read at open only."""
    with _env_lock:
        old = os.environ.get(ENV)
        os.environ[ENV] = f"{options}|{old}" if old else options
        try:
            yield
        finally:
            if old is None:
                del os.environ[ENV]
            else:
                os.environ[ENV] = old


class NetworkSource(opencv.CaptureSource):
    kind = ("rtsp", "http", "https")
    OPTIONS = {
        "lited_transport": Option(choice("tcp", "udp"), None),
        "lited_open_timeout": Option(seconds, 10.0),
        "lited_read_timeout": Option(seconds, 5.0),
    }

    @classmethod
    def from_uri(cls, uri: str, target: str, query: str) -> "NetworkSource":
        pairs = split_query(uri, query)
        ours = [p for p in pairs if p[0].startswith(PREFIX)]
        theirs = "&".join(raw for name, _, raw in pairs if not name.startswith(PREFIX))
        source = cls(uri, target, parse_options(uri, ours, cls.OPTIONS))
        source.url = uri.partition("?")[0] + (f"?{theirs}" if theirs else "")
        return source

    def __init__(self, uri: str, target: str, options: dict) -> None:
        super().__init__(uri, target, options)
        self.scheme = uri.partition("://")[0].lower()
        host = target.partition("/")[0].rpartition("@")[2]
        if not host:
            raise self.error(f"no host (write {self.scheme}://HOST[:PORT]/PATH)")
        if options["lited_transport"] and self.scheme != "rtsp":
            raise self.error("option 'lited_transport' applies to rtsp:// only")
        if options["lited_transport"] == "udp" and FFMPEG_OPTIONS_IGNORED:
            raise self.error(
                f"lited_transport=udp cannot be set with OpenCV {cv2.__version__}, "
                "which ignores OPENCV_FFMPEG_CAPTURE_OPTIONS (opencv issue 27091); it uses TCP"
            )
        try:
            probe.server_address(uri.partition("?")[0])
        except ValueError as exc:  # a port of 99999 or "abc" would fail at every open, for ever
            raise self.error(f"bad port: {str(exc).lower()}") from None
        self.url = uri
        self._finite = False
        self._last: Optional[np.ndarray] = None  # the last frame read (a ring slot's view): a frozen picture
        self._same_since: Optional[float] = None
        self._judged = True  # False once a reopen found the same size: a camera whose picture is still
        self._still_shape: Optional[tuple] = None  # the size when a still picture was taken for a frozen one

    def ffmpeg_options(self) -> str:
        """The FFmpeg options string for this stream."""
        read_us = int(self.options["lited_read_timeout"] * 1e6)
        opts = [f"timeout;{read_us}", "fflags;nobuffer", "max_delay;500000"]
        if self.scheme == "rtsp":
            opts.insert(0, f"rtsp_transport;{self.options['lited_transport'] or 'tcp'}")
        return "|".join(opts)

    def open(self) -> Shape:
        limit = self.options["lited_open_timeout"]
        start = time.monotonic()
        why = probe.reachable(self.url, limit, self.cancelled)  # before OpenCV's one-open-at-a-time lock
        if self.cancelled.is_set():
            raise self.error("stopped while opening")
        if why:
            raise self.error(why)
        timeouts = [  # OpenCV gets what is left of the open limit
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(1, int((limit - (time.monotonic() - start)) * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.options["lited_read_timeout"] * 1000),
        ]
        with ffmpeg_options(self.ffmpeg_options()):
            self._cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, timeouts)
        if self._cap.isOpened() and time.monotonic() - start >= limit - OPEN_TIMEOUT_SLACK:
            self.close()  # cut short by the interrupt: see the module doc
            raise self.error(f"not open within {limit:g} s (lited_open_timeout): the stream answered but "
                             "was still opening (a slow camera: raise lited_open_timeout; or it stopped "
                             "answering meanwhile)")
        try:
            shape = opencv.first_frame(self, self._cap, "stream")
        except SourceError as exc:  # FFmpeg says "cannot open": the server may say why
            why = probe.refusal(self.url, REFUSAL_TIMEOUT, self.cancelled)
            if why:
                raise self.error(f"cannot open stream: {why}") from None
            raise exc
        self._last = self._same_since = None
        if self._still_shape is not None:  # reopened for a still picture: still the same size, a still camera
            self._judged = shape != self._still_shape
            self._still_shape = None
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        self._finite = self._cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0
        return shape

    def _frozen(self, out: np.ndarray, timeout: float) -> bool:
        """http(s): the same picture to the byte for `timeout` s. OpenCV's FFmpeg, fed an MJPEG
        camera that changes its frame size mid-stream, fails to scale the new frames and hands out
        the last good one for ever, as if streaming. Every MJPEG frame is coded anew, and a
        camera's noise changes it; an RTSP (H.264) camera on a still scene can repeat a picture
        exactly, so rtsp:// is not judged. One comparison with the previous frame's slot, in C,
        nothing allocated."""
        if self.scheme == "rtsp":
            return False
        last, self._last = self._last, out
        if last is None or last.shape != out.shape or last.ctypes.data == out.ctypes.data:
            return False
        if cv2.norm(out, last, cv2.NORM_INF) != 0:
            self._same_since = None
            self._judged = True  # the picture moves again: judged again
            return False
        if not self._judged:
            return False
        now = time.monotonic()
        if self._same_since is None:
            self._same_since = now
        return now - self._same_since >= timeout

    def _read(self, out: np.ndarray) -> bool:
        assert self._cap is not None
        timeout = self.options["lited_read_timeout"]
        start = time.monotonic()
        ok = opencv.read_into(self, self._cap, out)
        waited = time.monotonic() - start
        if ok and waited < timeout:
            if not self._frozen(out, timeout):
                return True
            self._still_shape = out.shape
            self.close()
            raise self.error(f"stream lost: the picture has not changed for {timeout:g} s (lited_read_timeout): "
                             "reopening, in case the decoder is stuck (FFmpeg is, when an MJPEG camera changes "
                             "its frame size); a camera back at the same size is left to its still picture")
        finite = self._finite
        self.close()
        if finite and not ok:
            return False
        if waited < timeout:  # not the timeout: the connection closed or broke
            raise self.error(f"stream lost: the read failed after {waited:.1f} s (connection closed or broken)")
        raise self.error(f"stream lost: no frame within {timeout:g} s (lited_read_timeout)")

