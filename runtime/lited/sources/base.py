"""What every source shares: the `Source` contract and pacing.

A source fills a buffer the caller owns (often a view into shared memory),
so the read path never allocates a frame: `read_into(out)` writes in place.
"""
from __future__ import annotations

import threading
import time
from typing import Any, ClassVar, Dict, Optional
from urllib.parse import unquote

import numpy as np

from lited.imageheader import MAX_IMAGE_PIXELS
from lited.sources.errors import FrameShapeChanged, Shape, SourceError, redact
from lited.sources.options import Option, parse_options, split_query

# No frame may be larger: a ring holds `slots` of them in shared memory (at
# this size 201 MB each). The capture loop refuses a source that opens larger.
MAX_FRAME_PIXELS = MAX_IMAGE_PIXELS


class Source:
    """One frame producer. `open_source` builds it; `open` touches the device.

    Subclasses set `kind` (the URI scheme or schemes: one file per kind,
    see registry.py) and `OPTIONS` (name -> `options.Option`), check their target
    in `__init__` (no I/O there), implement `open`, `_read` and `close`, and
    raise `self.frame_shape_changed(frame)` when a frame does not fit `out`.
    """

    kind: ClassVar[object] = ""  # the URI scheme, or a tuple of schemes
    OPTIONS: ClassVar[Dict[str, Option]] = {}

    PACED_BY: ClassVar[Optional[str]] = None  # the option that makes a kind live (e.g. file's `realtime`)
    #: A file or a folder has an end, where its stream ends (`loop` starts over
    #: instead, in the source); a camera or network stream that ends is reopened.
    FINITE: ClassVar[bool] = False

    @property
    def finite(self) -> bool:
        """Does this stream have an end where it ends (FINITE), rather than being reopened?"""
        return self.FINITE

    @property
    def lossless(self) -> bool:
        """True when frames wait for the consumer instead of being dropped (a
        file read as fast as it is inferred); False for a live source, where
        the newest frame wins. A kind that can be either names the option
        that paces it in PACED_BY: lossless while that option is unset."""
        return self.PACED_BY is not None and not self.options[self.PACED_BY]

    @property
    def waited(self) -> float:
        """Seconds the last `read_into` slept for pacing (not capture time)."""
        return self.pacer.waited

    @classmethod
    def from_uri(cls, uri: str, target: str, query: str) -> "Source":
        """Validate the query against `OPTIONS`; kinds with other rules override."""
        return cls(uri, target, parse_options(uri, split_query(uri, query), cls.OPTIONS))

    def __init__(self, uri: str, target: str, options: Dict[str, Any]) -> None:
        self.uri = uri
        self.target = target
        self.options = options
        self.fps: Optional[float] = None
        self.shape: Optional[Shape] = None
        self._pending: Optional[np.ndarray] = None
        self._pending_paced = False  # the pending frame's read already waited its turn (a new size)
        self.pacer = Pacer(None)
        #: Set when the stream stops: an open that waits on the network gives up (probe.py).
        self.cancelled = threading.Event()

    def cancel_with(self, stop: threading.Event) -> None:
        """Give up waiting in `open` once `stop` is set (the stream's own stop event)."""
        self.cancelled = stop

    def error(self, detail: str) -> SourceError:
        return SourceError(self.uri, detail)

    def local_path(self, missing: str) -> str:
        """The target as a local path; SourceError(`missing`) when empty."""
        path = unquote(self.target)
        if not path:
            raise self.error(missing)
        return path

    def open(self) -> Shape:
        """Open the device or stream; the frame shape (H, W, 3)."""
        raise NotImplementedError

    def read_into(self, out: np.ndarray) -> bool:
        """Fill `out` in place with the next frame; False at end of stream."""
        if self.shape is None:
            raise self.error("read before open()")
        if out.shape != self.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous uint8 array of shape {self.shape}, "
                f"got {out.dtype} {out.shape}"
            )
        if self._pending is not None and self._pending_paced:  # a new size's frame waited when it was read:
            self.pacer.waited = 0.0  # that wait is not this read's (left, capture_ms came out at minus a frame)
        else:
            self.pacer.wait()
        if self._pending is not None:
            np.copyto(out, self._pending)
            self._pending = None
            return True
        return self._read(out)

    def _read(self, out: np.ndarray) -> bool:
        raise NotImplementedError

    def keep_first_frame(self, frame: np.ndarray) -> Shape:
        """Keep a frame read while opening (it proves the stream decodes) for
        the first `read_into`; its shape is the source's."""
        self._pending, self._pending_paced = frame, False
        self.shape = tuple(frame.shape)  # type: ignore[assignment]
        return self.shape  # type: ignore[return-value]

    def frame_shape_changed(self, frame: np.ndarray) -> FrameShapeChanged:
        """Keep `frame` for the next read and build the error to raise."""
        old, self.shape = self.shape, tuple(frame.shape)  # type: ignore[assignment]
        self._pending, self._pending_paced = frame, True
        return FrameShapeChanged(self.uri, old, self.shape)  # type: ignore[arg-type]

    def close(self) -> None:
        """Release the device; safe to call twice."""
        self.shape = None
        self._pending = None
        self.pacer.reset()

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.uri)!r}>"


class Pacer:
    """Sleeps so frames leave at `fps`; a consumer late by more than a frame
    restarts the schedule instead of getting a burst of catch-up frames."""

    def __init__(self, fps: Optional[float]) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self._next: Optional[float] = None
        self.waited = 0.0  # seconds the last wait() slept: not capture time

    def reset(self) -> None:
        self._next = None

    def wait(self) -> None:
        self.waited = 0.0
        if not self.period:
            return
        now = time.monotonic()
        if self._next is None or now > self._next + self.period:
            self._next = now
        elif now < self._next:
            self.waited = self._next - now
            time.sleep(self.waited)
        self._next += self.period
