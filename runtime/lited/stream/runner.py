"""The model runner: one model on one stream, as three threads around its engine.

- prep: takes the newest frame from its feed, preprocesses it from the ring
  slot straight into a free input set of the engine (shared memory) and
  hands it to the engine as soon as the engine has room for it.
- infer: builds the model, whose engine runs in a process of its own
  (engine_process.py: paddlelite's Python `run()` holds the GIL), and
  collects the runs in order, waiting for each reply with the GIL released
  (on a shared-memory semaphore, or by the clock for short runs);
  the moment a run is collected the next prepared one is submitted. If the
  engine process dies, the frames it had are lost and it is restarted after
  a capped backoff; the stream goes on.
- post: decodes an output set and publishes, while the engine runs the next
  frames. A cascade's later stages run here too (their engines in processes
  of their own): the crops are cut from the frame, which its lease keeps in
  its ring slot until the result is published.

Two policies, chosen by the stream (`Feed.policy`):

- `latest` (live sources): one run in the engine, and one *prepared* run
  waiting: the newest frame, preprocessed again whenever a newer frame
  arrives (at most once a camera frame, and re-preparing takes at most half
  of a core's CPU time). When the engine frees, that frame starts: nothing
  queued behind a slow or jittery model grows stale, and a model faster than
  the camera starts each frame as it arrives. One exception, for a model
  slower than a steady camera: the prepared frame is up to a camera interval
  old when the engine frees, so if the next frame is due (and prepared) very
  soon, the engine waits for it instead. Waits are short and rare enough to
  cost at most HOLD_SHARE of the engine's time (see `_hold`); if the frame
  does not come in time, the prepared one starts. And when post is the slow
  part (a cascade's later stages), the engine starts the next frame only so
  that it finishes as post frees (`_post_gated`): its result does not wait
  behind the previous ones, and the frame it starts is that much newer.
- `queue` (lossless sources): a second run queued behind the running one,
  so the engine never waits for this process: the most results per second.

Frames are leased (handoff.Frame): a frame stays intact in its ring slot
from the moment prep takes it, through the engine and post, until the stream
has published its result (the lease then goes to the stream) or the frame is
dropped (replaced by a newer one, lost with a crashed engine, runner
stopped). Every stage may therefore read `frame.view()`. A runner holds at
most FRAMES_HELD frames, which is how the stream sizes its ring.

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
from lited.errors import first_line
from lited.preprocess import Preprocessor
from lited.stream.backoff import Backoff
from lited.stream.feed import Feed
from lited.stream.handoff import Frame
from lited.stream.ring import RingError
from lited.stream.stats import StageTimer

log = logging.getLogger("lited.stream")


def hold_limit(share: float, interval: float, run: float) -> float:
    """`latest`: the longest wait for the next frame worth its idle, for a run of `run`
    on a camera of `interval` (ModelRunner._hold says why); any one unit of time."""
    return min(interval, (2 * share * interval * run) ** 0.5)


def worth_holding(cost: float, age: float, limit: float, held: float, engine: float, share: float) -> bool:
    """`latest`: wait `cost` for the next frame rather than start the prepared one, `age`
    old? Only within `limit`, for a frame the wait makes newer, and while the waits so far
    (`held`) stay within `share` of the engine's computing time (`engine`) plus `limit`."""
    return 0 < cost <= min(limit, age) and held + cost <= share * engine + limit


class ModelRunner:
    """prep, infer and post threads of one model on one stream.

    The model's engine (`Model(..., isolated=True)`) has three input sets
    and three output sets in shared memory. An input set or output set goes
    back to its free list when its user is done.
    """

    RUNS_IN_FLIGHT = {"latest": 1, "queue": 2}  # runs in the engine at once: running (+ queued)
    # The most frames a runner holds at once. A frame is in an input set (being
    # prepared, prepared and waiting, in the engine) or an output set (in the
    # engine, collected and waiting for post, being decoded and published):
    # at most one prepared frame waits and one is being prepared, and the
    # three output sets bound the rest, the run in the engine included.
    # `latest`: 2 + 3; `queue` (prep waits while a prepared frame waits): 1 + 3.
    FRAMES_HELD = 5
    REPREP_DUTY = 0.5  # re-preparing for a newer frame takes at most this share of one core (CPU time)
    HOLD_SHARE = 0.02  # `latest`: the engine waits for a fresher frame at most this share of its run time
    HOLD_RUNS_MAX = 5  # ... and only when a run takes under this many camera intervals (below)
    POST_PROGRESS_S = 60.0  # a cascade engine run slower than this counts as hung (no watchdog beats)
    # Test hook: tests install a callable(runner) that runs in the infer thread
    # before each collect, to inject faults (a wedged driver call). None in production.
    fault_hook: ClassVar[Optional[Callable[["ModelRunner"], None]]] = None

    def __init__(self, feed: Feed, model_factory: Callable) -> None:
        self.feed = feed
        self.factory = model_factory
        self.policy = feed.policy
        self.model = None
        self.ready = threading.Event()
        self.error: Optional[BaseException] = None
        self._runs = self.RUNS_IN_FLIGHT[self.policy]
        self._stop = threading.Event()
        # One lock for the runner's state, and a condition per thread that
        # waits on it: each change wakes only the thread it concerns (one
        # condition for all woke every thread at every change: ~29 context
        # switches a frame on a 1 ms model, each taking the GIL in turn).
        self._lock = threading.RLock()
        self._to_prep = threading.Condition(self._lock)   # an input set freed, the prepared frame taken
        self._to_infer = threading.Condition(self._lock)  # a run submitted or failed, a hold set, post took its box
        self._to_post = threading.Condition(self._lock)   # a run collected for post
        self._ready: collections.deque = collections.deque()     # (input set, geom, info, frame): prepared
        self._inflight: collections.deque = collections.deque()  # (input set, output set, geom, info, frame)
        self._failed: Optional[EngineError] = None  # a submit that failed: infer restarts the engine
        self._restarting = False                    # no submits while the engine is being replaced
        self._free_inputs: list = []
        self._free_outputs: list = []
        self._post_box: Optional[tuple] = None  # (output set, outputs, geometry, info, frame): waiting for post
        self._last_done = 0.0      # when the engine finished its last run (perf_counter)
        self._reprep_after = 0.0   # no re-prep before this (perf_counter): REPREP_DUTY
        self._hold_until: Optional[float] = None  # the engine waits for a frame newer than _held_frame until then
        self._held_frame = -1
        self._hold_started = 0.0
        self._held_s = 0.0         # time the engine spent waiting for fresher frames (monotonic s)
        self._engine_s = 0.0       # time the engine spent running frames (s)
        self._run_s = 0.0          # recent run time of one frame, and of preparing one (EMA, s)
        self._prep_s = 0.0
        self._post_progress = time.monotonic()  # the post thread's last sign of life
        self._post_started: Optional[float] = None  # when post took up the result it is on (monotonic s)
        self._post_s = 0.0         # recent time post takes over a result: decoding, a cascade's stages (EMA, s)
        self._gate_until: Optional[float] = None  # `latest`: the engine waits for post until then (monotonic s)
        self._collected = False    # a run collected, not yet handed to post
        self._post_restarting = False  # post is starting a stage engine afresh: how long it takes is not known
        self._restarts = Backoff()
        self._stage_restarts = Backoff()
        self._stage_down: Optional[StageError] = None  # a cascade stage's engine is down: its last failure
        self._stage_retry_at = 0.0  # ... and when a fresh one is tried (monotonic s)
        self._decode_error = ""    # the last decoder failure said (each new one is said once)
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
        """Stop the threads, release the frames still held, stop the engine process."""
        self._stop.set()
        with self._lock:
            for cond in (self._to_prep, self._to_infer, self._to_post):
                cond.notify_all()
        self.feed.wake()
        for thread in (self._prep, self._infer, self._post):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout)
        with self._lock:
            held = [run[-1] for run in (*self._ready, *self._inflight)]
            if self._post_box is not None:
                held.append(self._post_box[-1])
            self._ready.clear()
            self._inflight.clear()
            self._post_box = None
        for frame in held:
            frame.release()
        if self.model is not None:
            self.model.close()

    def _take(self, free: list) -> Optional[int]:
        with self._lock:
            while not free and not self._stop.is_set():
                self._to_prep.wait(0.5)
            return None if self._stop.is_set() else free.pop()

    # -- submitting: from whichever thread made room (prep, infer, post)
    def _submit_ready(self) -> None:
        """Start prepared runs while the engine has room for them: fewer than
        the policy's runs in flight, a free output set, no restart going on."""
        with self._lock:
            while (self._ready and len(self._inflight) < self._runs and self._free_outputs
                   and not self._restarting and self._failed is None and not self._stop.is_set()):
                if self.policy == "latest" and (self._post_gated() or self._hold(self._ready[0][-1])):
                    return
                input_set, geom, info, frame = self._ready.popleft()
                output_set = self._free_outputs.pop()
                now = time.perf_counter()
                info["_submitted_at"] = now
                try:
                    self.model.engine.submit(input_set, output_set)
                except EngineError as exc:  # the infer thread restarts it; this frame is lost
                    self._free_inputs.append(input_set)
                    self._free_outputs.append(output_set)
                    frame.release()
                    self._failed = exc
                    self._to_prep.notify()
                    self._to_infer.notify()
                    return
                self._inflight.append((input_set, output_set, geom, info, frame))
                self._to_prep.notify()   # room for the next prepared frame
                self._to_infer.notify()  # a run to collect

    def _post_gated(self) -> bool:
        """`latest`, the engine free: should it wait because post would still be
        busy when this run ends? (Called with the lock held.) Post is the slow
        part only with a cascade (or a decoder slower than the model): a run
        started now would wait for post, and the results behind it too, each
        one older (seen: 3 runs of a 3 s stage, 17 s behind the camera)."""
        now = time.monotonic()
        waiting = self._post_box is not None or self._collected  # a result already waits for post
        if (self._post_s == 0 or self._post_restarting) and (waiting or self._post_started is not None):
            self._gate_until = now + 0.5  # how long post takes is not known yet: until it is done (_post_done)
            return True
        busy = 0.0 if self._post_started is None else max(0.0, self._post_s - (now - self._post_started))
        if waiting:
            busy += self._post_s
        wait_s = busy - self._run_s
        if wait_s <= 0.001:
            self._gate_until = None
            return False
        self._gate_until = now + wait_s
        self._to_infer.notify()  # the infer thread submits then (post finishing submits sooner)
        return True

    def _hold(self, ready: Frame) -> bool:
        """`latest`, the engine free and frame `ready` prepared: should the
        engine wait for a newer one? (Called with the lock held.)

        The prepared frame is as old as the engine's run is long, modulo the
        camera interval T: anything from 0 to T. Waiting c s for the next one
        saves it T - c s of age at the cost of c idle. Waiting only when
        c <= w, with a roughly uniform c, costs w^2 / 2T per run on average;
        w = sqrt(2 HOLD_SHARE T run) keeps that at HOLD_SHARE of the run
        time, and a running total holds it there whatever the timing does.
        A run of more than HOLD_RUNS_MAX intervals never waits: the age a
        wait saves (T / 2 on average) is then under a tenth of the run, not
        worth 2% of the results."""
        now = time.monotonic()
        if self._hold_until is not None:
            if ready.number > self._held_frame or now >= self._hold_until:  # fresher, or it did not come
                self._held_s += min(now, self._hold_until) - self._hold_started
                self._hold_until = None
                return False
            return True
        beat = self.feed.stats.next_frame_due()
        if beat is None:
            return False
        due, interval = beat
        if self._run_s > self.HOLD_RUNS_MAX * interval:
            return False
        fresh_at = due + self._prep_s
        cost = fresh_at - now
        limit = hold_limit(self.HOLD_SHARE, interval, self._run_s)
        age = now - ready.meta.ts_ns / 1e9
        if not worth_holding(cost, age, limit, self._held_s, self._engine_s, self.HOLD_SHARE):
            return False
        self._held_frame = ready.number
        self._hold_started = now
        self._hold_until = fresh_at + 0.25 * limit + 0.002  # a little late is still worth it
        self._to_infer.notify()  # the infer thread submits at _hold_until if nothing newer came
        return True

    # -- infer thread: builds the model, then collects its runs in order
    def _infer_loop(self) -> None:
        try:
            self.model = self.factory()
            sets = self.model.engine.input_sets
            if sets < self.RUNS_IN_FLIGHT["queue"] + 1:
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
        while not self._stop.is_set():
            self.feed.beat()
            with self._lock:
                if not self._inflight and self._failed is None:
                    wake = min((t for t in (self._hold_until, self._gate_until) if t is not None), default=None)
                    wait_s = 0.5 if wake is None else wake - time.monotonic()
                    self._to_infer.wait(min(0.5, wait_s) if wait_s > 0 else 0.5)
                failed, self._failed = self._failed, None
                idle = failed is None and not self._inflight
            if idle:
                self._submit_ready()  # a wait for a fresher frame may have run out
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
                self._recover(engine, failed)
                continue
            t1 = time.perf_counter()
            with self._lock:
                input_set, output_set, geom, info, frame = self._inflight.popleft()
                self._free_inputs.append(input_set)
                self._collected = True
                self._to_prep.notify()
            self._submit_ready()  # the engine starts the next prepared frame now, not after decoding
            started = max(info.pop("_submitted_at"), self._last_done)  # when the engine took it up
            self._last_done = t1
            self._engine_s += t1 - started
            self._run_s += (t1 - started - self._run_s) * (1.0 if self._run_s == 0 else 0.2)
            timings = info["timings_ms"]
            timings["queue"] = (started - info.pop("_prepped_at")) * 1e3
            timings["infer"] = (t1 - started) * 1e3
            info["_collected_at"] = t1
            with self._lock:
                while self._post_box is not None and not self._stop.is_set():
                    self._to_infer.wait(0.5)
                    if time.monotonic() - self._post_progress < self.POST_PROGRESS_S:
                        self.feed.beat()  # waiting for a slow cascade is not hanging
                self._collected = False
                if self._stop.is_set():
                    frame.release()
                    return
                self._post_box = (output_set, outputs, geom, info, frame)
                self._to_post.notify()
            self._restarts.reset()

    def _recover(self, engine, exc: EngineError) -> None:
        """The engine failed: the frames it had are lost (their sets freed,
        their leases released); restart it, then go on with what is prepared."""
        with self._lock:
            self._restarting = True
            lost = list(self._inflight)
            self._inflight.clear()
            for input_set, output_set, _, _, frame in lost:
                self._free_inputs.append(input_set)
                self._free_outputs.append(output_set)
                frame.release()
            self._to_prep.notify()
        self._restart_engine(engine, exc)
        with self._lock:
            self._restarting = False
            self._failed = None  # a submit that failed meanwhile failed for the same reason
        self._submit_ready()

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
            feed.stats.engine_down = f"{exc} (engine restart {feed.stats.counters['engine_restarts']}, the next in " \
                                     f"{delay:.1f} s)"
            deadline = time.monotonic() + delay
            while not self._stop.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                feed.beat()  # backing off is not hanging: the watchdog must not restart the daemon
                if time.monotonic() >= deadline:
                    break
            if self._stop.is_set():
                return
            try:
                engine.restart()
                feed.stats.engine_down = None
                return
            except EngineError as again:
                exc = again
            except Exception as again:  # noqa: BLE001 - whatever stops a start is tried again: the thread must live
                exc = EngineError(first_line(again))

    # -- post thread: decode (and run the cascade) and publish while the engine runs the next frames
    def _post_loop(self) -> None:
        model = self.model
        decoder = model.decoder
        while not self._stop.is_set():
            with self._lock:
                if self._post_box is None:
                    self._to_post.wait(0.5)
                if self._post_box is None:
                    continue
                output_set, outputs, geom, info, frame = self._post_box
                self._post_box = None
                self._post_started = time.monotonic()
                self._to_infer.notify()
            self._post_progress = time.monotonic()
            t0 = time.perf_counter()
            try:
                decoded = decoder.decode(outputs, geom)
            except Exception as exc:  # noqa: BLE001 - a frame's outputs the decoder cannot read: that result
                decoded = None        # is lost, the stream goes on (this thread dying stopped every result)
                self._decode_failed(exc)
            t1 = time.perf_counter()
            with self._lock:
                self._free_outputs.append(output_set)
            self._submit_ready()  # a prepared run may have waited for that output set
            if decoded is None:
                frame.release()  # kept for ever, each failed frame took a slot of the ring from the camera
                self._post_done()
                continue
            timings = info["timings_ms"]
            # collected while this thread still decoded (and ran the cascade of) the previous frame
            timings["post_wait"] = (t0 - info.pop("_collected_at")) * 1e3
            timings["postprocess"] = (t1 - t0) * 1e3
            if model.cascade:
                self._run_cascade(frame, decoded["detections"], timings)
            timings["total"] = (time.monotonic_ns() - info.pop("_captured_ns")) / 1e6
            self.feed.publish({**info, "task": model.task, "model": model.name,
                               "model_version": model.version, **decoded}, frame)
            self._post_done()

    def _post_done(self) -> None:
        """Post is free: learn how long it took (not from a frame that waited for a stage engine's
        restart), and let a run gated on it start."""
        with self._lock:
            took = time.monotonic() - self._post_started
            if not self._post_restarting:
                self._post_s += (took - self._post_s) * (1.0 if self._post_s == 0 else 0.2)
            self._post_started = None
            self._post_restarting = False
        self._submit_ready()

    def _decode_failed(self, exc: Exception) -> None:
        """Counted as an error each time; logged and published (a `decode` event) once per distinct
        failure, not at every frame."""
        feed = self.feed
        feed.stats.count("errors")
        why = f"decoder {self.model.decoder.kind}: {type(exc).__name__}: {first_line(exc)}; the frame's result is lost"
        if why != self._decode_error:
            self._decode_error = why
            log.warning("stream %s: %s", feed.name, why, exc_info=True, extra={"stream": feed.name, "event": "decode"})
            feed.event("decode", why)

    def _run_cascade(self, frame: Frame, detections: list, timings: dict) -> None:
        """Cut the crops from the frame (leased: still in its slot), then run
        the later stages, which add their fields to the detections. A frame
        found torn all the same, or a failed stage engine, leaves the
        detections without those fields."""
        timer = StageTimer(timings)
        cascade = self.model.cascade
        if not detections:  # nothing to read: the stages' keys all the same, as `lited infer` has them
            for name in ("crop", *(stage.name for stage in cascade.stages)):
                timer.lap(name)
            return
        try:
            crops = cascade.cut(frame.view(), detections)
            intact = frame.ring.is_current(frame.slot, frame.seq)
        except (RingError, ValueError):
            intact = False
        timer.lap("crop")
        if not intact:
            self.feed.stats.count("torn")
            return
        if self._stage_down is not None and not self._stage_back():
            return  # its fields are left out until a fresh engine runs (status: engine_down)
        try:
            cascade.run(crops, detections, timer, self._post_alive)
        except StageError as exc:
            for stage in cascade.stages:  # all or nothing: no half-read frame
                for det in detections:
                    for key in stage.adds:
                        det.pop(key, None)
            self._stage_failed(exc)
            return
        self._stage_restarts.reset()  # a run, not a start, proves a fresh engine: one dying at once backs off

    def _post_alive(self) -> None:
        self._post_progress = time.monotonic()

    def _stage_failed(self, exc: StageError) -> None:
        """A cascade stage's engine failed (its process died, or a fresh one
        could not start): say so once, and leave the stages out until a fresh
        one is tried after a capped backoff, as for the stream's own engine.
        Tried at every frame, a model changed on disk made two events and a
        log line a frame, and status never showed it."""
        if self._stop.is_set():  # stopping closed it
            return
        feed = self.feed
        delay = self._stage_restarts.next()
        feed.stats.count("engine_restarts")
        log.warning("stream %s: %s; restarting its engine in %.1f s", feed.name, exc, delay,
                    extra={"stream": feed.name, "event": "engine"})
        feed.event("engine", f"{exc}; restarting in {delay:.1f} s")
        feed.stats.engine_down = f"{exc} (engine restart {feed.stats.counters['engine_restarts']}, the next in " \
                                 f"{delay:.1f} s; results carry the first stage's fields only)"
        self._stage_down = exc
        self._stage_retry_at = time.monotonic() + delay

    def _stage_back(self) -> bool:
        """The down stage's engine: once its backoff is over, start a fresh
        one (in this thread: the frame waits for it). True once it runs."""
        down = self._stage_down
        if down is None or time.monotonic() < self._stage_retry_at:
            return down is None
        with self._lock:  # the engine waits for post to be done (its time now is not its usual)
            self._post_restarting = True
        try:
            down.stage.part.engine.restart()
        except EngineError as again:
            self._stage_failed(StageError(down.stage, again))
            return False
        self._stage_down = None
        self.feed.stats.engine_down = None
        return True

    # -- prep thread: newest frame -> a free input set of the engine -> prepared
    def _prep_loop(self) -> None:
        feed = self.feed
        latest = self.policy == "latest"
        while not self._stop.is_set():
            if not self._wait_for_room(latest):
                return
            input_set = self._take(self._free_inputs)
            if input_set is None:
                return
            frame = feed.next_frame(self._stop)
            if frame is None:
                with self._lock:
                    self._free_inputs.append(input_set)
                continue
            prepared = self._prepare(frame, input_set)
            if prepared is None:  # the lease was broken (never expected): do not infer a torn frame
                feed.stats.count("torn")
                frame.release()
                with self._lock:
                    self._free_inputs.append(input_set)
                continue
            replaced = None
            with self._lock:
                if latest and self._ready:  # latest wins: the newer frame takes the waiting one's place
                    replaced = self._ready.popleft()
                    self._free_inputs.append(replaced[0])
                self._ready.append((input_set, *prepared, frame))
            if replaced is not None:
                replaced[-1].release()
            self._submit_ready()

    def _prepare(self, frame: Frame, input_set: int) -> Optional[tuple]:
        """Preprocess `frame` into `input_set`: (geometry, frame info), None if torn."""
        model, pre, ring, meta = self.model, self._pre, frame.ring, frame.meta
        t0, cpu0 = time.perf_counter(), time.thread_time()
        try:
            image = frame.view()
            geom = pre(image, out=model.engine.input_view(model.image_input, pre.plan(image.shape), input_set))
            model.set_extra_inputs(geom, input_set)
            intact = ring.is_current(frame.slot, frame.seq)
        except (RingError, ValueError):
            intact = False
        if not intact:
            return None
        t1 = time.perf_counter()
        prep_ms = (t1 - t0) * 1e3
        self._prep_s += (t1 - t0 - self._prep_s) * 0.2
        if self._ready:  # a re-prep: CPU time, not wall time (on a busy machine that is mostly waiting)
            self._reprep_after = t1 + (time.thread_time() - cpu0) * (1 / self.REPREP_DUTY - 1)
        info = {"stream": self.feed.name, "seq": frame.number, "frame_ts": meta.wall_ns / 1e9,
                "ring": ring.name, "generation": ring.generation, "slot": frame.slot, "slot_seq": frame.seq,
                "width": meta.width, "height": meta.height, "_captured_ns": meta.ts_ns, "_prepped_at": t1,
                "timings_ms": {"capture": self.feed.stats.capture_ms(frame.number),
                               "wait": (time.monotonic_ns() - meta.ts_ns) / 1e6 - prep_ms,
                               "preprocess": prep_ms}}
        return geom, info

    def _wait_for_room(self, latest: bool) -> bool:
        """Wait until taking another frame is worth it; False when stopping.

        `queue`: while a prepared frame waits for the engine (it holds the
        input set the next frame would need soonest, and frames stay few).
        `latest`: while a prepared frame waits and another re-prep now would
        take more than REPREP_DUTY of a core."""
        with self._lock:
            while not self._stop.is_set():
                if not self._ready:
                    return True
                if latest:
                    wait_s = self._reprep_after - time.perf_counter()
                    if wait_s <= 0:
                        return True
                    self._to_prep.wait(wait_s)
                else:
                    self._to_prep.wait(0.5)
        return False
