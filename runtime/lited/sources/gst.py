"""gst://PIPELINE — a GStreamer pipeline ending in an appsink that gives BGR.

Everything after `gst://` is gst-launch text (no lited options: `?` and
`&` belong to the pipeline). Examples:

    gst://videotestsrc ! video/x-raw,width=320,height=240 ! videoconvert
          ! video/x-raw,format=BGR ! appsink
    Jetson CSI camera:
    gst://nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720
          ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert
          ! video/x-raw,format=BGR ! appsink max-buffers=1 drop=true

For a live camera add `max-buffers=1 drop=true` to the appsink, or frames
queue up without bound when inference is slower than the camera.

Two backends: OpenCV's CAP_GSTREAMER where the installed OpenCV was built
with GStreamer (it then decodes into `out` like the other kinds); else
PyGObject (the pip opencv wheels have no GStreamer). With PyGObject each
sample is mapped and copied into `out` once with np.copyto (GStreamer owns
its buffers, so one copy is the floor). The map goes through ctypes on the
buffer's C pointer, which PyGObject gives as `hash()` of a boxed value (as
NVIDIA's DeepStream bindings use it; checked against the object at open):
PyGObject's own `Buffer.map` returns a `bytes` copy, which would make two
copies and a frame-sized allocation per frame (kept only as the fallback).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re
import time
from typing import Any, Optional

import cv2
import numpy as np

from lited.sources import opencv
from lited.sources.base import Source
from lited.sources.errors import Shape

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
ERROR_POLL_S = 0.2


def opencv_has_gstreamer() -> bool:
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


class GstSource(Source):
    kind = "gst"
    @classmethod
    def from_uri(cls, uri: str, target: str, query: str) -> "GstSource":
        return cls(uri, uri.partition("://")[2].strip(), {})

    def __init__(self, uri: str, target: str, options: dict) -> None:
        super().__init__(uri, target, options)
        if not re.search(r"\bappsink\b", target):
            raise self.error("the pipeline must end in an appsink (... ! video/x-raw,format=BGR ! appsink)")
        if len(re.findall(r"(?:^|!)\s*appsink\b", target)) > 1:  # the one not read keeps every frame
            raise self.error("one appsink only: lited reads the first, and another would keep every frame "
                             "(memory growing by the video rate)")
        # an appsink linked on was found only at open, then retried for ever (a tee's branch after it is fine)
        if re.search(r"\bappsink\b(\s+[\w-]+=\S+)*\s*!", target):
            raise self.error("the pipeline must end in an appsink: an appsink has no output to link on from")
        self._backend: Any = None

    def open(self) -> Shape:
        self._backend = _OpenCvBackend(self) if opencv_has_gstreamer() else _GiBackend(self)
        try:
            return self._backend.open()
        except BaseException:
            self.close()
            raise

    def _read(self, out: np.ndarray) -> bool:
        return self._backend.read(out)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        super().close()


class _OpenCvBackend:
    def __init__(self, source: GstSource) -> None:
        self.source = source
        self.cap: Optional[cv2.VideoCapture] = None

    def open(self) -> Shape:
        self.cap = cv2.VideoCapture(self.source.target, cv2.CAP_GSTREAMER)
        return opencv.first_frame(self.source, self.cap, "pipeline")

    def read(self, out: np.ndarray) -> bool:
        assert self.cap is not None
        return opencv.read_into(self.source, self.cap, out)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class _MapInfo(ctypes.Structure):
    """GstMapInfo, as gst_buffer_map fills it."""

    _fields_ = [
        ("memory", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("maxsize", ctypes.c_size_t),
        ("user_data", ctypes.c_void_p * 4),
        ("_gst_reserved", ctypes.c_void_p * 4),
    ]


_GST_MAP_READ = 1
_libgst: Any = None


def keep_libgcc_unwinder() -> None:
    """Call before the first `import gi` of a process that loads GStreamer.

    libgstreamer links libunwind, and PyGObject loads it into the global
    symbol scope, so libunwind's `_Unwind_*` then stand in for libgcc_s's in
    every C++ library loaded after it. A C++ exception thrown and caught
    inside such a library then crashes the process: OpenVINO's device
    enumeration did, in a process that had opened a GStreamer source.
    Loading libgcc_s into the global scope first keeps its unwinder first."""
    try:
        ctypes.CDLL(ctypes.util.find_library("gcc_s") or "libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:  # no libgcc_s (a libc++ or static toolchain): nothing to keep
        pass


def _gst() -> Any:
    """PyGObject's Gst, GstApp and GLib, initialised once, and libgstreamer
    for ctypes; ImportError or ValueError when PyGObject or a typelib is missing."""
    global _libgst
    keep_libgcc_unwinder()
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstApp", "1.0")
    from gi.repository import GLib, Gst, GstApp

    if not Gst.is_initialized():
        Gst.init(None)
    if _libgst is None:
        lib = ctypes.CDLL(ctypes.util.find_library("gstreamer-1.0") or "libgstreamer-1.0.so.0")
        lib.gst_buffer_map.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo), ctypes.c_int]
        lib.gst_buffer_map.restype = ctypes.c_int
        lib.gst_buffer_unmap.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo)]
        lib.gst_buffer_unmap.restype = None
        _libgst = lib
    return Gst, GstApp, GLib


class _FrameView:
    """A reusable numpy view description of the mapped frame's bytes."""

    def __init__(self, shape: Shape, stride: int) -> None:
        self.__array_interface__ = {
            "shape": shape,
            "strides": (stride, 3, 1),
            "typestr": "|u1",
            "data": (0, True),
            "version": 3,
        }


class _GiBackend:
    def __init__(self, source: GstSource) -> None:
        self.source = source
        self.Gst: Any = None
        self.pipeline: Any = None
        self.sink: Any = None
        self.caps: Any = None
        self.stride = 0
        self.view: Optional[_FrameView] = None
        self.info = _MapInfo()
        self.by_pointer = True

    def open(self) -> Shape:
        try:
            Gst, GstApp, GLib = _gst()
        except (ImportError, ValueError) as exc:
            raise self.source.error(f"needs PyGObject with GStreamer typelibs (OpenCV has no GStreamer): {exc}")
        self.Gst = Gst
        try:
            self.pipeline = Gst.parse_launch(self.source.target)
        except GLib.Error as exc:
            raise self.source.error(f"bad pipeline: {exc.message}")
        self.sink = self._find_appsink(Gst, GstApp)
        if self.sink is None:
            raise self.source.error("the pipeline has no appsink")
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise self._bus_error() or self.source.error("the pipeline failed to start")
        sample = self._pull(OPEN_TIMEOUT_S, "for the first frame")
        if sample is None:
            raise self.source.error("the pipeline ended before its first frame")
        buffer = sample.get_buffer()
        self.by_pointer = hash(buffer) == ctypes.c_void_p.from_address(id(buffer) + object.__basicsize__).value
        frame = np.empty(self._adopt_caps(sample), np.uint8)
        self._copy(sample, frame)
        return self.source.keep_first_frame(frame)

    def _find_appsink(self, Gst: Any, GstApp: Any) -> Any:
        if not isinstance(self.pipeline, Gst.Bin):
            return None
        it = self.pipeline.iterate_sinks()
        while True:
            res, elem = it.next()
            if res != Gst.IteratorResult.OK:
                return None
            if isinstance(elem, GstApp.AppSink):
                return elem

    def _adopt_caps(self, sample: Any) -> Shape:
        """Take the sample's caps: the frame shape and row stride."""
        self.caps = sample.get_caps()
        s = self.caps.get_structure(0)
        if s.get_name() != "video/x-raw" or s.get_value("format") != "BGR":
            raise self.source.error(f"the appsink must get video/x-raw,format=BGR, got {self.caps.to_string()}")
        w, h = s.get_value("width"), s.get_value("height")
        size = sample.get_buffer().get_size()
        self.stride = size // h
        if self.stride < w * 3:
            raise self.source.error(f"a {size}-byte buffer is too small for {w}x{h} BGR")
        self.view = _FrameView((h, w, 3), self.stride)
        return (h, w, 3)

    def _pull(self, timeout: float, when: str) -> Any:
        """The next sample; None at end of stream; SourceError on a pipeline
        error or no sample within `timeout`. Waits in short slices so an
        error (a camera unplugged: no EOS follows) surfaces at once."""
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.0, min(ERROR_POLL_S, deadline - time.monotonic()))
            sample = self.sink.try_pull_sample(int(wait * self.Gst.SECOND))
            if sample is not None:
                return sample
            # Sources push EOS after a fatal error too: check errors first.
            error = self._bus_error()
            if error is not None:
                raise error
            if self.sink.is_eos():
                return None
            if self.source.cancelled.is_set():  # a stop (reload, SIGTERM) waited the whole timeout, 6 s
                raise self.source.error("stopped while waiting for a frame")
            if time.monotonic() >= deadline:
                raise self.source.error(f"no frame within {timeout:g} s {when}")

    def _bus_error(self) -> Optional[Exception]:
        """The pipeline's pending error as a SourceError, if it posted one."""
        msg = self.pipeline.get_bus().pop_filtered(self.Gst.MessageType.ERROR)
        if msg is None:
            return None
        err, debug = msg.parse_error()
        where = msg.src.get_name() if msg.src is not None else "pipeline"
        detail = f" ({debug.strip().splitlines()[-1]})" if debug and debug.strip() else ""
        return self.source.error(f"{where}: {err.message}{detail}")

    def read(self, out: np.ndarray) -> bool:
        sample = self._pull(READ_TIMEOUT_S, "(stream stalled)")
        if sample is None:
            return False
        if not sample.get_caps().is_equal(self.caps):
            frame = np.empty(self._adopt_caps(sample), np.uint8)
            self._copy(sample, frame)
            if frame.shape != out.shape:
                raise self.source.frame_shape_changed(frame)
            np.copyto(out, frame)
            return True
        self._copy(sample, out)
        return True

    def _copy(self, sample: Any, out: np.ndarray) -> None:
        """The one copy: the mapped GstBuffer into `out`."""
        buffer = sample.get_buffer()
        need = self.stride * (out.shape[0] - 1) + out.shape[1] * 3
        if not self.by_pointer:
            data = np.frombuffer(buffer.extract_dup(0, buffer.get_size()), np.uint8)
            if data.size < need:
                raise self.source.error(f"short buffer: {data.size} bytes for {out.shape}")
            np.copyto(out, np.lib.stride_tricks.as_strided(data, out.shape, (self.stride, 3, 1)))
            return
        assert self.view is not None
        ptr = hash(buffer)
        if not _libgst.gst_buffer_map(ptr, ctypes.byref(self.info), _GST_MAP_READ):
            raise self.source.error("cannot map a GstBuffer")
        try:
            if self.info.size < need:
                raise self.source.error(f"short buffer: {self.info.size} bytes for {out.shape}")
            self.view.__array_interface__["data"] = (self.info.data, True)
            np.copyto(out, np.asarray(self.view))
        finally:
            _libgst.gst_buffer_unmap(ptr, ctypes.byref(self.info))

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.set_state(self.Gst.State.NULL)
            self.pipeline = None
            self.sink = None
