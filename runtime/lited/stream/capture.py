"""The capture loop: a source read straight into the frame ring, for ever.

Opens the source, reads each frame into a free ring slot in place (no copy:
`read_into` on the shared-memory view), reconnects with a capped backoff
when it fails (any failure: the thread never dies), skips a frame that
cannot be read (`skipped` event), rebuilds the ring when the frame size
changes or another process damaged it (`ring` event; a new segment renamed
into place: frame numbers go on, the old segment stays mapped while frames
of it are held), and at the end of a file or folder (a finite source) or a
lossless one waits for the last result before saying `ended`; a live source
that ends is reopened.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Callable, Optional, Union

from lited.errors import first_line
from lited.sources import FrameShapeChanged, FrameUnreadable, Source, SourceError
from lited.sources.base import MAX_FRAME_PIXELS
from lited.stream.backoff import Backoff
from lited.stream.handoff import FrameHandoff
from lited.stream.ring import FrameRing
from lited.stream.ring_guard import RingGuard
from lited.stream.stats import StreamStats

log = logging.getLogger("lited.stream")


class CaptureLoop:
    """The capture thread of one stream (see the module's docstring)."""
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
        self._guard = RingGuard.shared()
        self._damage: Optional[str] = None  # set by the ring guard: why the ring must be replaced
        self._handoff = handoff
        self._stats = stats
        self._set_state = set_state
        self._event = event
        self._stop = stop
        source.cancel_with(stop)  # a network open waiting on a silent camera ends with the stream
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
        """Capture until stopped or ended. Whatever goes wrong in here (a
        ring that cannot be made: no such group, no space in /dev/shm; a
        source raising something unexpected) becomes a `backoff` state with
        the reason and a retry, never a dead thread behind a stream that
        looks like it is connecting."""
        while not self._stop.is_set():
            try:
                if self._session():
                    return
            except Exception as exc:  # noqa: BLE001 - see above
                if not isinstance(exc, SourceError):  # said by the backoff's warning; its traceback with --debug
                    log.debug("stream %s: capture failed: %s", self.name, exc, exc_info=True,
                              extra={"stream": self.name, "event": "capture_failed"})
                try:
                    self.source.close()
                except Exception:  # noqa: BLE001 - it is being given up anyway
                    pass
                self._retry(str(exc) if isinstance(exc, SourceError)
                            else f"capture failed: {type(exc).__name__}: {first_line(exc)}")

    def _session(self) -> bool:
        """Open the source and read it into the ring until it fails (False:
        retry) or ends (True)."""
        source, handoff, stats = self.source, self._handoff, self._stats
        self._set_state("connecting")
        try:
            shape = source.open()
        except SourceError as exc:
            self._retry(str(exc))
            return False
        if self._stop.is_set():  # stopped while it opened: it is not streaming, and not to be retried
            source.close()
            return True
        if self.ring is not None and self.ring.shape != tuple(shape):  # a camera back at another size
            self._event("resized", f"frame shape changed from {self.ring.shape} to {tuple(shape)} (reopened)")
        self._ensure_ring(shape)
        self._set_state("streaming")
        good = 0
        while not self._stop.is_set():
            handoff.wait_taken()
            if self._damage is not None:
                self._replace_damaged_ring()
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
            except FrameUnreadable as exc:  # one bad still: say so and go on with the next
                ring.abort(slot)
                stats.count("errors")
                self._event("skipped", f"{exc}")
                continue
            except SourceError as exc:
                ring.abort(slot)
                source.close()
                self._retry(str(exc))
                return False
            except BaseException:
                ring.abort(slot)
                raise
            if not ok:
                ring.abort(slot)
                source.close()
                if source.finite or source.lossless or self._stop.is_set():
                    handoff.wait_results(ring.frames_written - 1)
                    self._set_state("ended", "end of stream")
                    return True
                self._retry("end of stream")
                return False
            number = ring.frames_written
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
        return False

    def _on_damage(self, ring: FrameRing, why: str) -> None:
        """From the ring guard's thread: the segment was already repaired;
        the capture thread replaces the current ring before its next frame
        (an older segment, kept for frames still held, only needed the repair)."""
        if ring is self.ring:
            self._damage = why
        else:
            log.warning("stream %s: ring %s (replaced already) %s; repaired", self.name, ring.name, why,
                        extra={"stream": self.name, "event": "ring"})

    def _replace_damaged_ring(self) -> None:
        why, self._damage = self._damage, None
        ring = self.ring
        self._stats.count("errors")
        log.warning("stream %s: ring %s %s; replacing it", self.name, ring.name, why,
                    extra={"stream": self.name, "event": "ring"})
        self._event("ring", f"{ring.name}: {why}; replaced by a new segment")
        self._ensure_ring(ring.shape, force=True)

    def _retry(self, why: str) -> None:
        if self._stop.is_set():  # the stream said `stopped` already: no `backoff` after it
            return
        self._stats.count("errors")
        delay = self.backoff.next()
        self._set_state("backoff", f"{why}; retry in {delay:.1f} s")
        # A lost source leaves reference cycles (GStreamer's error path: its exception's frames hold
        # a ring slot's view), and a daemon that allocates nothing per frame seldom runs the cycle
        # collector: each gst:// camera back at another size kept its old segment (2.5-10 MB of
        # /dev/shm and an fd). Rare and in a backoff: a full collection costs nothing here.
        gc.collect()
        self._stop.wait(delay)
        self._stats.count("reconnects")

    def _ensure_ring(self, shape: tuple, force: bool = False) -> None:
        """A ring for frames of `shape`: the first, or one rebuilt in place of
        the old (which frames in flight and published results keep mapped)
        when the size changed or `force`; each watched by the ring guard."""
        if shape[0] * shape[1] > MAX_FRAME_PIXELS:
            raise SourceError(self.source.uri, f"frames of {shape[1]}x{shape[0]} are over {MAX_FRAME_PIXELS} "
                                               "pixels; not making a ring for them")
        with self._ring_lock:
            if self.ring is not None and self.ring.shape == tuple(shape) and not force:
                return
            if self.ring is None:
                self.ring = FrameRing.create(self.name, self.slots, tuple(shape), group=self.group)
            else:
                self.ring = self.ring.rebuilt(tuple(shape))
                self._broken = 0
            self._guard.watch(self.ring, self._on_damage)
            self._handoff.use_ring(self.ring)
