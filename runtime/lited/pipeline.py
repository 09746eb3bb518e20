"""A stream: source -> frame ring -> preprocess -> engine -> decoder -> publish.

Threads, and why:
- capture: reads each frame straight into a free ring slot (`read_into` on a
  shared-memory view, no copy) and never waits for inference on a live
  source. On a lossless source (a file without `realtime`) it waits until
  the previous frame was taken, so nothing is dropped.
- prep: takes the newest complete frame (latest wins; the frames it passes
  over are counted as skipped), preprocesses it from the ring slot straight
  into a free input slot of the engine (shared memory), checks the ring
  slot's sequence number afterwards (a frame overwritten while it was read
  is dropped, never inferred), and submits the slot to the engine, where up
  to two runs wait, so the engine goes from frame to frame without idling.
- infer: builds the model, whose engine runs in a process of its own
  (engine_process.py: paddlelite's Python `run()` holds the GIL for the
  whole inference, so in-process nothing else would run meanwhile), and
  collects the runs in order, waiting on a socket with the GIL released:
  capture, prep, post and the bus run during inference. If the engine
  process dies, the frames it had are lost and it is restarted (capped
  backoff); the stream goes on.
- post: decodes an output set and publishes, while the engine runs the
  next frames.

prep + infer + post form a `Worker`, one per loaded model. A reload builds a new
worker beside the old one, warms it up, then swaps between frames; if the
new one fails, the old one keeps serving.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Optional

import numpy as np

from lited.engines import EngineError
from lited.framering import FrameRing, RingError
from lited.preprocess import Preprocessor
from lited.sources import FrameShapeChanged, SourceError, open_source

log = logging.getLogger("lited.pipeline")

STATES = ("connecting", "streaming", "stalled", "backoff", "ended", "stopped")
# capture: reading the frame; wait: published -> prep starts; queue: prep done -> engine starts;
# total: published -> result ready (wait + preprocess + queue + infer + postprocess)
STAGES = ("capture", "wait", "preprocess", "queue", "infer", "postprocess", "total")
LOSSLESS_KINDS = {"file": "realtime", "images": "fps", "synth": "fps"}  # lossless unless this option is set


class Backoff:
    """Capped exponential delay between reopen attempts."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first


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


class Worker:
    """The prep, infer and post threads of one model on one stream.

    The model's engine runs in its own process (`Model(..., isolated=True)`,
    engine_process.py) with three input slots and three output sets in
    shared memory. prep writes a frame into a free slot and submits it
    (`engine.submit`), so up to two runs wait in the engine: it goes from
    one frame to the next without waiting for this process. infer collects
    results in order and hands each output set to post, which decodes and
    publishes it. A slot or set goes back to its free list when its user is
    done.
    """

    RUNS_IN_FLIGHT = 2  # one running, one queued behind it

    def __init__(self, stream: "Stream", model_factory: Callable) -> None:
        self.stream = stream
        self.factory = model_factory
        self.model = None
        self.ready = threading.Event()
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._engine_lock = threading.Lock()  # submit vs restart
        self._inflight: collections.deque = collections.deque()  # (slot, out, geom, info), submitted, oldest first
        self._failed: Optional[EngineError] = None  # a submit that failed: infer restarts the engine
        self._free_slots: list = []
        self._free_outs: list = []
        self._post_box: Optional[tuple] = None  # (output set, outputs, geometry, frame info): waiting for post
        # Just-in-time prep: when the running run started and how long runs and preps take
        # (moving averages), so prep takes the newest frame just before the engine would idle.
        self._run_started: Optional[float] = None
        self._last_done = 0.0
        self._infer_s = 0.0
        self._prep_s = 0.0
        self._restarts = Backoff()
        self._infer = threading.Thread(target=self._infer_loop, name=f"infer-{stream.name}", daemon=True)
        self._prep = threading.Thread(target=self._prep_loop, name=f"prep-{stream.name}", daemon=True)
        self._post = threading.Thread(target=self._post_loop, name=f"post-{stream.name}", daemon=True)

    def start(self) -> None:
        self._infer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads, then the engine process."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.stream._wake()
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

    def _beat(self) -> None:
        if self.stream.beat is not None and self.stream.worker is self:
            self.stream.beat()

    # -- infer thread: builds the model, then collects its runs in order
    def _infer_loop(self) -> None:
        try:
            self.model = self.factory()
            slots = getattr(self.model.engine, "slots", 1)
            if slots < self.RUNS_IN_FLIGHT + 1:
                raise TypeError("a stream's model needs its engine in a process of its own: Model(..., isolated=True)")
            spec, shape = self.model.bundle.preprocess, self.model.bundle.inputs[self.model.image_input]["shape"]
            self._pre = Preprocessor(spec, shape)
            self._free_slots = list(range(slots))
            self._free_outs = list(range(slots))
        except BaseException as exc:  # noqa: BLE001 - reported to whoever asked for the model
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self._prep.start()
        self._post.start()
        engine = self.model.engine
        while not self._stop.is_set():
            self._beat()
            with self._cond:
                if not self._inflight and self._failed is None:
                    self._cond.wait(0.5)
                failed, self._failed = self._failed, None
                if failed is None and not self._inflight:
                    continue
            if failed is None:
                fault = self.stream.fault_hook
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
                slot, out, geom, info = self._inflight.popleft()
                self._free_slots.append(slot)
                self._run_started = time.monotonic() if self._inflight else None
                self._cond.notify_all()
            started = max(info.pop("_submitted_at"), self._last_done)  # when the engine took it up
            self._last_done = t1
            self._infer_s += 0.2 * ((t1 - started) - self._infer_s)
            timings = info["timings_ms"]
            timings["queue"] = (started - info.pop("_prepped_at")) * 1e3
            timings["infer"] = (t1 - started) * 1e3
            with self._cond:
                while self._post_box is not None and not self._stop.is_set():
                    self._cond.wait(0.5)
                self._post_box = (out, outputs, geom, info)
                self._cond.notify_all()
            self._restarts.reset()

    def _drop_inflight(self) -> None:
        """The engine failed: the frames it had are lost; free their slots and sets."""
        with self._cond:
            for slot, out, _, _ in self._inflight:
                self._free_slots.append(slot)
                self._free_outs.append(out)
            self._inflight.clear()
            self._run_started = None
            self._cond.notify_all()

    def _restart_engine(self, engine, exc: EngineError) -> None:
        """The engine process died or failed: say so, wait (capped backoff),
        and start a fresh one for the same model. The frames it had are
        lost; the stream and everything else in the daemon keep going."""
        stream = self.stream
        while not self._stop.is_set():
            delay = self._restarts.next()
            stream.counters["engine_restarts"] += 1
            log.warning("stream %s: %s; restarting the engine in %.1f s", stream.name, exc, delay,
                        extra={"stream": stream.name, "event": "engine"})
            stream._event("engine", f"{exc}; restarting in {delay:.1f} s")
            deadline = time.monotonic() + delay
            while not self._stop.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                self._beat()  # backing off is not hanging: the watchdog must not restart the daemon
                if time.monotonic() >= deadline:
                    break
            if self._stop.is_set():
                return
            try:
                engine.restart()
                return
            except EngineError as again:
                exc = again

    # -- post thread: decode and publish while the engine runs the next frames
    def _post_loop(self) -> None:
        decoder = self.model.decoder
        while not self._stop.is_set():
            with self._cond:
                if self._post_box is None:
                    self._cond.wait(0.5)
                if self._post_box is None:
                    continue
                out, outputs, geom, info = self._post_box
                self._post_box = None
                self._cond.notify_all()
            t0 = time.perf_counter()
            decoded = decoder.decode(outputs, geom)
            t1 = time.perf_counter()
            self._put_back(self._free_outs, out)
            timings = info["timings_ms"]
            timings["postprocess"] = (t1 - t0) * 1e3
            timings["total"] = (time.monotonic_ns() - info.pop("_captured_ns")) / 1e6
            self.stream._publish({**info, "task": self.model.task, "model": self.model.name,
                                  "model_version": self.model.version, **decoded})

    # -- prep thread: newest frame -> a free input slot of the engine -> submitted
    def _prep_loop(self) -> None:
        stream, model, pre = self.stream, self.model, self._pre
        engine = model.engine
        while not self._stop.is_set():
            slot = self._take(self._free_slots)
            if slot is None:
                return
            if not stream.lossless:
                self._wait_until_engine_almost_free()
            frame = stream._next_frame(self, self._stop)
            if frame is None:
                self._put_back(self._free_slots, slot)
                continue
            ring, ring_slot, seq, meta, frame_id, skipped = frame
            t0 = time.perf_counter()
            try:
                image = ring.view(ring_slot)
                geom = pre(image, out=engine.input_view(model.image_input, pre.plan(image.shape), slot))
                model.set_extra_inputs(geom, slot)
                intact = ring.is_current(ring_slot, seq)
            except (RingError, ValueError):
                intact = False
            if not intact:  # overwritten while we read it: never infer a torn frame
                stream.counters["torn"] += 1
                self._put_back(self._free_slots, slot)
                continue
            prep_ms = (time.perf_counter() - t0) * 1e3
            self._prep_s += 0.2 * (prep_ms / 1e3 - self._prep_s)
            info = {"stream": stream.name, "seq": frame_id, "frame_ts": meta.wall_ns / 1e9,
                    "skipped": skipped, "ring": ring.name, "slot": ring_slot, "slot_seq": seq,
                    "width": meta.width, "height": meta.height, "_captured_ns": meta.ts_ns,
                    "_prepped_at": time.perf_counter(),
                    "timings_ms": {"capture": stream.capture_ms.get(frame_id, 0.0),
                                   "wait": (time.monotonic_ns() - meta.ts_ns) / 1e6 - prep_ms,
                                   "preprocess": prep_ms}}
            if not self._submit(engine, slot, geom, info):
                return

    def _submit(self, engine, slot: int, geom, info: dict) -> bool:
        """Queue the prepared slot in the engine once fewer than RUNS_IN_FLIGHT
        runs are there; False when stopping."""
        out = self._take(self._free_outs)
        with self._cond:
            while len(self._inflight) >= self.RUNS_IN_FLIGHT and not self._stop.is_set():
                self._cond.wait(0.5)
        if out is None or self._stop.is_set():
            return False
        with self._engine_lock:
            info["_submitted_at"] = time.perf_counter()
            try:
                engine.submit(slot, out)
            except EngineError as exc:  # the infer thread restarts it; this frame is lost
                with self._cond:
                    self._free_slots.append(slot)
                    self._free_outs.append(out)
                    self._failed = exc
                    self._cond.notify_all()
                return True
            with self._cond:
                self._inflight.append((slot, out, geom, info))
                if len(self._inflight) == 1:
                    self._run_started = time.monotonic()
                self._cond.notify_all()
        return True

    def _wait_until_engine_almost_free(self) -> None:
        """Latest frame wins, so take it as late as possible: while the engine
        has runs, wait until about one prep time (plus a margin) before the
        last of them is done, so the inferred frame is the freshest and the
        engine still never idles."""
        started = self._run_started
        if started is None:
            return
        ready_at = started + self._infer_s * len(self._inflight) - 1.5 * self._prep_s - 0.001
        delay = min(ready_at - time.monotonic(), 1.0)
        if delay > 0:
            self._stop.wait(delay)


class Stream:
    """One source feeding one model; publishes a result dict per inferred frame.

    `publish(result)` and `on_event(event)` are called from the stream's
    threads and must not block (the bus's PUB socket never does).
    """

    def __init__(self, name: str, uri: str, model_factory: Callable, publish: Callable[[dict], None],
                 on_event: Optional[Callable[[dict], None]] = None, slots: int = 4,
                 stall_timeout: float = 5.0, backoff: tuple = (0.5, 30.0), group: Optional[str] = None,
                 stats_window: int = 512, beat: Optional[Callable[[], None]] = None) -> None:
        self.name = name
        self.uri = uri
        self.source = open_source(uri)  # parse and validate now: a bad URI fails before any thread starts
        kind = uri.split(":", 1)[0]
        self.lossless = kind in LOSSLESS_KINDS and not self.source.options.get(LOSSLESS_KINDS[kind])
        self.publish_cb = publish
        self.on_event = on_event
        self.slots = slots
        self.stall_timeout = stall_timeout
        self.backoff = Backoff(*backoff)
        self.group = group
        self.state = "stopped"
        self.detail = ""
        self._state_at = 0.0  # monotonic time of the last state change
        self.counters = collections.Counter(captured=0, inferred=0, skipped=0, torn=0, reconnects=0, errors=0,
                                            engine_restarts=0)
        self.timings = Timings(stats_window)
        self.capture_ms: dict = {}
        self._last_taken = -1
        self._published = -1
        self.ring: Optional[FrameRing] = None
        self._retired: Optional[FrameRing] = None  # the ring before a frame-size change
        self.last_frame_at = 0.0
        self.started_at = time.monotonic()
        self.beat = beat  # called by the active inference loop at least every 0.5 s (watchdog)
        self.fault_hook: Optional[Callable] = None  # test-only: called in the infer thread before each run
        self._fps_window: collections.deque = collections.deque(maxlen=64)
        self._model_factory = model_factory
        self._stop = threading.Event()
        self._frame_cond = threading.Condition()
        self._taken = threading.Event()
        self._taken.set()
        self._ring_lock = threading.Lock()
        self.worker: Optional[Worker] = None
        self.last_result: Optional[dict] = None
        self._capture = threading.Thread(target=self._capture_loop, name=f"capture-{name}", daemon=True)

    # -- lifecycle
    def start(self, wait_ready: float = 120.0) -> None:
        """Build the model (raises if it fails), then start capturing."""
        worker = Worker(self, self._model_factory)
        worker.start()
        worker.ready.wait(wait_ready)
        if worker.error is not None:
            worker.stop()
            raise worker.error
        self.worker = worker
        self._capture.start()

    def stop(self, timeout: float = 6.0) -> None:
        """Stop the threads (a blocked network read ends within its read timeout,
        5 s by default) and remove the ring."""
        self._stop.set()
        self._wake()
        if self.worker:
            self.worker.stop(timeout)
        if self._capture.is_alive():
            self._capture.join(timeout)
        if not self._capture.is_alive():  # never close a capture another thread is blocked reading
            self.source.close()
        with self._ring_lock:
            for ring in (self.ring, self._retired):
                if ring is not None:
                    ring.unlink()
            self.ring = self._retired = None
        self._set_state("stopped")

    def prepare_model(self, model_factory: Callable, timeout: float = 120.0) -> Worker:
        """Build and warm up a new model beside the running one; it takes no
        frames until `commit_model`. Raises if it fails (nothing changes)."""
        new = Worker(self, model_factory)
        new.start()
        if not new.ready.wait(timeout):
            new.stop()
            raise TimeoutError(f"stream {self.name}: new model not ready after {timeout:.0f} s")
        if new.error is not None:
            new.stop()
            raise new.error
        return new

    def commit_model(self, new: Worker) -> None:
        """Switch to a prepared model between frames: the old one finishes the
        frame it is on, then the new one takes the next."""
        old = self.worker
        if old is not None:
            old.stop()
        with self._frame_cond:
            self.worker = new
            self._model_factory = new.factory
            self._frame_cond.notify_all()
        self._event("model", f"{new.model.name} {new.model.version}")

    def swap_model(self, model_factory: Callable, timeout: float = 120.0) -> None:
        """prepare_model then commit_model: the old model serves until the new one is warm."""
        self.commit_model(self.prepare_model(model_factory, timeout))

    @property
    def model(self):
        return self.worker.model if self.worker else None

    # -- capture thread
    def _capture_loop(self) -> None:
        source = self.source
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
                if self.lossless:
                    while not self._taken.wait(0.5):
                        if self._stop.is_set():
                            break
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
                    if self.lossless or self._stop.is_set():
                        self._drain(ring.frame_offset + ring.frames - 1)
                        self._set_state("ended", "end of stream")
                        return
                    self._retry("end of stream")
                    break
                frame_no = ring.frame_offset + ring.frames
                self._taken.clear()  # before commit: prep may take the frame the moment it is published
                ring.commit(slot)
                self.capture_ms[frame_no] = (time.perf_counter() - t0 - source.pacer.waited) * 1e3
                if len(self.capture_ms) > 64:
                    self.capture_ms.pop(next(iter(self.capture_ms)))
                now = time.monotonic()
                self.last_frame_at = now
                self._fps_window.append(now)
                self.counters["captured"] += 1
                good += 1
                if good == 10:
                    self.backoff.reset()
                if self.state != "streaming":
                    self._set_state("streaming")
                self._wake()

    def _drain(self, last_frame: int, timeout: float = 30.0) -> None:
        """Wait until the result of `last_frame` is out, so `ended` comes after it."""
        deadline = time.monotonic() + timeout
        while (self._published < last_frame and not self._stop.is_set()
               and time.monotonic() < deadline):
            self._stop.wait(0.01)

    def _retry(self, why: str) -> None:
        self.counters["errors"] += 1
        delay = self.backoff.next()
        self._set_state("backoff", f"{why}; retry in {delay:.1f} s")
        self._stop.wait(delay)
        self.counters["reconnects"] += 1

    def _ensure_ring(self, shape: tuple) -> None:
        with self._ring_lock:
            if self.ring is not None and self.ring.shape == tuple(shape):
                return
            offset = 0
            if self.ring is not None:
                offset = self.ring.frame_offset + self.ring.frames  # frame numbers keep rising across rings
                # Closed to readers at once, unmapped at the next change: a frame
                # being preprocessed from it still passes its seq check.
                if self._retired is not None:
                    self._retired.unlink()
                self.ring.unlink(unmap=False)
                self._retired = self.ring
            ring = FrameRing.create(self.name, self.slots, tuple(shape), group=self.group)
            ring.frame_offset = offset  # stream frame number = ring.frame_offset + the ring's own number
            self.ring = ring

    # -- handing frames to the worker
    def _wake(self) -> None:
        with self._frame_cond:
            self._frame_cond.notify_all()

    def _next_frame(self, worker: Worker, stop: threading.Event) -> Optional[tuple]:
        """For the active worker only: the newest complete frame not taken yet,
        waiting up to 0.5 s. Frames passed over are counted as skipped."""
        with self._frame_cond:
            deadline = time.monotonic() + 0.5
            while not stop.is_set() and not self._stop.is_set():
                ring = self.ring
                try:
                    latest = ring.latest() if ring is not None and self.worker is worker else None
                    meta = ring.meta(*latest) if latest is not None else None
                except RingError:  # rebuilt for a new frame size meanwhile: look again
                    latest = meta = None
                if meta is not None:
                    frame_id = ring.frame_offset + meta.frame
                    if frame_id > self._last_taken:
                        skipped = frame_id - self._last_taken - 1 if self._last_taken >= 0 else 0
                        self._last_taken = frame_id
                        self.counters["skipped"] += skipped
                        self._taken.set()
                        return (ring, latest[0], latest[1], meta, frame_id, skipped)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._frame_cond.wait(remaining)
        return None

    def _publish(self, result: dict) -> None:
        self.last_result = result
        self._published = result["seq"]
        self.counters["inferred"] += 1
        self.timings.add(result["timings_ms"])
        self.publish_cb(result)

    # -- state and status
    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state and detail == self.detail:
            return
        self.state, self.detail = state, detail
        self._state_at = time.monotonic()
        log.info("stream %s: %s%s", self.name, state, f" ({detail})" if detail else "",
                 extra={"stream": self.name, "event": state})
        self._event("state", detail, state=state)

    def _event(self, kind: str, detail: str, **extra) -> None:
        if self.on_event is not None:
            self.on_event({"stream": self.name, "event": kind, "detail": detail, "ts": time.time(), **extra})

    def check_stall(self) -> None:
        """Publish `stalled` once a streaming source has given no frame for
        `stall_timeout` (its capture thread is blocked in the read and cannot);
        the next frame publishes `streaming` again. Called periodically."""
        now = time.monotonic()
        if (self.state == "streaming" and now - self.last_frame_at > self.stall_timeout
                and now - self._state_at > self.stall_timeout):
            self._set_state("stalled", f"no frame for {self.stall_timeout:g} s")

    def current_state(self) -> str:
        """`stalled` when streaming but no frame came for `stall_timeout`."""
        if self.state == "streaming" and time.monotonic() - self.last_frame_at > self.stall_timeout:
            return "stalled"
        return self.state

    def fps(self) -> float:
        window = list(self._fps_window)
        if len(window) < 2 or time.monotonic() - window[-1] > self.stall_timeout:
            return 0.0
        return (len(window) - 1) / (window[-1] - window[0])

    def status(self) -> dict:
        model = self.model
        return {
            "stream": self.name, "source": self.uri, "state": self.current_state(), "detail": self.detail,
            "fps": round(self.fps(), 2), "counters": dict(self.counters), "latency_ms": self.timings.summary(),
            "ring": self.ring.name if self.ring else None,
            "model": {"name": model.name, "version": model.version,
                      "engine_pid": getattr(model.engine, "pid", None)} if model else None,
        }
