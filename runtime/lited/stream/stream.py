"""`Stream`: one source feeding one model; wires capture, hand-off and runner.

It owns what belongs to the stream as a whole: its state (connecting,
streaming, stalled, backoff, ended, stopped) and the events that report it,
the stall check, the model swap, and status. `publish(result)` and
`on_event(event)` are called from the stream's threads and must not block
(the bus's PUB socket never does).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, Union

from lited.sources import open_source
from lited.stream.backoff import Backoff
from lited.stream.capture import CaptureLoop
from lited.stream.feed import Feed
from lited.stream.handoff import FrameHandoff
from lited.stream.ring import FrameRing
from lited.stream.runner import ModelRunner
from lited.stream.stats import StreamStats

log = logging.getLogger("lited.stream")

STATES = ("connecting", "streaming", "stalled", "backoff", "ended", "stopped")


class Stream:
    def __init__(self, name: str, uri: str, model_factory: Callable, publish: Callable[[dict], None],
                 on_event: Optional[Callable[[dict], None]] = None, slots: int = 4,
                 stall_timeout: float = 5.0, backoff: tuple = (0.5, 30.0), group: Union[str, int, None] = None,
                 stats_window: int = 512, beat: Optional[Callable[[], None]] = None) -> None:
        self.name = name
        self.uri = uri
        self.source = open_source(uri)  # parse and validate now: a bad URI fails before any thread starts
        self.stall_timeout = stall_timeout
        self.state = "stopped"
        self.detail = ""
        self.stats = StreamStats(stats_window)
        self.runner: Optional[ModelRunner] = None
        self.last_result: Optional[dict] = None
        self._publish_cb = publish
        self._on_event = on_event
        self._beat = beat  # called by the active runner's loop at least every 0.5 s (watchdog)
        self._model_factory = model_factory
        self._state_at = 0.0  # monotonic time of the last state change
        self._stop = threading.Event()
        self._handoff = FrameHandoff(self.source.lossless, self.stats, self._stop)
        self._capture = CaptureLoop(name, self.source, slots, self._handoff, self.stats, self._set_state,
                                    self._event, self._stop, Backoff(*backoff), group)

    # -- lifecycle
    def start(self, timeout: float = 120.0) -> None:
        """Build the model (raises if it fails or is not ready in `timeout` s), then start capturing."""
        self.commit_model(self.prepare_model(self._model_factory, timeout), announce=False)
        self._capture.start()

    def stop(self, timeout: float = 6.0) -> None:
        """Stop the threads (a blocked network read ends within its read timeout,
        5 s by default) and remove the ring."""
        self._stop.set()
        self._handoff.wake()
        if self.runner:
            self.runner.stop(timeout)
        self._capture.stop(timeout)
        self._set_state("stopped")

    def prepare_model(self, model_factory: Callable, timeout: float = 120.0) -> ModelRunner:
        """Build and warm up a new model beside the running one; it takes no
        frames until `commit_model`. Raises if it fails (nothing changes)."""
        feed = Feed(self.name, self._handoff, self.stats, self._publish, self._event, self._beat)
        runner = ModelRunner(feed, model_factory)
        runner.start(timeout)
        return runner

    def commit_model(self, new: ModelRunner, announce: bool = True) -> None:
        """Switch to a prepared model between frames: the old one finishes the
        frame it is on, then the new one takes the next."""
        old = self.runner
        if old is not None:
            old.stop()
        self.runner = new
        self._model_factory = new.factory
        self._handoff.activate(new.feed)
        if announce:
            self._event("model", f"{new.model.name} {new.model.version}")

    def swap_model(self, model_factory: Callable, timeout: float = 120.0) -> None:
        """prepare_model then commit_model: the old model serves until the new one is warm."""
        self.commit_model(self.prepare_model(model_factory, timeout))

    @property
    def model(self):
        return self.runner.model if self.runner else None

    @property
    def ring(self) -> Optional[FrameRing]:
        """The ring frames are written to now (None before the first frame)."""
        return self._capture.ring

    @property
    def counters(self) -> dict:
        return self.stats.counters

    # -- what the threads report
    def _publish(self, result: dict) -> None:
        self.last_result = result
        self._publish_cb(result)

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state and detail == self.detail:
            return
        self.state, self.detail = state, detail
        self._state_at = time.monotonic()
        log.info("stream %s: %s%s", self.name, state, f" ({detail})" if detail else "",
                 extra={"stream": self.name, "event": state})
        self._event("state", detail, state=state)

    def _event(self, kind: str, detail: str, **extra) -> None:
        if self._on_event is not None:
            self._on_event({"stream": self.name, "event": kind, "detail": detail, "ts": time.time(), **extra})

    # -- state and status
    def check_stall(self) -> None:
        """Publish `stalled` once a streaming source has given no frame for
        `stall_timeout` (its capture thread is blocked in the read and cannot);
        the next frame publishes `streaming` again. Called periodically."""
        now = time.monotonic()
        if (self.state == "streaming" and now - self.stats.last_frame_at > self.stall_timeout
                and now - self._state_at > self.stall_timeout):
            self._set_state("stalled", f"no frame for {self.stall_timeout:g} s")

    def current_state(self) -> str:
        """`stalled` when streaming but no frame came for `stall_timeout`."""
        if self.state == "streaming" and time.monotonic() - self.stats.last_frame_at > self.stall_timeout:
            return "stalled"
        return self.state

    def fps(self) -> float:
        return self.stats.fps(self.stall_timeout)

    def status(self) -> dict:
        model, ring = self.model, self.ring
        return {
            "stream": self.name, "source": self.uri, "state": self.current_state(), "detail": self.detail,
            "fps": round(self.fps(), 2), "counters": dict(self.stats.counters),
            "latency_ms": self.stats.timings.summary(), "ring": ring.name if ring else None,
            "model": {"name": model.name, "version": model.version, "engine": model.choice.engine,
                      "device": model.engine.device, "engine_pid": model.engine.pid}
            if model else None,
        }
