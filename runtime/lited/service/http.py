"""The HTTP front end: the API, a live page and /metrics (docs/http.md).

Built on tornado (imported only when the config has `http`): one thread
("http") runs one asyncio loop serving every client, MJPEG and
server-sent-events clients included, as coroutines rather than a thread
each; bodies are streamed, so a body is refused from its Content-Length
before any of it is read.

Rules it keeps:
- heavy work never runs on the loop: infer, reload and snapshot go to the
  request core (service/requests.py), the bus's path, and come back with its
  error codes; JPEGs for live views are encoded by service/live.py;
- every answer is JSON or an image, never a traceback: errors are
  `{"v": 1, "ok": false, "error": {"code", "message"}}` with an HTTP status
  per code (HTTP_STATUS);
- memory is bounded: a body by `max_body_bytes`, all bodies in flight
  (counted `BODY_COPIES` times: the body and the image taken out of it)
  by `body_budget_bytes` until their answer is sent; live and event clients
  are capped, each holding at most one frame or a bounded queue;
- any address but loopback needs the bearer token (config.py refuses it
  otherwise); the page gets it once as `/?token=...` and keeps it in an
  HttpOnly, SameSite=Strict cookie.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import errno
import hmac
import ipaddress
import json
import logging
import math
import re
import resource
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Optional, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np
import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.iostream
import tornado.netutil
import tornado.web
from tornado.httputil import HTTPInputError, parse_body_arguments

from lited.config import BODY_COPIES, HttpConfig, address
from lited.imageheader import imdecode
from lited.protocol import ProtocolError, event_message, json_ready, result_message
from lited.service import easyedge, live
from lited.service.metrics import Metrics
from lited.service.render import draw_result
from lited.service.requests import model_named, running_stream, stream_names

log = logging.getLogger("lited.http")

HTTP_STATUS = {"bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404,
               "unknown_method": 405, "too_large": 413, "failed": 500, "busy": 503}
CODE_OF_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                  405: "unknown_method", 413: "too_large", 503: "busy"}
EVENT_QUEUE = 256         # messages waiting per server-sent-events client before it loses some
PEER_CHECK_S = 1.0        # s between looks at whether a streaming client is still there
KEEP_ALIVE_S = 15.0       # s of silence before an event stream sends a comment line
SEND_TIMEOUT = 10.0       # s a streaming client may take to read a frame or message before it is dropped
MAX_CONNECTIONS = 512      # HTTP connections open at once a listen address, beside the live and event clients
# the config lets in; past them a new one is closed at once
ACCEPT_PAUSE_S = 1.0       # out of descriptors, accepting pauses this long between tries
ACCEPT_SAY_S = 60.0        # ... and says so at most this often (with its recovery)
SHORT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
FILES_KEPT = 192           # descriptors the rest of the daemon keeps, before HTTP takes half of what is left
PAGE_DIR = Path(__file__).with_name("page")
PAGE_FILES = {"lited.js": "application/javascript; charset=utf-8", "lited.css": "text/css; charset=utf-8"}
COOKIE = "lited_token"
NAME = r"([A-Za-z0-9_][A-Za-z0-9_.-]{0,63})"


class CappedHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTP server that keeps at most `max_connections` connections open: each holds a file
    descriptor, and idle ones (a flood from a local user) ran the daemon out of them (at the
    limit tornado's accept loop spins, and libzmq aborts on its next accept). Past the cap a new
    connection is closed as soon as it is accepted, and counted in `connections_refused`."""

    def initialize(self, *args: Any, max_connections: int = MAX_CONNECTIONS, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.open_streams: "weakref.WeakSet" = weakref.WeakSet()
        self.connections_refused = 0

    def add_sockets(self, sockets: list) -> None:
        """tornado's, with an accept loop that pauses while descriptors are short: tornado's raised
        at every wake-up while the connection waited in the listen queue (a limit lowered on the
        running daemon: 57,000 tracebacks in 6 s, 24 MB of log)."""
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = self._accept_on(sock)

    def _accept_on(self, sock: socket.socket) -> Callable[[], None]:
        """Accept connections on `sock` as tornado.netutil.add_accept_handler does; on EMFILE and
        the like, say so (at most every ACCEPT_SAY_S, and when it accepts again) and look again
        every ACCEPT_PAUSE_S. Returns the remover."""
        loop = tornado.ioloop.IOLoop.current()
        where = address(*sock.getsockname()[:2])
        state: dict = {"removed": False, "paused": None, "said_at": -ACCEPT_SAY_S, "said": False}

        def accept(fd: Any, events: int) -> None:
            for _ in range(128):  # tornado's bound: others get their turn
                if state["removed"]:
                    return
                try:
                    connection, peer = sock.accept()
                except BlockingIOError:
                    return
                except ConnectionAbortedError:
                    continue
                except OSError as exc:
                    if exc.errno not in SHORT_OF_DESCRIPTORS:
                        raise
                    loop.remove_handler(sock)
                    state["paused"] = loop.call_later(ACCEPT_PAUSE_S, resume)
                    if time.monotonic() - state["said_at"] >= ACCEPT_SAY_S:  # at the edge it comes and goes
                        state["said_at"], state["said"] = time.monotonic(), True
                        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                        log.warning("http: cannot accept connections on %s: %s (the open-files limit is %d: "
                                    "ulimit -n, LimitNOFILE=); trying again every %g s", where, exc.strerror,
                                    limit, ACCEPT_PAUSE_S, extra={"event": "http_error"})
                    return
                if state["said"]:
                    state["said"] = False
                    log.info("http: accepting connections on %s again", where, extra={"event": "http"})
                self._handle_connection(connection, peer)

        def resume() -> None:
            state["paused"] = None
            if not state["removed"]:
                loop.add_handler(sock, accept, tornado.ioloop.IOLoop.READ)

        def remove() -> None:
            state["removed"] = True
            if state["paused"] is not None:
                loop.remove_timeout(state["paused"])
            else:
                loop.remove_handler(sock)

        loop.add_handler(sock, accept, tornado.ioloop.IOLoop.READ)
        return remove

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        if len(self.open_streams) >= self.max_connections:
            for held in list(self.open_streams):  # a closed one leaves when it is collected: count the open
                if held.closed():
                    self.open_streams.discard(held)
        if len(self.open_streams) >= self.max_connections:
            self.connections_refused += 1
            stream.close()
            return
        self.open_streams.add(stream)
        super().handle_stream(stream, address)


class Service(Protocol):
    """What the front end needs of the daemon (service/daemon.py)."""
    bundles: dict
    streams: dict
    warming: dict   # configured streams whose model is still warming up (state "starting")
    requests: Any   # service/requests.Requests

    def status(self) -> dict: ...


class HttpFront:
    """The HTTP front end: `start()` binds and serves on its own thread;
    `on_result`/`on_event` are called by stream threads and never block."""

    def __init__(self, service: Service, config: HttpConfig, heartbeat: Optional[Callable[[], None]] = None) -> None:
        self.service = service
        self.config = config
        self.heartbeat = heartbeat or (lambda: None)
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.listening: list = []          # "host:port" actually bound
        self.views: dict = {}              # stream name -> live.LiveView, made at its first watcher
        self.live_clients = 0
        self.events = EventFanout(self, config.max_event_clients)
        self.budget_used = 0               # bytes of bodies in flight (BODY_COPIES x their size)
        self.request_counts: collections.Counter = collections.Counter()  # (route, status) -> n
        self.metrics = Metrics(service.status, service.streams, self.figures)
        self.drawer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="http-draw")
        self.page = {name: (PAGE_DIR / name).read_bytes() for name in ("index.html", *PAGE_FILES)}
        self._servers: list = []
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    # -- lifecycle
    def start(self) -> None:
        """Bind every listen address and serve; raises OSError naming the address that cannot be bound."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join(5)
            raise self._error
        log.info("http: serving on %s", ", ".join(self.listening), extra={"event": "http"})

    def _connections_room(self) -> int:
        """Connections an address keeps open: MAX_CONNECTIONS beside the live and event clients'
        places, or fewer where the open-files limit would not hold them all (at the limit tornado's
        accept loop spins: measured under a hard limit of 256, the watchdog's pings stopped)."""
        places = MAX_CONNECTIONS + self.config.max_live_clients + self.config.max_event_clients
        room = max(16, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FILES_KEPT) // (2 * len(self.config.listen)))
        if room < places:
            log.warning("http: the open-files limit leaves room for %d connections an address, not %d (ulimit -n, "
                        "LimitNOFILE=)", room, places, extra={"event": "http"})
        return min(room, places)

    def _run(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            app = make_app(self)
            for host, port in self.config.listen:
                try:
                    sockets = tornado.netutil.bind_sockets(port, host)
                except OSError as exc:
                    raise OSError(f"http.listen: {address(host, port)}: cannot bind ({exc.strerror})") from None
                server = CappedHTTPServer(
                    app, max_connections=self._connections_room(),
                    max_body_size=4 * self.config.max_body_bytes, max_buffer_size=4 << 20,
                    idle_connection_timeout=60, body_timeout=60, max_header_size=16 << 10)
                server.add_sockets(sockets)
                self._servers.append(server)
                for sock in sockets:
                    self.listening.append(address(*sock.getsockname()[:2]))
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            for server in self._servers:
                server.stop()
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        self._beat()
        loop.run_forever()
        loop.close()

    def _beat(self) -> None:
        """The watchdog's heartbeat, every second on asyncio's monotonic clock: tornado's
        PeriodicCallback schedules on the wall clock, so a step back (NTP on a board without an
        RTC) held its next beat for as long as the step, and systemd's watchdog restarted us."""
        self.loop.call_later(1.0, self._beat)  # first: a heartbeat that raised would end the beats
        self.heartbeat()

    def stop(self) -> None:
        if self.loop is None or not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._shutdown()))
        self._thread.join(5)
        self.drawer.shutdown(wait=False)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.stop()
        for view in self.views.values():
            view.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.close_all_connections(), 2)
            except asyncio.TimeoutError:
                pass
        self.loop.stop()

    # -- from stream threads
    def on_result(self, result: dict) -> None:
        view = self.views.get(result["stream"])
        if view is not None:
            view.on_result(result)
        self.events.publish("result", result)

    def on_event(self, event: dict) -> None:
        self.events.publish("event", event)

    # -- status and metrics
    def status(self) -> dict:
        return {"listening": list(self.listening), "live_clients": self.live_clients,
                "event_clients": len(self.events.clients),
                "connections_refused": sum(server.connections_refused for server in self._servers)}

    def figures(self) -> dict:
        return {"requests": dict(self.request_counts), "live_clients": self.live_clients,
                "event_clients": len(self.events.clients),
                "live": {name: (v.encoded, v.overwritten) for name, v in list(self.views.items())
                         if name in self.service.streams}}

    def post(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` on the loop (from any thread); dropped once the loop is closed."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass

    # -- loop side
    async def call(self, method: str, params: dict) -> Any:
        """Ask the request core; the result, or its ProtocolError raised."""
        future = self.loop.create_future()

        def done(result: Any, error: Optional[ProtocolError]) -> None:  # a worker thread, or this one
            self.post(_settle, future, result, error)

        self.service.requests.call(method, params, done)
        return await future

    def live_view(self, name: str) -> Optional[live.LiveView]:
        if name not in self.service.streams:
            return None
        for gone in [n for n, v in self.views.items() if n not in self.service.streams and not v.watchers]:
            del self.views[gone]  # a stream a reload removed: its view and its figures go
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = live.LiveView(name, self.service.streams, self.config.live_fps, self.post)
        return view

    def take_budget(self, n: int) -> bool:
        if self.budget_used + n > self.config.body_budget_bytes:
            return False
        self.budget_used += n
        return True


def _settle(future: asyncio.Future, result: Any, error: Optional[ProtocolError]) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class EventClient:
    __slots__ = ("queue", "dropped", "streams", "types")

    def __init__(self, streams: set, types: set) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(EVENT_QUEUE)
        self.dropped = 0
        self.streams, self.types = streams, types


class EventFanout:
    """Results and events to server-sent-events clients: one JSON encoding
    per message, a bounded queue per client (what does not fit is counted and
    told), nothing at all while nobody listens."""

    def __init__(self, front: HttpFront, max_clients: int) -> None:
        self.front = front
        self.max_clients = max_clients
        self.clients: set = set()

    def publish(self, kind: str, message: dict) -> None:  # any thread
        if self.clients:
            self.front.post(self._deliver, kind, message)

    def _deliver(self, kind: str, message: dict) -> None:
        data = None
        for client in list(self.clients):
            if (client.streams and message.get("stream") not in client.streams) or \
                    (client.types and kind not in client.types):
                continue
            if data is None:
                shown = json_ready(result_message(message)) if kind == "result" else event_message(message)
                data = f"event: {kind}\ndata: {json.dumps(shown, separators=(',', ':'))}\n\n".encode()
            try:
                client.queue.put_nowait(data)
            except asyncio.QueueFull:
                client.dropped += 1


# -- request handlers ------------------------------------------------------------------------------

class NotText(tornado.web.HTTPError):
    """A query or path argument that is not UTF-8 (tornado's own 400 said only "Bad Request")."""

    def __init__(self, name: Optional[str]) -> None:
        super().__init__(400)
        self.message = f"{(name or 'path')[:64]}: not UTF-8 text"


def browser_problem(request: tornado.httputil.HTTPServerRequest, has_token: bool) -> Optional[str]:
    """Why a browser may not have sent this request on its user's behalf, or None. A page of
    another site can post to a loopback address (a form, or fetch with a simple body: no
    preflight), so a request that changes something must come from this origin; and with no
    token, a page whose name the attacker points at 127.0.0.1 (DNS rebinding) is this origin to
    the browser, so without a token only loopback names are answered."""
    origin = request.headers.get("Origin")
    if request.method not in ("GET", "HEAD") and origin is not None and urlsplit(origin).netloc != request.host:
        return f"a request from another site (Origin: {origin[:64]}): only this daemon's own page may send it"
    if not has_token and not _loopback_name(request.host_name):
        return (f"Host: {request.host[:64]!r} is not a loopback name: with no http.token only localhost, "
                "127.0.0.0/8 and [::1] are answered (a page of another site can give its name this address)")
    return None


def _loopback_name(host: str) -> bool:
    host = host.strip("[]").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def query_fields(handler: tornado.web.RequestHandler) -> dict:
    return {k: handler.get_query_argument(k) for k in handler.request.query_arguments}


def _number_field(fields: dict, name: str) -> Optional[float]:
    """Field `name` as a number: a number or a string of one; None when null or empty; NaN for
    anything else (JSON's `true` is not 1.0; an integer past float's range), which no range takes."""
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        return math.nan


def threshold_of(fields: dict) -> Optional[float]:
    value = _number_field(fields, "threshold")
    if value is not None and not 0.0 <= value <= 1.0:
        raise ProtocolError("bad_request", f"threshold: expected a number from 0 to 1, got {_shown(fields['threshold'])}")
    return value


def top_num_of(fields: dict) -> Optional[int]:
    """EasyEdge's `top_num`, taken as `threshold` is: a whole number of at least 1 (2.0 is 2)."""
    value = _number_field(fields, "top_num")
    if value is not None and not (value >= 1 and value.is_integer()):  # NaN and infinity fail here too
        raise ProtocolError("bad_request", f"top_num: expected a whole number of at least 1, "
                                           f"got {_shown(fields['top_num'])}")
    return None if value is None else int(value)


def _shown(raw: Any) -> str:
    """A field's value in a message as its client wrote it: JSON's `true`, a string quoted."""
    return json.dumps(raw)[:32] if not isinstance(raw, str) else repr(raw[:32])


def above(result: dict, threshold: Optional[float]) -> dict:
    """`result` without the detections and classes scored under `threshold`."""
    if threshold is None:
        return result
    return {**result, "detections": [d for d in result["detections"] if d["score"] >= threshold],
            "classes": [c for c in result["classes"] if c["score"] >= threshold]}


URL_SAFE = str.maketrans("-_", "+/")
WHITESPACE = re.compile(r"\s+")


def base64_image(body: bytes, key: str) -> tuple:
    """(image bytes, the JSON object) of a base64 JSON body `{key: "<base64>", ...}`."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep (it was a 500)
        raise ProtocolError("bad_request", "body: not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
        raise ProtocolError("bad_request", f"{key}: expected a base64 string in a JSON object")
    text = obj.pop(key)
    if text.startswith("data:"):  # a data URL's header, which the SDKs ask clients to leave out
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True), obj
    except ValueError:
        pass
    # As other clients encode it: wrapped in lines (GNU base64, Python's encodebytes, Java's MIME
    # encoder), URL-safe, without its padding; anything else is refused, not guessed at. One new
    # copy of the text at a time: a body counts three copies against the budget (docs/http.md, Memory).
    text = WHITESPACE.sub("", text)
    text = text.translate(URL_SAFE)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True), obj
    except ValueError:
        raise ProtocolError("bad_request", f"{key}: not base64") from None


@tornado.web.stream_request_body
class Handler(tornado.web.RequestHandler):
    """Every route: the token, JSON errors, and bodies streamed and bounded.

    Routes that take a body (`takes_body`) collect it up to `max_body_bytes`,
    refused from Content-Length before a byte is read; the others discard
    what a client sends."""

    route = "other"        # the metrics label
    takes_body = False

    def initialize(self) -> None:
        self.front: HttpFront = self.application.settings["front"]
        self._chunks: list = []
        self._received = 0
        self._budget = 0
        self._refused = False

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.clear_header("Server")

    # -- authorization and body admission (before the body is read)
    def prepare(self) -> None:
        if not self.authorized() or not self.takes_body:
            return
        length = self.request.headers.get("Content-Length")
        cfg = self.front.config
        if length is not None:
            if not length.isdigit():
                return self.refuse("bad_request", f"Content-Length: expected a whole number of bytes, got {length[:32]!r}")
            n = int(length)
            if n > cfg.max_body_bytes:
                return self.refuse("too_large", f"body of {n} bytes is over http.max_body_bytes ({cfg.max_body_bytes})")
            self._reserve(BODY_COPIES * n)

    def _reserve(self, n: int) -> bool:
        if self.front.take_budget(n):
            self._budget += n
            return True
        self.refuse("busy", "too many request bodies in flight; retry", {"Retry-After": "1"})
        return False

    def data_received(self, chunk: bytes) -> None:
        if not self.takes_body or self._finished or self._refused:
            return
        self._received += len(chunk)
        if self._received > self.front.config.max_body_bytes:
            return self.refuse("too_large", f"body is over http.max_body_bytes ({self.front.config.max_body_bytes})")
        if self._received > self._budget // BODY_COPIES and not self._reserve(BODY_COPIES * len(chunk)):
            return  # chunked: its budget is taken as it comes
        self._chunks.append(chunk)

    def body(self) -> bytes:
        """The whole body, once (the chunks are let go)."""
        chunks, self._chunks = self._chunks, []
        return b"".join(chunks)

    def on_finish(self) -> None:
        self._release()

    def on_connection_close(self) -> None:
        self._release()
        super().on_connection_close()

    def _release(self) -> None:
        self.front.budget_used -= self._budget
        self._budget = 0
        self._chunks = []

    def authorized(self) -> bool:
        """Not a browser's request from another site; then the bearer token or the page's cookie."""
        token = self.front.config.token
        problem = browser_problem(self.request, token is not None)
        if problem:
            self.refuse("forbidden", problem)
            return False
        if token is None or (self.route == "/metrics" and self.front.config.metrics_public):
            return True
        header = self.request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer " and _same(header[7:].strip(), token):
            return True
        cookie = self.get_cookie(COOKIE)
        if cookie and _same(cookie, token):
            return True
        self.refuse("unauthorized", "missing or wrong token: send 'Authorization: Bearer <token>' "
                                  "(a browser: open /?token=<token> once)", {"WWW-Authenticate": 'Bearer realm="lited"'})
        return False

    def drop(self) -> None:
        """Let go of a streaming client whose socket took nothing for SEND_TIMEOUT: its
        connection closed now, with what it has not read (ending the body instead left the
        connection open, its socket and buffers held, until the client closed it)."""
        self.request.connection.close()

    # -- answers
    def refuse(self, code: str, message: str, headers: Optional[dict] = None) -> None:
        """Fail before the body was read (in prepare or data_received). tornado
        then closes the connection once the answer is written, without reading
        the rest of the body (a client still sending it may see a reset);
        `Connection: close` says so, or a keep-alive client would send its next
        request into a closing connection."""
        self._refused = True
        self._chunks = []
        self.fail(code, message, {**(headers or {}), "Connection": "close"})

    def fail(self, code: str, message: str, headers: Optional[dict] = None) -> None:
        if self._finished:
            return
        self.clear()
        self.set_status(HTTP_STATUS.get(code, 500))
        for key, value in (headers or {}).items():
            self.set_header(key, value)
        if code == "busy" and "Retry-After" not in (headers or {}):
            self.set_header("Retry-After", "1")
        self.send_json(self.error_body(code, message), self.get_status())

    def error_body(self, code: str, message: str) -> dict:
        return {"v": 1, "ok": False, "error": {"code": code, "message": message}}

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))

    def decode_argument(self, value: bytes, name: Optional[str] = None) -> str:
        """A query (`name`) or path argument as text; NotText if it is not UTF-8."""
        try:
            return value if isinstance(value, str) else value.decode("utf-8")
        except UnicodeDecodeError:
            raise NotText(name) from None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Whatever went wrong, a JSON error; the traceback goes to the log only."""
        code = CODE_OF_STATUS.get(status_code, "failed")
        message = self._reason if status_code < 500 else "internal error (see the daemon's log)"
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, NotText):
            message = error.message
        if status_code == 405:  # RFC 9110: a 405 lists the methods the route has
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(self.error_body(code, message), separators=(",", ":")))

    def allowed_methods(self) -> list:
        """The methods this route defines (HEAD and OPTIONS: none does)."""
        base = tornado.web.RequestHandler
        return [m for m in self.SUPPORTED_METHODS
                if getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None)]

    def peer_gone(self) -> bool:
        """Has the client closed its end? Tornado reads nothing while a handler
        streams, so it would notice only when a write fails (seconds later, at
        the next keep-alive): a streaming client's place is freed at once."""
        stream = self.request.connection.stream
        if stream.closed():
            return True
        try:
            return stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:  # reset
            return True

    def compute_etag(self) -> None:
        return None  # answers are live figures and frames: never cached

    async def ask(self, method: str, params: dict) -> Any:
        return await self.front.call(method, params)

    def image_and_fields(self) -> tuple:
        """(image bytes, fields) from a raw image body or multipart/form-data (part `image` or `file`);
        fields are the query's, then the form's."""
        ctype = self.request.headers.get("Content-Type", "")
        fields = query_fields(self)
        body = self.body()
        if ctype.lower().startswith("multipart/form-data"):
            args: dict = {}
            files: dict = {}
            try:
                parse_body_arguments(ctype, body, args, files)
            except HTTPInputError as exc:
                why = str(exc).replace("Invalid multipart/form-data: ", "")  # tornado says it twice
                raise ProtocolError("bad_request", f"body: not a multipart/form-data body ({why})") from None
            del body
            image = next((files[key][0]["body"] for key in ("image", "file") if key in files), None)
            for key in ("image", "file"):  # a part without a file name (curl -F 'image=<photo.jpg') is the image too
                if image is None and key in args:
                    image = args[key][0]
                args.pop(key, None)
            for key, values in args.items():
                value = values[0].decode("utf-8", "replace")
                if value:  # empty is none, as in the query: the query's then applies (it was dropped)
                    fields[key] = value
            if image is not None:
                return image, fields
            raise ProtocolError("bad_request", "image: multipart/form-data without an 'image' (or 'file') part")
        if not body:
            raise ProtocolError("bad_request", "image: the body is empty (send the image file's bytes, "
                                               "or multipart/form-data with an 'image' part)")
        return body, fields

    def stream_name(self, name: str) -> str:
        """`name`, a running stream; a configured one still starting has no result yet."""
        running_stream(self.front.service, name, "stream")
        return name


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


class Infer(Handler):
    route = "/v1/infer"
    takes_body = True

    async def post(self) -> None:
        try:
            image, fields = self.image_and_fields()
            threshold = threshold_of(fields)
            params = {"image": image}
            if fields.get("model"):
                params["model"] = fields["model"]
            del image
            result = await self.ask("infer", params)
        except ProtocolError as exc:
            return self.fail(exc.code, str(exc))
        self.send_json(json_ready(above(result, threshold)))


class EasyEdge(Handler):
    """POST / as EasyEdge's SDK serves it: the image's bytes (`?threshold=`),
    or JSON `{"image": base64, "threshold", "top_num"}`; multipart works too."""
    route = "/ (easyedge)"
    takes_body = True

    def error_body(self, code: str, message: str) -> dict:
        return {"error_code": easyedge.ERROR_NUMBERS.get(code, 1006), "error_msg": message, "results": [],
                "cost_ms": 0, **super().error_body(code, message)}

    async def post(self) -> None:
        try:
            fields = query_fields(self)
            if self.request.headers.get("Content-Type", "").lower().startswith("application/json"):
                image, obj = base64_image(self.body(), "image")
                for key in ("threshold", "top_num"):
                    if obj.get(key) is not None:  # null is none, as everywhere: the query's then applies
                        fields[key] = obj[key]
            else:
                image, form = self.image_and_fields()
                fields.update(form)
            threshold, top_num = threshold_of(fields), top_num_of(fields)
            name = model_named(self.front.service, fields.get("model") or None, "model")
            params = {"image": image, "model": name}
            del image
            result = await self.ask("infer", params)
        except ProtocolError as exc:
            return self.fail(exc.code, str(exc))
        self.send_json({"error_code": 0, "results": easyedge.easyedge_results(above(result, threshold), top_num),
                        "cost_ms": easyedge.cost_ms(result)})


class EdgeBoard(Handler):
    """EdgeBoard V2: POST /api/model/service/base64/mid=N  {"image": base64, "show": bool}."""
    route = "/api/model/service/base64"
    takes_body = True

    def error_body(self, code: str, message: str) -> dict:
        return {"code": easyedge.ERROR_NUMBERS.get(code, 1006), "msg": message, "data": {"result": []},
                **super().error_body(code, message)}

    async def post(self, mid: str) -> None:
        names = list(self.front.service.bundles)
        try:
            if not (mid.isascii() and mid.isdigit()) or int(mid) >= len(names):  # '١' is a digit to Python
                have = f"0 to {len(names) - 1}, in config order" if names else "none: the config's models is empty"
                raise ProtocolError("not_found", f"mid: no model {mid[:32]} (have {have})")
            name = names[int(mid)]
            image, obj = base64_image(self.body(), "image")
            result = await self.ask("infer", {"image": image, "model": name})
            data: dict = {"result": easyedge.edgeboard_results(result)}
            show = obj.get("show")
            show = False if show is None else show  # null is none, as everywhere
            if not isinstance(show, bool):
                raise ProtocolError("bad_request", f"show: expected true or false, got {json.dumps(show)[:32]}")
            if show:
                drawn = await asyncio.get_running_loop().run_in_executor(self.front.drawer, drawn_jpeg, image, result)
                data["image"] = base64.b64encode(drawn).decode("ascii")
        except ProtocolError as exc:
            return self.fail(exc.code, str(exc))
        self.send_json({"code": 0, "msg": "success", "data": data})


def drawn_jpeg(image: bytes, result: dict) -> bytes:
    frame = imdecode(image)
    draw_result(frame, result)
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


class Status(Handler):
    route = "/v1/status"

    async def get(self) -> None:
        self.send_json(await self.ask("status", {}))


class Reload(Handler):
    route = "/v1/reload"
    takes_body = True

    async def post(self) -> None:
        try:
            body = self.body()
            try:
                params = json.loads(body) if body.strip() else {}
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
                raise ProtocolError("bad_request", "body: not JSON (send {} or {\"model\": NAME})") from None
            if not isinstance(params, dict):
                raise ProtocolError("bad_request", "body: expected a JSON object")
            params.update(query_fields(self))
            if "bundle" in params:
                raise ProtocolError("forbidden", "bundle: not accepted over HTTP (use `lited ctl reload --bundle` "
                                                 "or tools/install_sdk.sh on the board)")
            unknown = set(params) - {"model"}
            if unknown:
                raise ProtocolError("bad_request", f"{sorted(unknown)[0]}: unknown field (known: model)")
            result = await self.ask("reload", params)
        except ProtocolError as exc:
            return self.fail(exc.code, str(exc))
        self.send_json(result)


class Snapshot(Handler):
    route = "/v1/streams/snapshot.jpg"

    async def get(self, name: str) -> None:
        try:
            fields = query_fields(self)
            quality = _number_field(fields, "quality")  # a number as threshold takes one (50.0 is 50); empty: 85
            if quality is not None and not (1 <= quality <= 100 and quality.is_integer()):
                raise ProtocolError("bad_request", f"quality: expected a whole number from 1 to 100, "
                                                   f"got {_shown(fields['quality'])}")
            snap = await self.ask("snapshot", {"stream": self.stream_name(name),
                                               "quality": 85 if quality is None else int(quality)})
        except ProtocolError as exc:
            return self.fail(exc.code, str(exc))
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("X-Lited-Seq", str(snap["seq"]))
        self.set_header("X-Lited-Result", live.result_header({"stream": name, **snap}))
        self.finish(snap["jpeg"])


class Live(Handler):
    route = "/v1/streams/live"

    async def get(self, name: str) -> None:
        front = self.front
        try:
            view = front.live_view(self.stream_name(name))
        except ProtocolError as exc:
            return self.fail(exc.code, str(exc))
        if front.live_clients >= front.config.max_live_clients:
            return self.fail("busy", f"{front.live_clients} live clients, the most http.max_live_clients "
                                     f"({front.config.max_live_clients}) lets in", {"Retry-After": "5"})
        front.live_clients += 1
        view.join()
        try:
            self.set_header("Content-Type", live.CONTENT_TYPE)
            self.set_header("Connection", "close")
            self.set_header("X-Accel-Buffering", "no")
            await self.flush()
            seq = -1
            while not self.peer_gone() and view.name in front.service.streams:  # a reload may remove it
                got = await view.next_part(seq, timeout=PEER_CHECK_S)
                if got is None:
                    continue
                seq, part = got
                self.write(part)
                await asyncio.wait_for(self.flush(), SEND_TIMEOUT)
            if not self.peer_gone():  # the stream left (a reload): end the body and close, as the header says
                await self.finish()  # (tornado kept a keep-alive connection open: a client waiting for EOF hung)
                self.request.connection.close()
        except asyncio.TimeoutError:
            self.drop()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            front.live_clients -= 1
            view.leave()


class Events(Handler):
    route = "/v1/events"

    async def get(self) -> None:
        fanout = self.front.events
        if len(fanout.clients) >= fanout.max_clients:
            return self.fail("busy", f"{fanout.max_clients} event clients already (http.max_event_clients)",
                             {"Retry-After": "5"})

        def wanted(key: str) -> set:
            return {v for v in self.get_query_argument(key, "").split(",") if v}

        streams, types = wanted("stream"), wanted("types")
        service = self.front.service
        unknown_types = sorted(types - {"result", "event"})
        if unknown_types:
            return self.fail("bad_request", f"types: unknown '{unknown_types[0]}', expected result or event")
        names = ["_daemon", *stream_names(service)]
        unknown = sorted(streams - set(names))
        if unknown:
            have = ", ".join(names)
            return self.fail("not_found", f"stream: no stream '{unknown[0]}' (have {have})")
        client = EventClient(streams, types)
        fanout.clients.add(client)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        try:
            self.write(b"retry: 2000\n: connected\n\n")
            await self.flush()
            told, quiet = 0, 0.0
            while not self.peer_gone():
                try:
                    data = await asyncio.wait_for(client.queue.get(), PEER_CHECK_S)
                    quiet = 0.0
                except asyncio.TimeoutError:
                    quiet += PEER_CHECK_S
                    if quiet < KEEP_ALIVE_S:
                        continue
                    data, quiet = b": keep-alive\n\n", 0.0
                if client.dropped != told:
                    told = client.dropped
                    self.write(b"event: dropped\ndata: {\"dropped\":%d}\n\n" % told)
                self.write(data)
                await asyncio.wait_for(self.flush(), SEND_TIMEOUT)
        except asyncio.TimeoutError:
            self.drop()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            fanout.clients.discard(client)


class MetricsRoute(Handler):
    route = "/metrics"

    def get(self) -> None:
        body, content_type = self.front.metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


class Page(EasyEdge):
    """GET / is the page; POST / is EasyEdge's route (tornado routes by path)."""

    def initialize(self) -> None:
        super().initialize()
        if self.request.method != "POST":  # here, not in prepare: tornado refuses a method it does not
            self.route = "/"  # know before that (FOO / was counted as EasyEdge's in /metrics)

    def prepare(self) -> None:
        if self.request.method != "GET":
            return super().prepare()
        self.takes_body = False
        token = self.get_query_argument("token", None)
        cfg = self.front.config
        if token is not None and cfg.token is not None and _same(token, cfg.token):
            self.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            self.set_header("Connection", "close")  # answered in prepare: see refuse()
            return self.redirect("/", status=303)
        self.authorized()

    def error_body(self, code: str, message: str) -> dict:
        if self.request.method == "GET":
            return Handler.error_body(self, code, message)
        return super().error_body(code, message)

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:; "
                                                   "object-src 'none'; frame-ancestors 'none'")
        self.finish(self.front.page["index.html"])


class PageFile(Handler):
    """The page's script and style: public (no secrets in them), so no token."""
    route = "/page"

    def authorized(self) -> bool:
        return True

    def get(self, name: str) -> None:
        self.set_header("Content-Type", PAGE_FILES[name])
        self.finish(self.front.page[name])


def shown_path(request: Any) -> str:
    """The request's path as sent, for a message: tornado reads a raw UTF-8 path (`/v1/streams/车间`)
    as Latin-1, which the JSON reply then wrote as `è½¦é´`."""
    return request.path.encode("latin-1", "replace").decode("utf-8", "replace")[:200]


class NotFound(Handler):
    def prepare(self) -> None:
        if self.authorized():
            self.refuse("not_found", f"no route {self.request.method} {shown_path(self.request)}")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:  # a method tornado does not know (FOO, TRACE), refused before prepare: no route
            return self.prepare()  # still (it was a 405 with an empty Allow)
        super().write_error(status_code, **kwargs)


def make_app(front: HttpFront) -> tornado.web.Application:
    return tornado.web.Application([
        (r"/", Page),
        (r"/page/(lited\.js|lited\.css)", PageFile),
        (r"/v1/infer", Infer),
        (r"/v1/status", Status),
        (r"/v1/reload", Reload),
        (rf"/v1/streams/{NAME}/snapshot\.jpg", Snapshot),
        (rf"/v1/streams/{NAME}/live", Live),
        (r"/v1/events", Events),
        (r"/metrics", MetricsRoute),
        (r"/api/model/service/base64/mid=([^/]*)", EdgeBoard),  # any mid: a bad one answered in EdgeBoard's shape
    ], default_handler_class=NotFound, front=front, log_function=_logged(front), compress_response=False)


def _logged(front: HttpFront) -> Callable[[tornado.web.RequestHandler], None]:
    """Count every answer for /metrics; log server errors (not every request: journald is not an access log)."""
    def log_request(handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        front.request_counts[(getattr(handler, "route", "other"), status)] += 1
        if status >= 500 and status != 503:
            log.warning("http: %s %s -> %d", handler.request.method, shown_path(handler.request), status,
                        extra={"event": "http_error"})
    return log_request
