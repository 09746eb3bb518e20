"""`Stream`: one source feeding one model; wires capture, hand-off and runner.

It owns what belongs to the stream as a whole: its state (connecting,
streaming, stalled, backoff, ended, stopped) and the events that report it,
the stall check, the model swap, status, and the published results' frames:
it keeps the lease of its latest result's frame (and of `keep_results`
older ones), so that frame stays readable in the ring until the next result
is out, however slow the model. `publish(result)` and `on_event(event)` are
called from the stream's threads and must not block (the bus's PUB socket
never does).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional, Tuple, Union

import numpy as np

from lited.sources import open_source
from lited.sources.base import Source
from lited.sources.errors import redact
from lited.stream.backoff import Backoff
from lited.stream.capture import CaptureLoop
from lited.stream.feed import POLICIES, Feed
from lited.stream.handoff import Frame, FrameHandoff
from lited.stream.ring import FrameRing, RingError
from lited.stream.runner import ModelRunner
from lited.stream.stats import StreamStats

if TYPE_CHECKING:
    from lited.model import Model

log = logging.getLogger("lited.stream")

STATES = ("connecting", "streaming", "stalled", "backoff", "ended", "stopped")
# Events that are logged too (a state change has its own line; `ring` is logged where it comes from),
# each kind at most EVENT_LOG_LINES times in EVENT_LOG_S a stream, the next line saying how many were
# not: a folder of unreadable images looped for ever counted errors the log never named.
LOGGED_EVENTS = {"skipped": logging.WARNING, "resized": logging.INFO}
EVENT_LOG_S = 10.0
EVENT_LOG_LINES = 5


def source_policy(source: Union[str, Source]) -> str:
    """The policy a source (or source URI, parsed only) gets unless the config
    says: "queue" when it is lossless (a file read as fast as it is inferred),
    else "latest"."""
    if isinstance(source, str):
        source = open_source(source)
    return "queue" if source.lossless else "latest"


def ring_slots(margin: int, keep_results: int = 0, held_elsewhere: int = 0) -> int:
    """Slots a stream's ring needs so that no lease is ever broken: the
    frames its runner holds, the latest result's frame and `keep_results`
    older ones, one being copied by a snapshot, `held_elsewhere` leased by
    other parts of the daemon (`hold_result_frame`: the uplink's packer), the
    latest captured frame (never rewritten) and the one being written, plus
    `margin` for apps (a frame let go of stays readable for `margin` more
    frames)."""
    return ModelRunner.FRAMES_HELD + 1 + keep_results + 1 + held_elsewhere + 2 + margin


def loss_reason(detail: str) -> str:
    """Why a source was lost, from a `backoff` state's detail (without its "; retry in N s")."""
    return detail.rpartition("; retry in ")[0] or detail


class LineBudget:
    """At most EVENT_LOG_LINES lines in EVENT_LOG_S of one kind; the first after a window that
    held more says how many were not said (the daemon's log, `lited run`'s stderr)."""

    def __init__(self) -> None:
        self._since, self._lines, self._unsaid = -EVENT_LOG_S, 0, 0

    def line(self, text: str, kind: str) -> Optional[str]:
        """`text` to say now (with the count), or None: over the budget, counted."""
        now = time.monotonic()
        if now - self._since >= EVENT_LOG_S:
            self._since, self._lines = now, 0
        if self._lines >= EVENT_LOG_LINES:
            self._unsaid += 1
            return None
        self._lines += 1
        unsaid, self._unsaid = self._unsaid, 0
        return text + (f" ({unsaid} more {kind} not said before this)" if unsaid else "")


class Stream:
    """One camera (or file) and the model on it: capture into the ring, a runner, the latest
    results' frames held for apps, state and status; the model swapped between frames at a reload."""
    def __init__(self, name: str, uri: str, model_factory: Callable, publish: Callable[[dict], None],
                 on_event: Optional[Callable[[dict], None]] = None, slots: int = 2,
                 stall_timeout: float = 5.0, backoff: tuple = (0.5, 30.0), group: Union[str, int, None] = None,
                 stats_window: int = 512, beat: Optional[Callable[[], None]] = None, keep_results: int = 0,
                 policy: Optional[str] = None, model_key: Optional[str] = None, held_elsewhere: int = 0,
                 on_ended: Optional[Callable[[], None]] = None) -> None:
        """`slots`: the apps' margin (see `ring_slots`); `keep_results`: older
        results whose frames stay readable too; `held_elsewhere`: frames that
        `hold_result_frame` callers may hold at once; `policy`: "latest" or
        "queue" (runner.py), by default "queue" for a lossless source and
        "latest" otherwise; `model_key`: the model's name in the daemon's
        config, added to every result as `model_key`; `on_ended`: called once
        the source has ended and the engine is freed (its runner beats no more)."""
        self.name = name
        self.uri = uri
        self.source = open_source(uri)  # parse and validate now: a bad URI fails before any thread starts
        policy = policy or source_policy(self.source)
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
        if keep_results < 0:
            raise ValueError(f"keep_results: expected 0 or more, got {keep_results}")
        self.policy = policy
        self.keep_results = keep_results
        self.model_key = model_key
        self.stall_timeout = stall_timeout
        self.state = "stopped"
        self.detail = ""
        self.stats = StreamStats(stats_window)
        self.runner: Optional[ModelRunner] = None
        self._runner_lock = threading.Lock()  # an ending stream and a reload's commit_model
        self._ended = False
        self._on_ended = on_ended
        self.last_result: Optional[dict] = None
        self._results: collections.deque = collections.deque()  # (result, its frame's lease), oldest first
        self._results_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()  # one snapshot lease at a time (ring_slots counts one)
        self._publish_cb = publish
        self._on_event = on_event
        self._trouble = ""  # why the source was last lost (backoff, stalled), until it streams again
        self._events_logged: dict = {}  # LOGGED_EVENTS kind -> its LineBudget
        self._beat = beat  # called by the active runner's loop at least every 0.5 s (watchdog)
        self._model_factory = model_factory
        self._state_at = 0.0  # monotonic time of the last state change
        self._stop = threading.Event()
        self._handoff = FrameHandoff(self.source.lossless, self.stats, self._stop)
        self._capture = CaptureLoop(name, self.source, ring_slots(slots, keep_results, held_elsewhere),
                                    self._handoff, self.stats,
                                    self._set_state, self._event, self._stop, Backoff(*backoff), group)

    # -- lifecycle
    def start(self, timeout: float = 120.0) -> None:
        """Build the model (raises if it fails or is not ready in `timeout` s), then start capturing."""
        self.commit_model(self.prepare(timeout), announce=False)
        self.start_capture()

    def prepare(self, timeout: float = 120.0) -> ModelRunner:
        """The stream's own model built and warm, not yet taking frames (`commit_model`, then
        `start_capture`): a reload warms every new stream before it changes anything."""
        return self.prepare_model(self._model_factory, timeout)

    def start_capture(self) -> None:
        self._capture.start()

    def stop(self, timeout: float = 6.0) -> None:
        """Stop the threads (a blocked network read ends within its read timeout,
        5 s by default) and remove the ring."""
        self._stop.set()
        self._handoff.wake()
        if self.runner:
            self.runner.stop(timeout)
        self._capture.stop(timeout)
        with self._results_lock:
            kept = [frame for _, frame in self._results]
            self._results.clear()
        for frame in kept:
            frame.release()
        self._set_state("stopped")

    def prepare_model(self, model_factory: Callable, timeout: float = 120.0) -> ModelRunner:
        """Build and warm up a new model beside the running one; it takes no
        frames until `commit_model`. Raises if it fails (nothing changes)."""
        feed = Feed(self.name, self._handoff, self.stats, self._publish, self._event, self._beat, self.policy)
        runner = ModelRunner(feed, model_factory)
        runner.start(timeout)
        return runner

    def commit_model(self, new: ModelRunner, announce: bool = True) -> None:
        """Switch to a prepared model between frames: the old one finishes the
        frame it is on, then the new one takes the next."""
        with self._runner_lock:
            if self._ended:  # ended while `new` warmed up: nothing will come for it
                new.stop()
                return
            old, self.runner = self.runner, new
        if old is not None:
            old.stop()
        self.stats.engine_down = None  # the old runner's, stopped in its backoff: the new one's engine runs
        self._model_factory = new.factory
        self._handoff.activate(new.feed)
        if announce:
            self._event("model", f"{new.model.name} {new.model.version}", model_key=self.model_key)

    def swap_model(self, model_factory: Callable, timeout: float = 120.0) -> None:
        """prepare_model then commit_model: the old model serves until the new one is warm."""
        self.commit_model(self.prepare_model(model_factory, timeout))

    @property
    def ended(self) -> bool:
        """The source ended (a file without `loop`, a folder read once): no frame will come again."""
        return self._ended

    def _free_engine(self) -> None:
        """The source ended, its last result is out: stop the runner and its
        engine process (a board's memory, and a reload warms no model for it).
        The result and its frame stay readable; status shows no engine pid."""
        with self._runner_lock:
            self._ended = True
            runner = self.runner
        if runner is not None:
            runner.stop()
        if self._on_ended is not None:
            self._on_ended()

    @property
    def model(self) -> Optional[Model]:
        return self.runner.model if self.runner else None

    @property
    def ring(self) -> Optional[FrameRing]:
        """The ring frames are written to now (None before the first frame)."""
        return self._capture.ring

    def _in_ring(self, result: dict) -> Optional[FrameRing]:
        """The ring under the stream's name, if `result` names it (segment and frame size)."""
        ring = self.ring
        if (ring is None or result.get("ring") != ring.name or result.get("generation") != ring.generation
                or ring.shape[:2] != (result["height"], result["width"])):
            return None
        return ring

    def result_frame(self, result: dict, out: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """A copy (into `out` when it fits) of the frame `result` was computed
        from; None once the ring reused its slot or was rebuilt."""
        ring = self._in_ring(result)
        if ring is None:
            return None
        if out is not None and (out.shape != ring.shape or out.dtype != ring.dtype):
            out = None
        try:
            return ring.read(result["slot"], result["slot_seq"], out)
        except RingError:  # closed under us (the stream stopped or the frame size changed)
            return None

    def hold_result_frame(self, result: dict) -> Optional[Frame]:
        """A lease of the frame `result` was computed from, for a reader in
        this process that reads it later (`view()`, then `release()` once):
        certain while `result` is one the stream keeps (its latest, or
        `keep_results` back), else only while the ring has not reused the
        slot; None when it has. The ring has room for `held_elsewhere` such
        leases at once."""
        with self._results_lock:  # a kept frame's lease cannot go while this one is taken
            frame = next((f for kept, f in reversed(self._results) if kept is result), None)
            if frame is not None:
                return frame if frame.ring.hold(frame.slot, frame.seq) else None
        ring = self._in_ring(result)
        slot, seq = result["slot"], result["slot_seq"]
        if ring is None or not ring.hold(slot, seq):
            return None
        meta = ring.meta(slot, seq)  # held: the slot keeps this frame
        return Frame(ring, slot, seq, meta, result["seq"])  # type: ignore[arg-type]

    @property
    def counters(self) -> dict:
        return self.stats.counters

    def latest_result_frame(self) -> Tuple[Optional[dict], Optional[np.ndarray]]:
        """The latest result and a copy of its own frame; (None, None) before
        the first result, (result, None) if its frame cannot be had (never
        expected while the result is the latest: its frame is held)."""
        with self._snapshot_lock:
            with self._results_lock:
                if not self._results:
                    return None, None
                result, frame = self._results[-1]
                held = frame.ring.hold(frame.slot, frame.seq)
            if not held:
                return result, None
            try:
                return result, frame.view().copy()
            except RingError:  # unmapped meanwhile
                return result, None
            finally:
                frame.release()

    # -- what the threads report
    def _publish(self, result: dict, frame: Frame) -> None:
        """Send `result` and keep its frame's lease; the lease of the result
        `keep_results + 1` back is released once this one is out. The first
        result from a ring rebuilt for a new frame size puts that ring under
        the name first (FrameRing.link), so a result's segment is always the
        one the name gives until the next result is out."""
        if self.model_key is not None:
            result["model_key"] = self.model_key
        if frame.ring.pending:
            try:
                frame.ring.link()
            except RingError as exc:  # raised into the post thread, it stopped every result for good
                log.warning("stream %s: ring %s", self.name, exc, extra={"stream": self.name, "event": "ring"})
        with self._results_lock:
            self._results.append((result, frame))
            self.last_result = result
            old = self._results.popleft() if len(self._results) > self.keep_results + 1 else None
        self._publish_cb(result)
        if old is not None:
            old[1].release()

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state and detail == self.detail:
            return
        self.state, self.detail = state, detail
        self._state_at = time.monotonic()
        level = logging.INFO  # a camera lost is a warning (`journalctl -p warning`), once for each reason
        if state in ("backoff", "stalled"):
            why = loss_reason(detail)
            level, self._trouble = (logging.WARNING if why != self._trouble else level), why
        elif state == "streaming":
            self._trouble = ""
        log.log(level, "stream %s: %s%s", self.name, state, f" ({detail})" if detail else "",
                extra={"stream": self.name, "event": state})
        self._event("state", detail, state=state)
        if state == "ended":
            self._free_engine()

    def _event(self, kind: str, detail: str, **extra) -> None:
        if kind in LOGGED_EVENTS:
            self._log_event(kind, detail)
        if self._on_event is not None:
            self._on_event({"stream": self.name, "event": kind, "detail": detail, "ts": time.time(), **extra})

    def _log_event(self, kind: str, detail: str) -> None:
        line = self._events_logged.setdefault(kind, LineBudget()).line(f"stream {self.name}: {kind}: {detail}", kind)
        if line is not None:
            log.log(LOGGED_EVENTS[kind], "%s", line, extra={"stream": self.name, "event": kind})

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
            "stream": self.name, "source": redact(self.uri), "state": self.current_state(), "detail": self.detail,
            "engine_down": self.stats.engine_down,
            "fps": round(self.fps(), 2), "counters": dict(self.stats.counters),
            "latency_ms": self.stats.timings.summary(), "ring": ring.name if ring else None,
            "policy": self.policy,
            "model": {"name": model.name, "key": self.model_key, "version": model.version,
                      "engine": model.choice.engine, "device": model.engine.device, "engine_pid": model.engine.pid,
                      "engine_busy_s": round(model.engine.busy_s, 3), "cpus": model.engine.cpus,
                      "stages": [{"name": stage.name, "engine": stage.part.choice.engine,
                                  "engine_pid": stage.part.engine.pid,
                                  "engine_busy_s": round(stage.part.engine.busy_s, 3)}
                                 for stage in model.cascade.stages]}
            if model else None,
        }
