"""What a stream counts and times: counters, rolling latencies, fps.

Written by the stream's threads without locks (a Counter increment and a
deque append are atomic enough for figures that are read, not acted on),
read by `status()`.
"""
from __future__ import annotations

import bisect
import collections
import time
from typing import Dict, Optional, Tuple

import numpy as np

# capture: reading the frame; wait: published -> prep starts; queue: prep done -> engine starts;
# total: published -> result ready (wait + preprocess + queue + infer + post_wait + postprocess, and a
# cascade's crop and stages; post_wait, crop and the stages are in results only, not in these summaries)
STAGES = ("capture", "wait", "preprocess", "queue", "infer", "postprocess", "total")
COUNTERS = ("captured", "inferred", "skipped", "torn", "reconnects", "errors", "engine_restarts")
# Upper bounds (ms) of the latency histograms' buckets (Prometheus `le`), +Inf implied
BUCKETS_MS = (1, 2.5, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000)
FPS_MIN_SPAN = 0.5  # s: the shortest span a capture rate is taken over (fps)
FPS_WINDOW_S = 4.0  # s: the capture rate counts the frames of this long (at least the last two)
MODEL_VERSIONS_KEPT = 8  # histograms of this many (model, version) pairs per stream, the newest


class StageTimer:
    """Milliseconds per stage of one piece of work: `lap(stage)` closes the
    stage that ran since the last lap (or since the timer was made)."""

    __slots__ = ("ms", "_at")

    def __init__(self, ms: Optional[Dict[str, float]] = None) -> None:
        self.ms: Dict[str, float] = {} if ms is None else ms
        self._at = time.perf_counter()

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        self.ms[stage] = elapsed = (now - self._at) * 1e3
        self._at = now
        return elapsed


class Timings:
    """Rolling per-stage latencies (the last `size` frames) for status and p50/p99."""

    def __init__(self, size: int = 512) -> None:
        self._data = {stage: collections.deque(maxlen=size) for stage in STAGES}

    def add(self, timings: dict) -> None:
        for stage, value in timings.items():
            if stage in self._data:
                self._data[stage].append(value)

    def summary(self) -> dict:
        out = {}
        for stage, values in self._data.items():
            if values:
                arr = np.fromiter(values, float, len(values))
                out[stage] = {"p50": round(float(np.percentile(arr, 50)), 3),
                              "p99": round(float(np.percentile(arr, 99)), 3)}
        return out


class StageHistograms:
    """Cumulative latency histograms per stage since the start, for /metrics.

    One writer (the stream's post thread): a bisect and two adds per stage
    per result, no lock; a scrape reading meanwhile may see a result half
    counted, which Prometheus' rate() does not mind."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = {stage: [0] * (len(BUCKETS_MS) + 1) for stage in STAGES}  # per bucket, last: over all
        self.sums = dict.fromkeys(STAGES, 0.0)

    def add(self, timings: dict) -> None:
        for stage, ms in timings.items():
            counts = self.counts.get(stage)
            if counts is not None:
                counts[bisect.bisect_left(BUCKETS_MS, ms)] += 1
                self.sums[stage] += ms


class StreamStats:
    """Counters, latencies and the capture rate of one stream."""

    def __init__(self, window: int = 512) -> None:
        self.counters = collections.Counter({name: 0 for name in COUNTERS})
        self.timings = Timings(window)
        self.histograms: Dict[tuple, StageHistograms] = {}  # (model, version) -> since the start
        self.last_frame_at = 0.0
        # why the stream's engine is down, while it is (its runner backs off and retries): the source
        # may stream on, and `state` says only that
        self.engine_down: Optional[str] = None
        self._captured_at: collections.deque = collections.deque(maxlen=64)
        self._capture_ms: Dict[int, float] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def frame_captured(self, frame: int, capture_ms: float, at: Optional[float] = None) -> None:
        """A frame was committed to the ring after `capture_ms` of reading, at
        `at` (`time.monotonic()`, now if None)."""
        now = time.monotonic() if at is None else at
        self.last_frame_at = now
        self._captured_at.append(now)
        self.counters["captured"] += 1
        self._capture_ms[frame] = capture_ms
        if len(self._capture_ms) > 64:
            self._capture_ms.pop(next(iter(self._capture_ms)))

    def next_frame_due(self, intervals: int = 16) -> Optional[Tuple[float, float]]:
        """When the next frame should arrive (`time.monotonic()` s) and the
        camera interval (s): the last arrival plus the median of the last
        `intervals` intervals, and that median. None unless
        the source is steady (a paced camera: the middle half of the intervals
        within 25% of the median), as a file read flat out or a stalling
        network camera is not."""
        times = list(self._captured_at)[-(intervals + 1):]
        if len(times) <= intervals:
            return None
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        median = gaps[len(gaps) // 2]
        if median <= 0 or gaps[3 * len(gaps) // 4] - gaps[len(gaps) // 4] > 0.25 * median:
            return None
        return times[-1] + median, median

    def capture_ms(self, frame: int) -> float:
        """How long reading frame `frame` took (0 once it is forgotten)."""
        return self._capture_ms.get(frame, 0.0)

    def result_published(self, timings: dict, model: tuple = ("", "")) -> None:
        """A result of `model` (name, version) with these stage timings is out."""
        self.counters["inferred"] += 1
        self.timings.add(timings)
        hist = self.histograms.get(model)
        if hist is None:
            if len(self.histograms) >= MODEL_VERSIONS_KEPT:
                self.histograms.pop(next(iter(self.histograms)))
            hist = self.histograms[model] = StageHistograms()
        hist.add(timings)

    def fps(self, idle_after: float) -> float:
        """Capture rate over the frames of the last FPS_WINDOW_S s (at least the
        last two), over FPS_MIN_SPAN s at least; 0 after `idle_after` s without
        a frame. A network camera hands out its buffered frames at once when it
        connects: over the last 64 frames that read "1061 fps", then about 10 s
        of too much, on a 5 fps camera."""
        window = list(self._captured_at)
        now = time.monotonic()
        if len(window) < 2 or now - window[-1] > idle_after:
            return 0.0
        recent = [t for t in window if t >= now - FPS_WINDOW_S]
        if len(recent) < 2:
            recent = window[-2:]
        return (len(recent) - 1) / max(recent[-1] - recent[0], FPS_MIN_SPAN)
