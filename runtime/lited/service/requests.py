"""The request core: what every front end (the ZeroMQ bus today) asks of the service.

Rules it keeps:
- nothing a client sends can crash the daemon or stall other clients:
  requests are decoded by `protocol`; cheap ones (ping, status) are answered
  at once on the caller's thread, heavy ones (infer, reload, snapshot) are
  queued to worker threads with a bounded queue (a full queue is `busy`);
- every failure becomes a `ProtocolError` with a code and one line;
- each worker owns its models (a predictor belongs to one thread), each in
  an engine process of its own, stopped within a second once a reload
  replaces the model.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Optional, Protocol

import cv2

from lited import __version__, protocol
from lited.engines import EngineError
from lited.errors import first_line
from lited.model import Model
from lited.protocol import ProtocolError, param
from lited.service.images import decode_image
from lited.service.render import draw_result

log = logging.getLogger("lited.requests")
QUEUE_SIZE = 32
CHEAP = ("ping", "status")

# done(result, error): exactly one of them is None
Done = Callable[[Any, Optional[ProtocolError]], None]


class Service(Protocol):
    """What the request core needs of the daemon (service/daemon.py)."""
    bundles: dict
    generation: dict
    streams: dict
    stop_event: threading.Event
    ready: bool  # every configured stream started

    def status(self) -> dict: ...

    def reload_request(self, model: Optional[str], bundle: Optional[str], force: bool = False) -> dict: ...

    def make_model(self, name: str) -> Model: ...


class ModelCache:
    """A worker's own models, rebuilt when a reload bumps a model's generation."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._models: dict = {}  # name -> (generation, Model)

    def get(self, name: str) -> Model:
        cached = self._models.get(name)
        generation = self.service.generation[name]
        if cached is None or cached[0] != generation:
            if cached is not None:
                cached[1].close()
            cached = self._models[name] = (generation, self.service.make_model(name))
        return cached[1]

    def drop(self, name: str) -> None:
        """Stop a model whose engine failed: the next request builds a fresh one."""
        entry = self._models.pop(name, None)
        if entry is not None:
            entry[1].close()

    def close_stale(self) -> None:
        """Stop the engines of models a reload replaced or removed."""
        for name in [n for n, (gen, _) in self._models.items() if self.service.generation.get(n) != gen]:
            self.drop(name)

    def close(self) -> None:
        for name in list(self._models):
            self.drop(name)


class Requests:
    """Validates, queues and answers requests for any front end."""

    def __init__(self, service: Service, workers: int = 1, max_request_bytes: int = 16 << 20) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._threads = [threading.Thread(target=self._work, name=f"requests-{i}", daemon=True)
                         for i in range(workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass

    # -- front ends
    def on_message(self, data: bytes, respond: Callable[[bytes], None]) -> None:
        """The bus's handler: a msgpack request in, a msgpack reply out (now or later)."""
        request_id = None
        try:
            if len(data) > self.max_request_bytes:
                raise ProtocolError("too_large", f"request of {len(data)} bytes is over limits.max_request_bytes "
                                                 f"({self.max_request_bytes})", _request_id(data))
            req = protocol.decode_request(data, self.max_request_bytes)
        except ProtocolError as exc:
            respond(protocol.encode_reply(exc.request_id, error=exc))
            return
        request_id = req.get("id")
        self.call(req["method"], req["params"],
                  lambda result, error: respond(protocol.encode_reply(request_id, result, error)))

    def call(self, method: str, params: dict, done: Done) -> None:
        """Answer `method` now (cheap) or from a worker; `done` gets the result or the error."""
        if method not in CHEAP:
            try:
                self._queue.put_nowait((method, params, done))
            except queue.Full:
                done(None, ProtocolError("busy", "too many requests queued; retry"))
            return
        self._answer(method, params, done, None)

    # -- workers
    def _work(self) -> None:
        models = ModelCache(self.service)
        try:
            while not self.service.stop_event.is_set():
                try:
                    item = self._queue.get(timeout=1.0)
                except queue.Empty:
                    models.close_stale()
                    continue
                if item is None:
                    return
                self._answer(*item, models)
        finally:
            models.close()

    def _answer(self, method: str, params: dict, done: Done, models: Optional[ModelCache]) -> None:
        try:
            result = self._handle(method, params, models)
        except ProtocolError as exc:
            done(None, exc)
        except Exception as exc:  # noqa: BLE001 - a failed request must not kill the worker
            log.warning("%s request failed: %s", method, exc, extra={"event": "request_failed"})
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

    # -- handlers
    def _model_name(self, params: dict) -> str:
        bundles = self.service.bundles
        name = param(params, "model", str, required=False)
        if name is None:
            return next(iter(bundles))
        if name not in bundles:
            raise ProtocolError("not_found", f"params.model: no model '{name}' (have {', '.join(bundles)})")
        return name

    def _infer(self, params: dict, models: ModelCache) -> dict:
        name = self._model_name(params)
        image = decode_image(params)
        model = models.get(name)
        try:
            result = model.infer(image)
        except EngineError:  # its process died: this request fails, the next one gets a fresh engine
            models.drop(name)
            raise
        return {"model": model.name, "model_key": name, "model_version": model.version, **result,
                "width": image.shape[1], "height": image.shape[0]}

    def _snapshot(self, params: dict) -> dict:
        name = param(params, "stream", str)
        quality = param(params, "quality", int, required=False, default=85)
        if not 1 <= quality <= 100:
            raise ProtocolError("bad_request", "params.quality: expected 1 to 100")
        stream = self.service.streams.get(name)
        if stream is None:
            raise ProtocolError("not_found", f"params.stream: no stream '{name}'")
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


def _request_id(data: bytes) -> Any:
    """The `id` of a request refused as too large, so the client can match the
    reply (ZeroMQ already bounds it to twice the limit); None if undecodable."""
    try:
        return protocol.decode_payload(data, max_bin=len(data)).get("id")
    except ProtocolError as exc:
        return exc.request_id
