"""What a model runner may do with its stream, and nothing more.

A `ModelRunner` is given a `Feed` when it is made; it never sees the
`Stream`. So a runner can be built, tested or replaced on its own, and the
stream decides what a result or an event turns into.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

from lited.stream.handoff import Frame, FrameHandoff
from lited.stream.stats import StreamStats

# How frames reach the engine (runner.py): "latest" keeps one run in the engine and
# starts the newest frame when it frees (live sources); "queue" keeps a second run
# queued behind it, every frame of a lossless source (most results per second).
POLICIES = ("latest", "queue")


class Feed:
    """What a runner may do with its stream (see the module's docstring)."""
    def __init__(self, name: str, handoff: FrameHandoff, stats: StreamStats,
                 publish: Callable[[dict, Frame], None], event: Callable[..., None],
                 beat: Optional[Callable[[], None]] = None, policy: str = "latest") -> None:
        self.name = name
        self.stats = stats
        self.policy = policy  # how frames reach the engine: "latest" or "queue" (runner.py)
        self._handoff = handoff
        self._publish = publish
        self._event = event
        self._beat = beat

    @property
    def lossless(self) -> bool:
        """Every frame must be inferred (no latest-wins skipping)."""
        return self._handoff.lossless

    @property
    def active(self) -> bool:
        """Is this feed's runner the one the stream serves frames to?"""
        return self._handoff.is_active(self)

    def next_frame(self, stop: threading.Event) -> Optional[Frame]:
        """The newest frame not taken yet, held until `Frame.release()` or
        `publish` (waits up to 0.5 s); None if none or not active."""
        return self._handoff.next_frame(self, stop)

    def wake(self) -> None:
        """Wake a `next_frame` waiting in another thread (when stopping)."""
        self._handoff.wake()

    def publish(self, result: dict, frame: Frame) -> None:
        """A result of `frame` is ready: count it, set its `skipped` (frames
        not inferred since the previous result) and hand it on with the
        frame's lease, which the stream keeps while the result is its latest
        (must not block)."""
        number = result["seq"]
        result["skipped"] = skipped = self._handoff.skipped_before(number)
        self.stats.count("skipped", skipped)
        self.stats.result_published(result["timings_ms"], (result["model"], result["model_version"]))
        self._publish(result, frame)
        self._handoff.result_published(number)

    def event(self, kind: str, detail: str, **extra: object) -> None:
        self._event(kind, detail, **extra)

    def beat(self) -> None:
        """The runner's loop came round (the watchdog's beat, active runner only)."""
        if self._beat is not None and self.active:
            self._beat()
