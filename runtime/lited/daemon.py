"""`lited serve`: config, lifecycle, requests, reload, signals, sd_notify.

Rules it keeps:
- nothing a client sends can crash it or stall other clients: requests are
  decoded by `protocol`, cheap ones answered on the bus thread, heavy ones
  (infer, reload, snapshot) queued to worker threads with a bounded queue;
- a reload validates and warms up every new model beside the old ones and
  swaps only when all are ready; on any failure the old ones keep serving;
- READY=1 once models are warm and sources are opening; WATCHDOG=1 only while
  every inference loop and the bus loop are alive (a camera being down does
  not stop the beats; a wedged inference thread does).
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import resource
import signal
import threading
import time
from typing import Any, Callable, Optional

import cv2
import numpy as np

from lited import __version__, protocol
from lited.bundle import BundleError, load_bundle
from lited.bus import Bus, Curve
from lited.config import Config, ConfigError, load_config
from lited.engine_process import child_pids
from lited.engines import EngineError
from lited.framering import sweep_stale
from lited.model import Model
from lited.pipeline import Stream
from lited.protocol import ProtocolError, param
from lited.sdnotify import Notifier, Watchdog
from lited.sources import SourceError

log = logging.getLogger("lited.daemon")
MAX_IMAGE_PIXELS = 8192 * 8192
REQUEST_QUEUE = 32
LOAD_ERRORS = (BundleError, EngineError, ValueError, OSError, TimeoutError)


class Daemon:
    def __init__(self, config: Config, insecure_tcp: bool = False) -> None:
        self.config = config
        self.insecure_tcp = insecure_tcp or config.insecure_tcp
        self.notifier = Notifier()
        self.watchdog = Watchdog(self.notifier)
        self.started = time.monotonic()
        self.bundles: dict = {}            # model name -> Bundle
        self.generation: dict = {}         # model name -> int, bumped on reload (request workers rebuild)
        self.streams: dict = {}            # stream name -> Stream
        self.last_reload: dict = {}
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self._reload_lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue(maxsize=REQUEST_QUEUE)
        self._workers: list = []
        self.bus: Optional[Bus] = None

    # -- start and stop
    def start(self) -> None:
        cfg = self.config
        swept = sweep_stale()
        if swept:
            log.info("removed %d stale frame rings: %s", len(swept), ", ".join(swept), extra={"event": "sweep"})
        self.notifier.status("loading bundles")
        for name, path in cfg.models.items():
            self.bundles[name] = load_bundle(path)
            self.generation[name] = 0
        curve = Curve(cfg.curve["server_secret"], cfg.curve["clients_dir"]) if cfg.curve else None
        self.bus = Bus(cfg.pub, cfg.req, self._on_request, curve, self.insecure_tcp, cfg.pub_hwm,
                       cfg.max_request_bytes, heartbeat=lambda: self.watchdog.beat("bus"))
        self.watchdog.register("bus")
        self.bus.start()
        for i in range(max(1, cfg.request_workers)):
            worker = threading.Thread(target=self._request_worker, name=f"requests-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)
        for sc in cfg.streams:
            self.notifier.status(f"warming up {sc.model} for {sc.name}")
            self._start_stream(sc)
        self.notifier.ready(self.status_line())
        self.watchdog.start()
        self._daemon_event("ready", f"{len(self.streams)} streams, {len(self.bundles)} models")
        log.info("serving: pub %s, req %s", " ".join(cfg.pub), " ".join(cfg.req), extra={"event": "ready"})

    def _start_stream(self, sc) -> Stream:
        bundle = self.bundles[sc.model]
        beat_name = f"infer-{sc.name}"
        self.watchdog.register(beat_name)
        stream = Stream(sc.name, sc.source, lambda b=bundle: Model(b, isolated=True), self._publish_result, self._publish_event,
                        slots=sc.slots, stall_timeout=sc.stall_timeout, group=self.config.group,
                        beat=lambda n=beat_name: self.watchdog.beat(n))
        stream.config = sc
        stream.fault_hook = _test_fault()
        try:
            stream.start()
        except BaseException:
            self.watchdog.unregister(beat_name)
            raise
        self.streams[sc.name] = stream
        return stream

    def _stop_stream(self, name: str) -> None:
        stream = self.streams.pop(name)
        self.watchdog.unregister(f"infer-{name}")
        stream.stop()

    def stop(self) -> None:
        self.notifier.stopping("stopping")
        self._daemon_event("stopping", "")
        self.stop_event.set()
        for name in list(self.streams):
            self._stop_stream(name)
        for _ in self._workers:
            try:
                self._requests.put_nowait(None)
            except queue.Full:
                pass
        self.watchdog.stop()
        if self.bus is not None:
            self.bus.stop()

    def run_forever(self) -> None:
        """Main thread: signals, status line, reloads asked for by SIGHUP."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        next_status = 0.0
        while not self.stop_event.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload_config()
            for stream in list(self.streams.values()):
                stream.check_stall()
            now = time.monotonic()
            if now >= next_status:
                self.notifier.status(self.status_line())
                next_status = now + self.config.status_interval
            self.stop_event.wait(0.2)
        self.stop()

    # -- results and events
    def _publish_result(self, result: dict) -> None:
        self.bus.publish(protocol.result_topic(result["stream"]), protocol.encode_result(result))

    def _publish_event(self, event: dict) -> None:
        self.bus.publish(protocol.event_topic(event["stream"]), protocol.encode_event(event))

    def _daemon_event(self, kind: str, detail: str, **extra: Any) -> None:
        if self.bus is not None:
            self._publish_event({"stream": protocol.DAEMON_STREAM, "event": kind, "detail": detail,
                                 "ts": time.time(), **extra})

    # -- requests
    def _on_request(self, data: bytes, respond: Callable[[bytes], None]) -> None:
        """On the bus thread: decode; answer cheap requests; queue heavy ones."""
        request_id = None
        try:
            if len(data) > self.config.max_request_bytes:
                raise ProtocolError("too_large", f"request of {len(data)} bytes is over limits.max_request_bytes "
                                                 f"({self.config.max_request_bytes})", _request_id(data))
            req = protocol.decode_request(data, self.config.max_request_bytes)
            request_id = req.get("id")
            method = req["method"]
            if method == "ping":
                respond(protocol.encode_reply(request_id, {"pong": True, "version": __version__,
                                                           "protocol": protocol.VERSION}))
            elif method == "status":
                respond(protocol.encode_reply(request_id, self.status()))
            else:
                self._requests.put_nowait((req, respond))
        except ProtocolError as exc:
            respond(protocol.encode_reply(request_id if exc.request_id is None else exc.request_id, error=exc))
        except queue.Full:
            respond(protocol.encode_reply(request_id, error=ProtocolError("busy", "too many requests queued; retry")))

    def _request_worker(self) -> None:
        """Runs infer/reload/snapshot; owns its own models (one predictor per thread)."""
        models: dict = {}
        handlers = {"infer": lambda p: self._infer(p, models), "reload": self._reload_request,
                    "snapshot": self._snapshot}
        try:
            while not self.stop_event.is_set():
                try:
                    item = self._requests.get(timeout=1.0)
                except queue.Empty:
                    self._close_stale(models)
                    continue
                if item is None:
                    return
                self._serve_request(item, handlers)
        finally:
            for _, model in models.values():
                model.close()

    def _close_stale(self, models: dict) -> None:
        """Stop the engines of models a reload replaced or removed, without
        waiting for the next `infer` request to notice."""
        for name in [n for n, (gen, _) in models.items() if self.generation.get(n) != gen]:
            models.pop(name)[1].close()

    def _serve_request(self, item: tuple, handlers: dict) -> None:
        req, respond = item
        try:
            result = handlers[req["method"]](req["params"])
            respond(protocol.encode_reply(req.get("id"), result))
        except ProtocolError as exc:
            respond(protocol.encode_reply(req.get("id"), error=exc))
        except Exception as exc:  # noqa: BLE001 - a failed request must not kill the worker
            log.warning("%s request failed: %s", req["method"], exc, extra={"event": "request_failed"})
            respond(protocol.encode_reply(req.get("id"), error=ProtocolError("failed", str(exc).splitlines()[0])))

    def _model_name(self, params: dict) -> str:
        name = param(params, "model", str, required=False)
        if name is None:
            return next(iter(self.bundles))
        if name not in self.bundles:
            raise ProtocolError("not_found", f"params.model: no model '{name}' (have {', '.join(self.bundles)})")
        return name

    def _infer(self, params: dict, models: dict) -> dict:
        name = self._model_name(params)
        image = decode_image(params)
        cached = models.get(name)
        if cached is None or cached[0] != self.generation[name]:
            if cached is not None:
                cached[1].close()
            models[name] = cached = (self.generation[name], Model(self.bundles[name], isolated=True))
        model = cached[1]
        try:
            result = model.infer(image)
        except EngineError:  # its process died: this request fails, the next one gets a fresh engine
            models.pop(name)[1].close()
            raise
        return {"model": model.name, "model_version": model.version, **result,
                "width": image.shape[1], "height": image.shape[0]}

    def _snapshot(self, params: dict) -> dict:
        name = param(params, "stream", str)
        quality = param(params, "quality", int, required=False, default=85)
        if not 1 <= quality <= 100:
            raise ProtocolError("bad_request", "params.quality: expected 1 to 100")
        stream = self.streams.get(name)
        if stream is None:
            raise ProtocolError("not_found", f"params.stream: no stream '{name}'")
        result, ring = stream.last_result, stream.ring
        if result is None or ring is None:
            raise ProtocolError("failed", f"stream '{name}' has no frame yet ({stream.current_state()})")
        frame = ring.read(result["slot"], result["slot_seq"]) if result["ring"] == ring.name else None
        if frame is None:  # the result's own frame was overwritten: take the newest and say so
            latest = ring.latest()
            frame = ring.read(*latest) if latest else None
            if frame is None:
                raise ProtocolError("failed", f"stream '{name}': no stable frame to read")
        draw_result(frame, result)
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return {"jpeg": jpeg.tobytes(), "seq": result["seq"], "frame_ts": result["frame_ts"],
                "width": frame.shape[1], "height": frame.shape[0], "detections": result["detections"],
                "classes": result["classes"]}

    # -- reload
    def _reload_request(self, params: dict) -> dict:
        name = param(params, "model", str, required=False)
        bundle = param(params, "bundle", str, required=False)
        if name is not None and name not in self.bundles:
            raise ProtocolError("not_found", f"params.model: no model '{name}'")
        if bundle is not None and name is None and len(self.bundles) > 1:
            raise ProtocolError("bad_request", "params.model: needed with params.bundle when several models run")
        names = [name] if name else list(self.bundles)
        paths = {n: bundle if bundle and n == (name or names[0]) else self.config.models[n] for n in names}
        t0 = time.monotonic()
        try:
            self.reload_models(paths)
        except LOAD_ERRORS as exc:
            raise ProtocolError("failed", str(exc).splitlines()[0]) from None
        return {"reloaded": names, "took_ms": round((time.monotonic() - t0) * 1e3, 1)}

    def reload_models(self, paths: dict) -> None:
        """Load the bundles at `paths` (model name -> dir), warm a new model for
        every stream using them, then swap all at once. Raises on failure:
        nothing is swapped and the old models keep serving."""
        with self._reload_lock:
            self.notifier.reloading("reloading")
            prepared: list = []
            try:
                new_bundles = {n: load_bundle(p) for n, p in paths.items()}
                for stream in self.streams.values():
                    bundle = new_bundles.get(stream.config.model)
                    if bundle is not None:
                        prepared.append((stream, stream.prepare_model(lambda b=bundle: Model(b, isolated=True))))
            except BaseException as exc:
                for _, worker in prepared:
                    worker.stop()
                self.last_reload = {"ok": False, "error": str(exc).splitlines()[0], "ts": time.time()}
                log.error("reload failed, old models keep serving: %s", self.last_reload["error"],
                          extra={"event": "reload_failed"})
                self._daemon_event("reload", self.last_reload["error"], ok=False)
                self.notifier.ready(self.status_line())
                raise
            for stream, worker in prepared:
                stream.commit_model(worker)
            for n, bundle in new_bundles.items():
                self.bundles[n] = bundle
                self.config.models[n] = str(paths[n])
                self.generation[n] += 1
            summary = ", ".join(f"{n} {b.version}" for n, b in new_bundles.items())
            self.last_reload = {"ok": True, "models": summary, "ts": time.time()}
            log.info("reloaded %s", summary, extra={"event": "reloaded", "bundle": summary})
            self._daemon_event("reload", summary, ok=True)
            self.notifier.ready(self.status_line())

    def reload_config(self) -> None:
        """SIGHUP: re-read the config; reload changed or all models (bundles may
        have changed in place), start new streams, stop removed ones."""
        path = self.config.path
        try:
            new = load_config(path)
        except ConfigError as exc:
            self.last_reload = {"ok": False, "error": str(exc), "ts": time.time()}
            log.error("reload: %s; keeping the running config", exc, extra={"event": "reload_failed"})
            self._daemon_event("reload", str(exc), ok=False)
            return
        try:
            kept = {n: p for n, p in new.models.items() if n in self.bundles}
            added = {n: p for n, p in new.models.items() if n not in self.bundles}
            for n, p in added.items():
                self.bundles[n] = load_bundle(p)
                self.generation[n] = 0
                self.config.models[n] = p
            if kept:
                self.reload_models(kept)
            wanted = {s.name: s for s in new.streams}
            for name in [n for n, s in self.streams.items() if n not in wanted or s.config != wanted[n]]:
                self._stop_stream(name)
            for name, sc in wanted.items():
                if name not in self.streams:
                    self._start_stream(sc)
            self.config.streams = new.streams
            if not kept:  # reload_models records the others
                self.last_reload = {"ok": True, "models": ", ".join(added) or "none", "ts": time.time()}
        except (*LOAD_ERRORS, SourceError) as exc:
            self.last_reload = {"ok": False, "error": str(exc).splitlines()[0], "ts": time.time()}
            log.error("reload: %s; the old models keep serving", exc, extra={"event": "reload_failed"})

    # -- status
    def status(self) -> dict:
        rss_kb = _rss_kb()
        return {
            "version": __version__, "protocol": protocol.VERSION,
            "uptime_s": round(time.monotonic() - self.started, 1), "rss_mb": round(rss_kb / 1024, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "engines_rss_mb": round(sum(_rss_kb(pid) for pid in child_pids()) / 1024, 1),
            "models": {n: {"version": b.version, "bundle": str(b.root), "task": b.task}
                       for n, b in self.bundles.items()},
            "streams": [s.status() for s in self.streams.values()],
            "last_reload": self.last_reload,
            "watchdog_stale": self.watchdog.stale(),
        }

    def status_line(self) -> str:
        parts = [f"{s.name} {s.current_state()} {s.fps():.1f} fps" for s in self.streams.values()]
        models = ", ".join(f"{n} {b.version}" for n, b in self.bundles.items())
        line = "; ".join(parts) or "no streams"
        if self.last_reload and not self.last_reload.get("ok"):
            line += " | last reload FAILED"
        return f"{line} | models: {models}"


def _test_fault() -> Optional[Callable]:
    """TEST ONLY (tests/test_install_sdk.py): LITED_FAULT=hang_inference_after:N
    makes each stream's inference thread block for ever after N frames, as a
    wedged driver call would, so that systemd's watchdog has to restart us."""
    spec = os.environ.get("LITED_FAULT", "")
    if not spec.startswith("hang_inference_after:"):
        return None
    log.warning("LITED_FAULT=%s: test-only fault injection is on", spec, extra={"event": "fault_injection"})
    frames, limit = itertools.count(1), int(spec.split(":", 1)[1])

    def hang_after_limit(_worker) -> None:
        if next(frames) > limit:
            threading.Event().wait()
    return hang_after_limit


def _request_id(data: bytes) -> Any:
    """The `id` of a request refused as too large, so the client can match the
    reply (ZeroMQ already bounds it to twice the limit); None if undecodable."""
    try:
        return protocol.decode_payload(data, max_bin=len(data)).get("id")
    except ProtocolError:
        return None


def _rss_kb(pid: object = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return 0


def decode_image(params: dict) -> np.ndarray:
    """An `infer` request's image: encoded bytes or a raw BGR array; bounded."""
    if "image" in params:
        data = param(params, "image", bytes)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            raise ProtocolError("bad_request", "params.image: not a decodable JPEG/PNG/BMP image")
        return image
    data = param(params, "array", bytes)
    shape = param(params, "shape", list)
    dtype = param(params, "dtype", str, required=False, default="uint8")
    if dtype != "uint8":
        raise ProtocolError("bad_request", "params.dtype: only 'uint8' (BGR) is accepted")
    if (len(shape) != 3 or shape[2] != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                     for d in shape)):
        raise ProtocolError("bad_request", "params.shape: expected [height, width, 3]")
    if shape[0] * shape[1] > MAX_IMAGE_PIXELS:
        raise ProtocolError("too_large", f"params.shape: {shape[0]}x{shape[1]} is over {MAX_IMAGE_PIXELS} pixels")
    if len(data) != shape[0] * shape[1] * 3:
        raise ProtocolError("bad_request", f"params.array: {len(data)} bytes, shape needs {shape[0] * shape[1] * 3}")
    return np.frombuffer(data, np.uint8).reshape(shape)


def draw_result(frame: np.ndarray, result: dict) -> None:
    """Boxes, labels and classes drawn in place on a BGR frame (snapshot, demo)."""
    for d in result.get("detections", []):
        x1, y1, x2, y2 = (int(round(v)) for v in d["box"])
        poly = d.get("polygon")
        if poly:
            cv2.polylines(frame, [np.array(poly, np.int32)], True, (0, 200, 0), 2)
        else:
            cv2.rectangle(frame, (x1, y1), (x2, y2), (0, 200, 0), 2)
        cv2.putText(frame, f"{d['label']} {d['score']:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 200, 0), 1, cv2.LINE_AA)
    for i, c in enumerate(result.get("classes", [])[:3]):
        cv2.putText(frame, f"{c['label']} {c['score']:.2f}", (8, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 200, 255), 1, cv2.LINE_AA)


def serve(config_path: str, insecure_tcp: bool = False) -> int:
    """`lited serve`: run until SIGTERM; bad config or bundle -> exception before anything starts."""
    config = load_config(config_path)
    daemon = Daemon(config, insecure_tcp)
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    daemon.run_forever()
    return 0

