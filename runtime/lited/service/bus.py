"""ZeroMQ sockets: PUB for results and events, ROUTER for requests.

- PUB sends come from the stream threads. A ZeroMQ socket is not thread
  safe, so sends are serialised by a lock; they use NOBLOCK and PUB drops a
  message for a subscriber whose queue is full (high-water mark), so a slow
  or dead subscriber never slows inference and memory stays bounded.
- The ROUTER loop runs on its own thread. Replies may be produced on other
  threads (an `infer` request runs on a worker); they are queued and the
  loop is woken through a pipe, so only the loop thread touches ROUTER.
- ipc:// socket files are made 0660 (the service's group may connect, no
  one else; the runtime directory is 0750). tcp:// endpoints get their own
  sockets with CURVE encryption and a list of allowed client keys, or are
  refused unless `insecure_tcp` is set.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import zmq

log = logging.getLogger("lited.bus")


class BusError(Exception):
    """A configuration the bus refuses (e.g. TCP without CURVE keys)."""


@dataclass
class Curve:
    """CURVE for TCP endpoints: the daemon's secret key file and a directory
    of allowed clients' public keys (files made by `zmq.auth.create_certificates`)."""
    server_secret: str
    clients_dir: str


def ipc_path(endpoint: str) -> Optional[str]:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


class Bus:
    def __init__(self, pub: list, req: list, handler: Callable[[bytes, Callable], None],
                 curve: Optional[Curve] = None, insecure_tcp: bool = False, hwm: int = 1000,
                 max_request_bytes: int = 16 << 20, heartbeat: Optional[Callable[[], None]] = None) -> None:
        self.handler = handler
        self.max_request_bytes = max_request_bytes
        self.heartbeat = heartbeat or (lambda: None)
        self.ctx = zmq.Context.instance()
        self._auth = None
        self._pub_lock = threading.Lock()
        self._replies: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bus", daemon=True)
        self.dropped = 0  # replies that could not be sent (client gone)
        self.endpoints: list = []
        self._pubs: list = []
        self._routers: list = []
        try:
            for kind, endpoints, sockets in (("pub", pub, self._pubs), ("req", req, self._routers)):
                local = [e for e in endpoints if not e.startswith("tcp://")]
                remote = [e for e in endpoints if e.startswith("tcp://")]
                if local:
                    sockets.append(self._bind(kind, local, None, hwm))
                if remote:
                    if curve is None and not insecure_tcp:
                        raise BusError(f"{', '.join(remote)}: TCP needs CURVE keys (config 'curve') "
                                       "or --insecure-tcp")
                    sockets.append(self._bind(kind, remote, curve, hwm))
        except Exception:
            self.close()
            raise

    def _bind(self, kind: str, endpoints: list, curve: Optional[Curve], hwm: int) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PUB if kind == "pub" else zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        if kind == "req":
            sock.setsockopt(zmq.RCVHWM, hwm)
            sock.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_request_bytes)  # far over the limit: dropped by ZeroMQ
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if curve is not None:
            self._setup_curve(sock, curve)
        for endpoint in endpoints:
            path = ipc_path(endpoint)
            if path:
                os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
                if os.path.exists(path):
                    os.unlink(path)  # a leftover from a crashed run
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                sock.close(0)
                raise BusError(f"{endpoint}: cannot bind ({exc})") from None
            if path:
                os.chmod(path, 0o660)
            self.endpoints.append(endpoint)
        return sock

    def _setup_curve(self, sock: zmq.Socket, curve: Curve) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        try:
            public, secret = zmq.auth.load_certificate(curve.server_secret)
        except (OSError, ValueError) as exc:
            raise BusError(f"curve.server_secret: {curve.server_secret}: {exc}") from None
        if not secret:
            raise BusError(f"curve.server_secret: {curve.server_secret} holds no secret key")
        if not os.path.isdir(curve.clients_dir):
            raise BusError(f"curve.clients_dir: {curve.clients_dir}: not a directory")
        if self._auth is None:
            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=curve.clients_dir)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_server = True

    # -- publishing (any thread)
    def publish(self, topic: bytes, payload: bytes) -> None:
        """Send to every subscriber that keeps up; never blocks."""
        with self._pub_lock:
            for sock in self._pubs:
                try:
                    sock.send_multipart((topic, payload), flags=zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    pass
                except zmq.ZMQError:
                    if not self._stop.is_set():
                        raise

    # -- requests
    def start(self) -> None:
        self._thread.start()

    def reply(self, route: tuple, payload: bytes) -> None:
        """Queue a reply for the loop thread (any thread may call this)."""
        self._replies.append((route, payload))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the loop is already awake
        except OSError:
            pass  # closed: we are stopping

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in self._routers:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop.is_set():
            self.heartbeat()
            try:
                events = dict(poller.poll(500))
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                raise
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            while self._replies:
                (sock, frames), payload = self._replies.popleft()
                try:
                    sock.send_multipart([*frames, payload], flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    self.dropped += 1
            for sock in self._routers:
                if sock in events:
                    self._drain(sock)

    def _drain(self, sock: zmq.Socket, budget: int = 64) -> None:
        """Read up to `budget` requests, so one chatty client cannot starve replies."""
        for _ in range(budget):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            # DEALER: [identity, payload]; REQ: [identity, b"", payload]
            route = (sock, frames[:-1])
            self.handler(frames[-1], lambda payload, route=route: self.reply(route, payload))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._wake()
            self._thread.join(3)
        self.close()

    def close(self) -> None:
        for sock in self._pubs + self._routers:
            sock.close(0)
        for endpoint in self.endpoints:
            path = ipc_path(endpoint)
            if path and os.path.exists(path):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self._pubs, self._routers = [], []
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

