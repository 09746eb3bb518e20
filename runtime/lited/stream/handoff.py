"""Frames from the capture thread to the model runner.

Latest frame wins on a live source: the runner takes the newest complete
frame and the ones it passed over are counted as skipped; capture never
waits. On a lossless source (a file read as fast as it is inferred) capture
waits until the previous frame was taken, so none is dropped. Only the
active runner is served: during a model swap the new one takes no frame
until it is committed.

A frame is handed out with a lease on its ring slot (`FrameRing.hold`): the
capture thread will not rewrite it until its taker calls `Frame.release()`,
exactly once, whatever becomes of it (published, replaced, lost).
"""
from __future__ import annotations

import threading
import time
from typing import NamedTuple, Optional

import numpy as np

from lited.stream.ring import FrameMeta, FrameRing, RingError
from lited.stream.stats import StreamStats


class Frame(NamedTuple):
    """A frame as the runner takes it: where it lies and which it is. It is
    held (leased) from `next_frame` until `release()`: intact all that time,
    whatever the camera does, so any stage may read `ring.view(slot)`."""
    ring: FrameRing
    slot: int
    seq: int        # the slot's seqlock value
    meta: FrameMeta
    number: int     # frame number within the stream (never restarts, across ring rebuilds too)

    def release(self) -> None:
        """Let the ring reuse the slot (once per frame taken)."""
        self.ring.release(self.slot)

    def view(self) -> np.ndarray:
        """The frame's pixels, read-only, zero copy."""
        return self.ring.view(self.slot)


class FrameHandoff:
    """Frames from the capture thread to the active runner (see the module's docstring)."""
    def __init__(self, lossless: bool, stats: StreamStats, stop: threading.Event) -> None:
        self.lossless = lossless
        self.ring: Optional[FrameRing] = None
        self._stats = stats
        self._stop = stop
        self._cond = threading.Condition()
        self._taken = threading.Event()
        self._taken.set()
        self._last_taken = -1
        self.published = -1  # number of the last frame whose result is out (-1: none yet)
        self._active: object = None

    # -- capture side
    def use_ring(self, ring: FrameRing) -> None:
        """A new ring (first frame, or a new frame size): frames come from it now."""
        with self._cond:
            self.ring = ring
            self._cond.notify_all()

    def wait_taken(self) -> None:
        """Lossless: block until the last published frame was taken (or stop)."""
        if self.lossless:
            while not self._taken.wait(0.5):
                if self._stop.is_set():
                    return

    def publishing(self) -> None:
        """Call just before committing a frame: the runner may take it the moment it is out."""
        self._taken.clear()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_results(self, last_frame: int, timeout: float = 30.0) -> None:
        """Wait until the result of `last_frame` is out, so `ended` comes after it."""
        deadline = time.monotonic() + timeout
        while self.published < last_frame and not self._stop.is_set() and time.monotonic() < deadline:
            self._stop.wait(0.01)

    # -- runner side
    def activate(self, token: object) -> None:
        """Serve frames to `token`'s `next_frame` calls only, from now on."""
        with self._cond:
            self._active = token
            self._cond.notify_all()

    def is_active(self, token: object) -> bool:
        return self._active is token

    def next_frame(self, token: object, stop: threading.Event, timeout: float = 0.5) -> Optional[Frame]:
        """For the active runner only: the newest complete frame not taken yet,
        held for the caller (see `Frame.release`), waiting up to `timeout`;
        None if there was none."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while not stop.is_set() and not self._stop.is_set():
                ring = self.ring
                try:
                    latest = ring.latest() if ring is not None and self._active is token else None
                    meta = ring.meta(*latest) if latest is not None else None
                except RingError:  # rebuilt for a new frame size meanwhile: look again
                    latest = meta = None
                if meta is not None and meta.frame > self._last_taken:
                    if not ring.hold(*latest):
                        continue  # rewritten since: a newer frame is out, take that
                    self._last_taken = meta.frame
                    self._taken.set()
                    return Frame(ring, latest[0], latest[1], meta, meta.frame)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None

    def skipped_before(self, number: int) -> int:
        """Frames not inferred between the last result and frame `number`'s
        (passed over, replaced by a newer one, lost with an engine)."""
        return number - self.published - 1

    def result_published(self, number: int) -> None:
        """The result of frame `number` is out."""
        self.published = number
