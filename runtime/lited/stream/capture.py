"""The capture loop: a source read straight into the frame ring, for ever.

Opens the source, reads each frame into a free ring slot in place (no copy:
`read_into` on the shared-memory view), reconnects with a capped backoff
when it fails, rebuilds the ring when the frame size changes (a new segment
renamed into place: frame numbers go on, the old segment stays mapped while
frames of it are held), and at the end of a file or folder (a finite source)
or a lossless one waits for the last result before saying `ended`; a live
source that ends is reopened.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Union

from lited.sources import FrameShapeChanged, Source, SourceError
from lited.stream.backoff import Backoff
from lited.stream.handoff import FrameHandoff
from lited.stream.ring import FrameRing
from lited.stream.stats import StreamStats

log = logging.getLogger("lited.stream")


class CaptureLoop:
    def __init__(self, name: str, source: Source, slots: int, handoff: FrameHandoff, stats: StreamStats,
                 set_state: Callable[..., None], event: Callable[..., None], stop: threading.Event,
                 backoff: Optional[Backoff] = None, group: Union[str, int, None] = None) -> None:
        self.name = name
        self.source = source
        self.slots = slots  # the whole ring: what the stream can hold plus the apps' margin
        self.group = group
        self.backoff = backoff or Backoff()
        self.ring: Optional[FrameRing] = None
        self._ring_lock = threading.Lock()
        self._broken = 0  # leases the ring broke so far (logged: a sizing bug, never expected)
        self._handoff = handoff
        self._stats = stats
        self._set_state = set_state
        self._event = event
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name=f"capture-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Wait for the thread (a blocked network read ends within its read
        timeout), close the source if it ended, and remove the ring."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # never close a capture another thread is blocked reading
            self.source.close()
        with self._ring_lock:
            if self.ring is not None:
                self.ring.unlink()
            self.ring = None

    def _run(self) -> None:
        source, handoff, stats = self.source, self._handoff, self._stats
        while not self._stop.is_set():
            self._set_state("connecting")
            try:
                shape = source.open()
            except SourceError as exc:
                self._retry(str(exc))
                continue
            self._ensure_ring(shape)
            self._set_state("streaming")
            good = 0
            while not self._stop.is_set():
                handoff.wait_taken()
                with self._ring_lock:
                    ring = self.ring
                    slot, view = ring.begin_write()
                t0 = time.perf_counter()
                try:
                    ok = source.read_into(view)
                except FrameShapeChanged as exc:
                    ring.abort(slot)
                    self._event("resized", f"{exc}")
                    self._ensure_ring(source.shape)
                    continue
                except SourceError as exc:
                    ring.abort(slot)
                    source.close()
                    self._retry(str(exc))
                    break
                if not ok:
                    ring.abort(slot)
                    source.close()
                    if source.FINITE or source.lossless or self._stop.is_set():
                        handoff.wait_results(ring.frames - 1)
                        self._set_state("ended", "end of stream")
                        return
                    self._retry("end of stream")
                    break
                number = ring.frames
                handoff.publishing()
                ring.commit(slot)
                stats.frame_captured(number, (time.perf_counter() - t0 - source.waited) * 1e3)
                if ring.leases_broken != self._broken:
                    self._broken = ring.leases_broken
                    log.warning("stream %s: a frame held for a result was overwritten (%d so far): the ring "
                                "is too small for its holders", self.name, self._broken,
                                extra={"stream": self.name, "event": "lease_broken"})
                good += 1
                if good == 10:
                    self.backoff.reset()
                self._set_state("streaming")
                handoff.wake()

    def _retry(self, why: str) -> None:
        self._stats.count("errors")
        delay = self.backoff.next()
        self._set_state("backoff", f"{why}; retry in {delay:.1f} s")
        self._stop.wait(delay)
        self._stats.count("reconnects")

    def _ensure_ring(self, shape: tuple) -> None:
        """A ring for frames of `shape`: the first, or one rebuilt in place of
        the old (which frames in flight and published results keep mapped)."""
        with self._ring_lock:
            if self.ring is not None and self.ring.shape == tuple(shape):
                return
            if self.ring is None:
                self.ring = FrameRing.create(self.name, self.slots, tuple(shape), group=self.group)
            else:
                self.ring = self.ring.rebuilt(tuple(shape))
                self._broken = 0
            self._handoff.use_ring(self.ring)
