"""The model runner: one model on one stream, as three threads around its engine.

- prep: takes the newest frame from its feed (latest wins; on a live
  source as late as the engine allows, so the inferred frame is the
  freshest), preprocesses it from the ring slot straight into a free input
  set of the engine (shared memory), re-checks the slot's seq (a frame
  overwritten while read is dropped, never inferred) and submits it; up to
  two runs wait in the engine, so it goes from frame to frame without idling.
- infer: builds the model, whose engine runs in a process of its own
  (engine_process.py: paddlelite's Python `run()` holds the GIL), and
  collects the runs in order, waiting on a socket with the GIL released. If
  the engine process dies, the frames it had are lost and it is restarted
  after a capped backoff; the stream goes on.
- post: decodes an output set and publishes, while the engine runs the next
  frames. A cascade's later stages run here too (their engines in processes
  of their own): the crops are cut from the frame's ring slot, whose seq is
  re-checked once they are cut, so nothing computed from a torn frame is
  attached. When the post thread is the bottleneck (a cascade), prep takes
  frames only as fast as post can use them, so a frame is still in its slot
  when its crops are cut.

A runner talks to its stream only through the `Feed` it is given. A reload
builds a new runner beside the old one, warms it up, then the stream swaps
them between frames; if the new one fails, the old one keeps serving.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, ClassVar, Optional

from lited.cascade import StageError
from lited.engines import EngineError
from lited.preprocess import Preprocessor
from lited.stream.backoff import Backoff
from lited.stream.feed import Feed
from lited.stream.ring import RingError
from lited.stream.stats import StageTimer

log = logging.getLogger("lited.stream")


class ModelRunner:
    """prep, infer and post threads of one model on one stream.

    The model's engine (`Model(..., isolated=True)`) has three input sets
    and three output sets in shared memory. An input set or output set goes
    back to its free list when its user is done.
    """

    RUNS_IN_FLIGHT = 2  # one running, one queued behind it
    POST_PROGRESS_S = 60.0  # a cascade engine run slower than this counts as hung (no watchdog beats)
    # Test hook: tests install a callable(runner) that runs in the infer thread
    # before each collect, to inject faults (a wedged driver call). None in production.
    fault_hook: ClassVar[Optional[Callable[["ModelRunner"], None]]] = None

    def __init__(self, feed: Feed, model_factory: Callable) -> None:
        self.feed = feed
        self.factory = model_factory
        self.model = None
        self.ready = threading.Event()
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._engine_lock = threading.Lock()  # submit vs restart
        self._inflight: collections.deque = collections.deque()  # (input set, output set, geom, info), oldest first
        self._failed: Optional[EngineError] = None  # a submit that failed: infer restarts the engine
        self._free_inputs: list = []
        self._free_outputs: list = []
        self._post_box: Optional[tuple] = None  # (output set, outputs, geometry, frame info): waiting for post
        # Just-in-time prep: when the running run started and how long runs and preps take
        # (moving averages), so prep takes the newest frame just before the engine would idle.
        self._run_started: Optional[float] = None
        self._last_done = 0.0
        self._infer_s = 0.0
        self._prep_s = 0.0
        self._post_s = 0.0                      # a frame's post time (decode + cascade): up at once, down slowly
        self._post_started: Optional[float] = None  # when post took up its current frame (None: idle)
        self._post_progress = time.monotonic()  # the post thread's last sign of life
        self._restarts = Backoff()
        name = feed.name
        self._infer = threading.Thread(target=self._infer_loop, name=f"infer-{name}", daemon=True)
        self._prep = threading.Thread(target=self._prep_loop, name=f"prep-{name}", daemon=True)
        self._post = threading.Thread(target=self._post_loop, name=f"post-{name}", daemon=True)

    def start(self, timeout: float = 120.0) -> None:
        """Build and warm up the model; raises (after stopping) if it fails or
        is not ready within `timeout` s. Takes frames once its feed is active."""
        self._infer.start()
        if not self.ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"stream {self.feed.name}: model not ready after {timeout:.0f} s")
        if self.error is not None:
            self.stop()
            raise self.error

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads, then the engine process."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.feed.wake()
        for thread in (self._prep, self._infer, self._post):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout)
        if self.model is not None:
            self.model.close()

    def _put_back(self, free: list, item: int) -> None:
        with self._cond:
            free.append(item)
            self._cond.notify_all()

    def _take(self, free: list) -> Optional[int]:
        with self._cond:
            while not free and not self._stop.is_set():
                self._cond.wait(0.5)
            return None if self._stop.is_set() else free.pop()

    # -- infer thread: builds the model, then collects its runs in order
    def _infer_loop(self) -> None:
        try:
            self.model = self.factory()
            sets = self.model.engine.input_sets
            if sets < self.RUNS_IN_FLIGHT + 1:
                raise TypeError("a stream's model needs its engine in a process of its own: Model(..., isolated=True)")
            spec, shape = self.model.bundle.preprocess, self.model.bundle.inputs[self.model.image_input]["shape"]
            self._pre = Preprocessor(spec, shape)
            self._free_inputs = list(range(sets))
            self._free_outputs = list(range(sets))
        except BaseException as exc:  # noqa: BLE001 - reported to whoever asked for the model
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self._prep.start()
        self._post.start()
        engine = self.model.engine
        waited_for_post = False
        while not self._stop.is_set():
            self.feed.beat()
            with self._cond:
                if not self._inflight and self._failed is None:
                    self._cond.wait(0.5)
                failed, self._failed = self._failed, None
                if failed is None and not self._inflight:
                    continue
            if failed is None:
                fault = ModelRunner.fault_hook
                if fault is not None:
                    fault(self)
                try:
                    outputs = engine.collect()
                except EngineError as exc:
                    failed = exc
            if failed is not None:
                with self._engine_lock:
                    self._drop_inflight()
                    self._restart_engine(engine, failed)
                    with self._cond:
                        self._failed = None  # a submit to the engine just replaced failed for the same reason
                continue
            t1 = time.perf_counter()
            with self._cond:
                input_set, output_set, geom, info = self._inflight.popleft()
                self._free_inputs.append(input_set)
                self._run_started = time.monotonic() if self._inflight else None
                self._cond.notify_all()
            started = max(info.pop("_submitted_at"), self._last_done)  # when the engine took it up
            self._last_done = t1
            if not waited_for_post:  # else the run ended while this thread waited: its time is unknown
                self._infer_s += 0.2 * ((t1 - started) - self._infer_s)
            timings = info["timings_ms"]
            timings["queue"] = (started - info.pop("_prepped_at")) * 1e3
            timings["infer"] = (t1 - started) * 1e3
            with self._cond:
                waited_for_post = self._post_box is not None
                while self._post_box is not None and not self._stop.is_set():
                    self._cond.wait(0.5)
                    if time.monotonic() - self._post_progress < self.POST_PROGRESS_S:
                        self.feed.beat()  # waiting for a slow cascade is not hanging
                self._post_box = (output_set, outputs, geom, info)
                self._cond.notify_all()
            self._restarts.reset()

    def _drop_inflight(self) -> None:
        """The engine failed: the frames it had are lost; free their sets."""
        with self._cond:
            for input_set, output_set, _, _ in self._inflight:
                self._free_inputs.append(input_set)
                self._free_outputs.append(output_set)
            self._inflight.clear()
            self._run_started = None
            self._cond.notify_all()

    def _restart_engine(self, engine, exc: EngineError) -> None:
        """The engine process died or failed: say so, wait (capped backoff),
        and start a fresh one for the same model. The frames it had are
        lost; the stream and everything else in the daemon keep going."""
        feed = self.feed
        while not self._stop.is_set():
            delay = self._restarts.next()
            feed.stats.count("engine_restarts")
            log.warning("stream %s: %s; restarting the engine in %.1f s", feed.name, exc, delay,
                        extra={"stream": feed.name, "event": "engine"})
            feed.event("engine", f"{exc}; restarting in {delay:.1f} s")
            deadline = time.monotonic() + delay
            while not self._stop.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                feed.beat()  # backing off is not hanging: the watchdog must not restart the daemon
                if time.monotonic() >= deadline:
                    break
            if self._stop.is_set():
                return
            try:
                engine.restart()
                return
            except EngineError as again:
                exc = again

    # -- post thread: decode (and run the cascade) and publish while the engine runs the next frames
    def _post_loop(self) -> None:
        model = self.model
        decoder = model.decoder
        while not self._stop.is_set():
            with self._cond:
                if self._post_box is None:
                    self._cond.wait(0.5)
                if self._post_box is None:
                    continue
                output_set, outputs, geom, info = self._post_box
                self._post_box = None
                self._post_started = time.monotonic()
                self._cond.notify_all()
            t0 = time.perf_counter()
            decoded = decoder.decode(outputs, geom)
            t1 = time.perf_counter()
            self._put_back(self._free_outputs, output_set)
            timings = info["timings_ms"]
            timings["postprocess"] = (t1 - t0) * 1e3
            ring = info.pop("_ring", None)
            ran = True
            if model.cascade and decoded["detections"]:
                ran = self._run_cascade(ring, info, decoded["detections"], timings)
            if ran:  # a torn frame's quick post says nothing about the next one
                took = time.perf_counter() - t0  # up at once, down slowly: a cascade's cost varies
                self._post_s = took if took > self._post_s else self._post_s + 0.2 * (took - self._post_s)
            self._post_started = None
            timings["total"] = (time.monotonic_ns() - info.pop("_captured_ns")) / 1e6
            self.feed.publish({**info, "task": model.task, "model": model.name,
                               "model_version": model.version, **decoded})

    def _run_cascade(self, ring, info: dict, detections: list, timings: dict) -> bool:
        """Cut the crops from the frame's ring slot, check the slot still holds
        the frame, then run the later stages, which add their fields to the
        detections. A torn frame (the slot was reused meanwhile; False) or a
        failed stage engine leaves the detections without those fields."""
        timer = StageTimer(timings)
        cascade = self.model.cascade
        try:
            crops = cascade.cut(ring.view(info["slot"]), detections)
            intact = ring.is_current(info["slot"], info["slot_seq"])
        except (RingError, ValueError):
            intact = False
        timer.lap("crop")
        if not intact:
            self.feed.stats.count("torn")
            return False
        try:
            cascade.run(crops, detections, timer, self._post_alive)
        except StageError as exc:
            for stage in cascade.stages:  # all or nothing: no half-read frame
                for det in detections:
                    for key in stage.adds:
                        det.pop(key, None)
            self._restart_stage_engine(exc)
        return True

    def _post_alive(self) -> None:
        self._post_progress = time.monotonic()

    def _restart_stage_engine(self, exc: "StageError") -> None:
        """A cascade stage's engine failed (its process died): say so and
        start a fresh one; this frame's stage fields are lost, the stream
        goes on (the next failure tries again)."""
        if self._stop.is_set():  # stopping closed it
            return
        feed = self.feed
        feed.stats.count("engine_restarts")
        log.warning("stream %s: %s; restarting its engine", feed.name, exc,
                    extra={"stream": feed.name, "event": "engine"})
        feed.event("engine", f"{exc}; restarting")
        try:
            exc.stage.part.engine.restart()
        except EngineError as again:
            feed.event("engine", f"stage {exc.stage.name}: {again}")

    # -- prep thread: newest frame -> a free input set of the engine -> submitted
    def _prep_loop(self) -> None:
        feed, model, pre = self.feed, self.model, self._pre
        engine = model.engine
        while not self._stop.is_set():
            input_set = self._take(self._free_inputs)
            if input_set is None:
                return
            if not feed.lossless:
                self._wait_until_engine_almost_free()
            frame = feed.next_frame(self._stop)
            if frame is None:
                self._put_back(self._free_inputs, input_set)
                continue
            ring, meta = frame.ring, frame.meta
            t0 = time.perf_counter()
            try:
                image = ring.view(frame.slot)
                geom = pre(image, out=engine.input_view(model.image_input, pre.plan(image.shape), input_set))
                model.set_extra_inputs(geom, input_set)
                intact = ring.is_current(frame.slot, frame.seq)
            except (RingError, ValueError):
                intact = False
            if not intact:  # overwritten while we read it: never infer a torn frame
                feed.stats.count("torn")
                self._put_back(self._free_inputs, input_set)
                continue
            prep_ms = (time.perf_counter() - t0) * 1e3
            self._prep_s += 0.2 * (prep_ms / 1e3 - self._prep_s)
            info = {"stream": feed.name, "seq": frame.number, "frame_ts": meta.wall_ns / 1e9,
                    "skipped": frame.skipped, "ring": ring.name, "slot": frame.slot, "slot_seq": frame.seq,
                    "width": meta.width, "height": meta.height, "_captured_ns": meta.ts_ns,
                    "_prepped_at": time.perf_counter(),
                    "timings_ms": {"capture": feed.stats.capture_ms(frame.number),
                                   "wait": (time.monotonic_ns() - meta.ts_ns) / 1e6 - prep_ms,
                                   "preprocess": prep_ms}}
            if model.cascade:
                info["_ring"] = ring  # post cuts the crops from the frame
            if not self._submit(engine, input_set, geom, info):
                return

    def _submit(self, engine, input_set: int, geom, info: dict) -> bool:
        """Queue the prepared input set in the engine once fewer than
        RUNS_IN_FLIGHT runs are there; False when stopping."""
        output_set = self._take(self._free_outputs)
        with self._cond:
            while len(self._inflight) >= self.RUNS_IN_FLIGHT and not self._stop.is_set():
                self._cond.wait(0.5)
        if output_set is None or self._stop.is_set():
            return False
        with self._engine_lock:
            info["_submitted_at"] = time.perf_counter()
            try:
                engine.submit(input_set, output_set)
            except EngineError as exc:  # the infer thread restarts it; this frame is lost
                with self._cond:
                    self._free_inputs.append(input_set)
                    self._free_outputs.append(output_set)
                    self._failed = exc
                    self._cond.notify_all()
                return True
            with self._cond:
                self._inflight.append((input_set, output_set, geom, info))
                if len(self._inflight) == 1:
                    self._run_started = time.monotonic()
                self._cond.notify_all()
        return True

    def _wait_until_engine_almost_free(self) -> None:
        """Latest frame wins, so take it as late as possible: while the engine
        has runs, wait until about one prep time (plus a margin) before the
        last of them is done, so the inferred frame is the freshest and the
        engine still never idles. When the post thread is slower than the
        engine (a cascade), wait instead until the frame's inference would end
        just as post is free for it: a frame never waits seconds for post
        while its ring slot is reused."""
        give_up = time.monotonic() + max(1.0, 2.0 * (self._infer_s + self._post_s))
        while not self._stop.is_set():
            now = time.monotonic()
            ready_at = self._ready_at(now)
            if ready_at is None or ready_at <= now or now >= give_up:
                return
            self._stop.wait(min(ready_at - now, give_up - now, 0.5))

    def _ready_at(self, now: float) -> Optional[float]:
        """When prep should take the next frame (None: now)."""
        margin = 1.5 * self._prep_s + 0.001
        with self._cond:
            started, inflight = self._run_started, len(self._inflight)
            waiting = inflight + (self._post_box is not None)
            post_started = self._post_started
        ready = None if started is None else started + self._infer_s * inflight - margin
        if self._post_s > self._infer_s:
            post_free = (post_started + self._post_s if post_started is not None else now) + self._post_s * waiting
            post_ready = post_free - self._infer_s - margin
            ready = post_ready if ready is None else max(ready, post_ready)
        return ready

