"""The request core: what every front end (the ZeroMQ bus today) asks of the service.

Rules it keeps:
- nothing a client sends can crash the daemon or stall other clients:
  requests are decoded by `protocol`; cheap ones (ping, status) are answered
  at once on the caller's thread, heavy ones (infer, reload, snapshot) are
  queued to worker threads with a bounded queue (a full queue is `busy`);
- every failure becomes a `ProtocolError` with a code and one line;
- each worker owns its models (a predictor belongs to one thread), each in
  an engine process of its own, stopped within a second once a reload
  replaces the model;
- every wait is bounded: an engine that does not answer within
  `engine_timeout` is killed (an `engine` event says so) and a fresh one
  serves the next request; each worker beats the watchdog, with a grace as
  long as the request it starts may legitimately take;
- memory is bounded across all requests, not per request: a request holds
  its bytes, and an encoded image what decoding it will take (read from its
  header), from arrival to reply, out of one budget (`max_inflight_bytes`);
  a request that does not fit now is `busy`, one that never could is
  `too_large`. A reply larger than the bus may queue for one client is
  `too_large` too.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Protocol

import cv2
import numpy as np

from lited import __version__, protocol
from lited.engine_process import OPEN_TIMEOUT
from lited.engines import EngineError
from lited.errors import first_line
from lited.model import Model
from lited.protocol import ProtocolError, param

if TYPE_CHECKING:
    from lited.stream import Stream
from lited.service.images import decode_image, image_cost
from lited.service.render import draw_result
from lited.validate import quoted

log = logging.getLogger("lited.requests")
QUEUE_SIZE = 32
# requests of one client waiting for or held by a worker: past that it is `busy`, not the others
# (one client queueing 300 snapshots made another's one at a time `busy` 4 times in 10)
PER_CLIENT = 8
# each method's params (docs/protocol.md): another is refused by name, as configs and manifests refuse
# an unknown field
PARAMS = {"ping": (), "status": (), "infer": ("image", "array", "shape", "dtype", "model"),
          "snapshot": ("stream", "quality"), "reload": ("model", "bundle", "force")}
CHEAP = ("ping", "status")
SNAPSHOT_GRACE = 30.0  # s a snapshot (a frame copy, drawing, JPEG) may take before the watchdog minds
IDLE_BEAT = 0.25  # s between an idle worker's watchdog beats (well under any WatchdogSec)

# done(result, error): exactly one of them is None
Done = Callable[[Any, Optional[ProtocolError]], None]


def stream_names(service: "Service") -> list:
    """Every configured stream: the running ones, then those still starting."""
    return [*service.streams, *service.warming]


def running_stream(service: "Service", name: str, field: str) -> Stream:
    """The running stream `name`. One still starting (its model warming up)
    has no result yet, which is said apart from a name that is not there."""
    stream = service.streams.get(name)
    if stream is None:
        if name in service.warming:
            raise ProtocolError("failed", f"stream '{name}' has no result yet (starting: model warming up)")
        have = ", ".join(stream_names(service)) or "none"
        raise ProtocolError("not_found", f"{field}: no stream {quoted(name)} (have {have})")  # a 60 KB name: cut
    return stream


def model_named(service: "Service", name: Optional[str], field: str) -> str:
    """The model `name` (None: the first configured), or not_found naming `field`: a daemon
    with `models: {}` has none to default to."""
    bundles = service.bundles
    if name is None:
        if not bundles:
            raise ProtocolError("not_found", f"{field}: none given, and no model to default to (the config's "
                                             "models is empty)")
        return next(iter(bundles))
    if name not in bundles:
        raise ProtocolError("not_found", f"{field}: no model {quoted(name)} (have {', '.join(bundles) or 'none'})")
    return name


class Service(Protocol):
    """What the request core needs of the daemon (service/daemon.py)."""
    bundles: dict
    generation: dict
    streams: dict
    warming: dict  # configured streams whose model is still warming up (state "starting")
    stop_event: threading.Event
    ready: bool  # every configured stream started

    def status(self) -> dict: ...

    def reload_request(self, model: Optional[str], bundle: Optional[str], force: bool = False) -> dict: ...

    def make_model(self, name: str) -> Model: ...

    def reload_grace(self) -> float:
        """Seconds a reload may legitimately take (the watchdog's grace)."""

    def event(self, kind: str, detail: str) -> None:
        """Publish a daemon event (`engine` when a request worker's engine failed)."""


class ByteBudget:
    """Bytes held by requests from arrival to reply, across all of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.refused = 0  # requests answered `busy` because the budget was spent
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        with self._lock:
            if self.used + nbytes > self.limit:
                self.refused += 1
                return False
            self.used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


class ModelCache:
    """A worker's own models, rebuilt when a reload bumps a model's generation."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._models: dict = {}  # name -> (generation, Model)

    def get(self, name: str) -> Model:
        cached = self._models.get(name)
        if cached is not None and not self.alive(name):
            cached = None
        generation = self.service.generation.get(name)
        if generation is None:  # a reload removed it since the request was checked
            model_named(self.service, name, "params.model")
        if cached is None or cached[0] != generation:
            if cached is not None:
                cached[1].close()
            cached = self._models[name] = (generation, self.service.make_model(name))
        return cached[1]

    def alive(self, name: str) -> bool:
        """False, and the model dropped (a fresh one serves the next request) with an `engine` event,
        if one of its engine processes ended while idle (an OOM kill): the next request failed."""
        entry = self._models.get(name)
        ended = entry[1].engine_ended() if entry is not None else None
        if ended:
            self.drop(name)
            self.service.event("engine", f"{threading.current_thread().name}: model {name}: {ended} while idle; "
                                         "a fresh engine process serves the next request")
        return not ended

    def drop(self, name: str) -> None:
        """Stop a model whose engine failed: the next request builds a fresh one."""
        entry = self._models.pop(name, None)
        if entry is not None:
            entry[1].close()

    def close_stale(self) -> None:
        """Stop the engines of models a reload replaced or removed; drop those whose engine ended
        (and reap it: it stayed a zombie until the next request)."""
        for name in [n for n, (gen, _) in self._models.items() if self.service.generation.get(n) != gen]:
            self.drop(name)
        for name in list(self._models):
            self.alive(name)

    def close(self) -> None:
        for name in list(self._models):
            self.drop(name)


class Requests:
    """Validates, queues and answers requests for any front end."""

    # Test hook: tests install a callable(worker name, method) that runs in a worker
    # after it took a request and before it starts it, to wedge it. None in production.
    fault_hook: ClassVar[Optional[Callable[[str, str], None]]] = None

    def __init__(self, service: Service, workers: int = 1, max_request_bytes: int = 16 << 20,
                 max_inflight_bytes: int = 128 << 20, engine_timeout: Optional[float] = 20.0,
                 max_reply_bytes: Optional[int] = None,
                 heartbeat: Optional[Callable[[str, float], None]] = None) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.max_reply_bytes = max_reply_bytes
        self.engine_timeout = engine_timeout
        self.budget = ByteBudget(max_inflight_bytes)
        self.heartbeat = heartbeat or (lambda name, grace=0.0: None)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._per_client: collections.Counter = collections.Counter()  # client -> requests queued or running
        self._per_client_lock = threading.Lock()
        self.refused_queued = 0  # `busy`: the queue, or the client's share of it, was full
        self.loop_names = [f"requests-{i}" for i in range(workers)]
        self._threads = [threading.Thread(target=self._work, args=(name,), name=name, daemon=True)
                         for name in self.loop_names]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass

    def stats(self) -> dict:
        return {"inflight_bytes": self.budget.used, "max_inflight_bytes": self.budget.limit,
                "refused_busy": self.budget.refused + self.refused_queued}

    # -- front ends
    def on_message(self, data: bytes, respond: Callable[[bytes], None], client: Any = None) -> None:
        """The bus's handler: a msgpack request in, a msgpack reply out (now or later).
        The request's bytes count against the in-flight budget until its reply is made;
        `client` (its connection) gets at most PER_CLIENT of the workers' queue."""
        try:
            if len(data) > self.max_request_bytes:
                raise ProtocolError("too_large", f"request of {len(data)} bytes is over limits.max_request_bytes "
                                                 f"({self.max_request_bytes})", protocol.request_id_of(data))
            if not self.budget.take(len(data)):
                raise ProtocolError("busy", f"requests in flight hold {self.budget.used} bytes; "
                                            f"this one ({len(data)}) would pass limits.max_inflight_bytes; retry",
                                    protocol.request_id_of(data))
        except ProtocolError as exc:
            respond(protocol.encode_reply(exc.request_id, error=exc))
            return
        held = [len(data)]  # given back once, when the reply is made
        request_id = None

        def reply(result: Any, error: Optional[ProtocolError]) -> None:
            payload = protocol.encode_reply(request_id, result, error)
            if self.max_reply_bytes is not None and len(payload) > self.max_reply_bytes:
                payload = protocol.encode_reply(request_id, error=ProtocolError(
                    "too_large", f"reply of {len(payload)} bytes is over the {self.max_reply_bytes} bytes the bus "
                                 "queues for one client (a snapshot: ask for a lower quality)"))
            self.budget.give(held.pop() if held else 0)
            respond(payload)

        try:
            req = protocol.decode_request(data, self.max_request_bytes)
        except ProtocolError as exc:
            request_id = exc.request_id
            reply(None, exc)
            return
        request_id = req.get("id")
        self.call(req["method"], req["params"], reply, client)

    def call(self, method: str, params: dict, done: Done, client: Any = None) -> None:
        """Answer `method` now (cheap) or from a worker; `done` gets the result or the error.
        A nil parameter is an absent one (docs/protocol.md), whoever sends it. `client`:
        who asks (None: no share kept, e.g. the uplink)."""
        if any(v is None for v in params.values()):
            params = {k: v for k, v in params.items() if v is not None}
        known = PARAMS.get(method)
        unknown = [k for k in params if known is not None and k not in known]
        if unknown:  # a typo (`modle`) ran the default model, in silence
            done(None, ProtocolError("bad_request", f"params.{str(unknown[0])[:64]}: unknown for {method} "
                                                    f"(known: {', '.join(known) or 'none'})"))
            return
        if method in CHEAP:
            self._answer(method, params, done, None)
            return
        with self._per_client_lock:
            if client is not None and self._per_client[client] >= PER_CLIENT:
                why = f"this client has {PER_CLIENT} requests waiting or running; wait for their replies"
            else:
                try:
                    self._queue.put_nowait((method, params, self._counted(done, client)))
                    self._per_client[client] += 1
                    return
                except queue.Full:
                    why = "too many requests queued; retry"
            self.refused_queued += 1
        done(None, ProtocolError("busy", why))

    def _counted(self, done: Done, client: Any) -> Done:
        """`done`, which gives the client's share back first."""
        def finished(result: Any, error: Optional[ProtocolError]) -> None:
            with self._per_client_lock:
                self._per_client[client] -= 1
                if self._per_client[client] <= 0:
                    del self._per_client[client]
            done(result, error)
        return finished

    # -- workers
    def _work(self, name: str) -> None:
        models = ModelCache(self.service)
        try:
            while not self.service.stop_event.is_set():
                self.heartbeat(name, 0.0)
                try:
                    item = self._queue.get(timeout=IDLE_BEAT)
                except queue.Empty:
                    models.close_stale()
                    continue
                if item is None:
                    return
                fault = Requests.fault_hook
                if fault is not None:
                    fault(name, item[0])
                self.heartbeat(name, self._grace(item[0]))
                self._answer(*item, models)
        finally:
            models.close()

    def _grace(self, method: str) -> float:
        """How long `method` may legitimately keep a worker from beating: an
        infer may build the model's engine process, then waits at most
        engine_timeout for each run (the warm-up and the request's)."""
        if method == "reload":
            return self.service.reload_grace()
        if method == "infer":
            return OPEN_TIMEOUT + 2 * (self.engine_timeout or OPEN_TIMEOUT)
        return SNAPSHOT_GRACE

    def _answer(self, method: str, params: dict, done: Done, models: Optional[ModelCache]) -> None:
        try:
            result = self._handle(method, params, models)
        except ProtocolError as exc:
            done(None, exc)
        except Exception as exc:  # noqa: BLE001 - a failed request must not kill the worker
            log.warning("%s request failed: %s", method, first_line(exc), extra={"event": "request_failed"})
            done(None, ProtocolError("failed", first_line(exc)))
        else:
            done(result, None)

    def _handle(self, method: str, params: dict, models: Optional[ModelCache]) -> Any:
        if method == "ping":
            return {"pong": True, "version": __version__, "protocol": protocol.VERSION,
                    "ready": self.service.ready}
        if method == "status":
            return self.service.status()
        if method == "infer":
            return self._infer(params, models)
        if method == "snapshot":
            return self._snapshot(params)
        if method == "reload":
            return self.service.reload_request(param(params, "model", str, required=False),
                                               param(params, "bundle", str, required=False),
                                               param(params, "force", bool, required=False, default=False))
        raise ProtocolError("unknown_method", f"method: unknown {method[:64]!r}")

    def _reserve(self, nbytes: int, what: str) -> None:
        """Hold `nbytes` more of the in-flight budget for this request (given
        back by `self.budget.give`), or refuse it: busy now, or too large ever."""
        if nbytes > self.budget.limit:
            raise ProtocolError("too_large", f"{what} needs {nbytes} bytes, over limits.max_inflight_bytes "
                                             f"({self.budget.limit})")
        if not self.budget.take(nbytes):
            raise ProtocolError("busy", f"{what} needs {nbytes} bytes and requests in flight hold "
                                        f"{self.budget.used} of limits.max_inflight_bytes; retry")

    # -- handlers
    def _model_name(self, params: dict) -> str:
        return model_named(self.service, param(params, "model", str, required=False), "params.model")

    def _infer(self, params: dict, models: ModelCache) -> dict:
        name = self._model_name(params)
        cost = image_cost(params)  # the header's size, before a pixel is decoded
        self._reserve(cost, "decoding params.image")
        try:
            image = decode_image(params)
            model = models.get(name)
            try:
                result = model.infer(image)
            except EngineError as exc:  # died or stuck (killed): this request fails, the next gets a fresh engine
                models.drop(name)
                self.service.event("engine", f"{threading.current_thread().name}: model {name}: {first_line(exc)}; "
                                             "a fresh engine process serves the next request")
                raise
            return {"model": model.name, "model_key": name, "model_version": model.version, **result,
                    "width": image.shape[1], "height": image.shape[0]}
        finally:
            self.budget.give(cost)

    def _snapshot(self, params: dict) -> dict:
        name = param(params, "stream", str)
        quality = param(params, "quality", int, required=False, default=85)
        if not 1 <= quality <= 100:
            raise ProtocolError("bad_request", "params.quality: expected 1 to 100")
        stream = running_stream(self.service, name, "params.stream")
        ring = stream.ring
        # the frame's copy, OpenCV's JPEG buffer and the reply's bytes
        cost = 3 * int(np.prod(ring.shape)) if ring is not None else 0
        self._reserve(cost, f"a snapshot of stream '{name}'")
        try:
            result, frame = stream.latest_result_frame()
            if result is None:
                raise ProtocolError("failed", f"stream '{name}' has no result yet ({stream.current_state()})")
            if frame is None:  # never drawn on another frame: say so
                raise ProtocolError("failed", f"stream '{name}': the frame of result {result['seq']} is gone")
            draw_result(frame, result)
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            return {"jpeg": jpeg.tobytes(), "seq": result["seq"], "frame_ts": result["frame_ts"],
                    "width": frame.shape[1], "height": frame.shape[0], "detections": result["detections"],
                    "classes": result["classes"], "frame": protocol.frame_of(result)}
        finally:
            self.budget.give(cost)
