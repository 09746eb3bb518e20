"""Frames from the capture thread to the model runner.

Latest frame wins on a live source: the runner takes the newest complete
frame and the ones it passed over are counted as skipped; capture never
waits. On a lossless source (a file read as fast as it is inferred) capture
waits until the previous frame was taken, so none is dropped. Only the
active runner is served: during a model swap the new one takes no frame
until it is committed.
"""
from __future__ import annotations

import threading
import time
from typing import NamedTuple, Optional

from lited.stream.ring import FrameMeta, FrameRing, RingError
from lited.stream.stats import StreamStats


class Frame(NamedTuple):
    """A published frame as the runner takes it: where it lies and which it is."""
    ring: FrameRing
    slot: int
    seq: int        # the slot's seqlock value: the frame is intact while the slot still has it
    meta: FrameMeta
    number: int     # frame number within the stream (never restarts, across ring rebuilds too)
    skipped: int    # frames passed over since the last one taken


class FrameHandoff:
    def __init__(self, lossless: bool, stats: StreamStats, stop: threading.Event) -> None:
        self.lossless = lossless
        self.ring: Optional[FrameRing] = None
        self.frame_offset = 0  # stream frame number = offset + the current ring's own number
        self._stats = stats
        self._stop = stop
        self._cond = threading.Condition()
        self._taken = threading.Event()
        self._taken.set()
        self._last_taken = -1
        self._published = -1
        self._active: object = None

    # -- capture side
    def use_ring(self, ring: FrameRing, frame_offset: int) -> None:
        """A new ring (first frame, or a new frame size): frames come from it now."""
        with self._cond:
            self.ring, self.frame_offset = ring, frame_offset
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
        while self._published < last_frame and not self._stop.is_set() and time.monotonic() < deadline:
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
        waiting up to `timeout`; None if there was none."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while not stop.is_set() and not self._stop.is_set():
                ring = self.ring
                try:
                    latest = ring.latest() if ring is not None and self._active is token else None
                    meta = ring.meta(*latest) if latest is not None else None
                except RingError:  # rebuilt for a new frame size meanwhile: look again
                    latest = meta = None
                if meta is not None:
                    number = self.frame_offset + meta.frame
                    if number > self._last_taken:
                        skipped = number - self._last_taken - 1 if self._last_taken >= 0 else 0
                        self._last_taken = number
                        self._stats.count("skipped", skipped)
                        self._taken.set()
                        return Frame(ring, latest[0], latest[1], meta, number, skipped)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None

    def result_published(self, number: int) -> None:
        self._published = number
