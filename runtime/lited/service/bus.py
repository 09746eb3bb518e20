"""ZeroMQ sockets: PUB for results and events, ROUTER for requests.

- PUB sends come from the stream threads. A ZeroMQ socket is not thread
  safe, so sends are serialised by a lock; they use NOBLOCK and PUB drops a
  message for a subscriber whose queue is full (high-water mark), so a slow
  or dead subscriber never slows inference and memory stays bounded.
- The ROUTER loop runs on its own thread. Replies may be produced on other
  threads (an `infer` request runs on a worker); they are queued and the
  loop is woken through a pipe, so only the loop thread touches ROUTER.
- Replies a client leaves unread are bounded in bytes, per client and in
  all (REPLY_BYTES_PER_PEER, REPLY_BYTES_TOTAL); past that they are dropped
  and counted (`status`: `bus.replies_dropped_slow`).
- ipc:// socket files are made 0660 (the service's group may connect, no
  one else) in a directory the daemon owns and nobody else may write
  (created 0750, or refused: lited/runtime_dir.py), each under a lock file
  that keeps a second daemon off it ("address in use"). tcp:// endpoints
  get their own sockets with CURVE encryption and a list of allowed client
  keys, or are refused unless `insecure_tcp` is set.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import zmq

from lited.keys import curve_problems, load_key
from lited.protocol import ProtocolError, encode_reply, request_id_of
from lited.runtime_dir import AddressInUse, UnsafeDirectory, lock_endpoint, secure_dir

log = logging.getLogger("lited.bus")
# Replies a client has not read yet (a DEALER that never reads kept 250 1080p
# snapshots, 1 GB, inside ZeroMQ): bounded per client and over all clients.
# ZeroMQ bounds queues in messages only, so replies of TRACK_MIN bytes or
# more are counted here until ZeroMQ has written them to the socket.
REPLY_BYTES_PER_PEER = 16 << 20
REPLY_BYTES_TOTAL = 64 << 20
TRACK_MIN = 64 << 10
ROUTER_RCVHWM = 2  # (1 loses the first message when ZAP is on: libzmq 4.3.5)
# Replies queued unread per client, in messages (bytes: REPLY_BYTES_PER_PEER). It was limits.pub_hwm, the
# subscribers' bound: with pub_hwm 50, a client pipelining 60 pings lost 10 replies while reading them.
ROUTER_SNDHWM = 1000
# The frames before a request are its envelope (routing ids, each at most 255 bytes), sent back with the
# reply. More than this was echoed whole: 40 frames of 1 MB answered past a 1 MiB max_request_bytes.
ENVELOPE_FRAMES = 16
ENVELOPE_BYTES = 4096
OVERSIZE_ANSWERED = 64 << 10  # requests over max_request_bytes by up to this get a `too_large` reply
SUBSCRIPTION_MAX = 512  # bytes of one subscription message (a topic is under 80)
HANDSHAKE_MS = 10_000  # a tcp:// peer's CURVE handshake must be done by then
EARLY_TTL = 2.0  # s a handshake's decision waits for its connection's accept event
HANDSHAKE_S = 1.0  # s from a connection's accept to its handshake's decision, at most, for the decision to be its
# A client's closed socket ends its connection a moment later (its ZeroMQ closes it on a thread of its
# own; the daemon hears of it just after the next connection's handshake, often): a handshake finding
# every place taken waits up to REFUSAL_GRACE_S for one to free before it is refused, so an app that
# closes and connects again in a loop is not refused for its own last connection (a fifth to a third
# of such reconnections were, with the host loaded). It usually waits some microseconds; a flood of
# clients over the limit gets at most REFUSAL_GRACE_SHARE of the gate's time, so other handshakes
# are not held up.
REFUSAL_GRACE_S = 0.1
REFUSAL_GRACE_SHARE = 0.1
SOCKET_CHECK_S = 2.0  # how often the bus looks whether its ipc:// socket files are still there


def _worth_saying(count: int) -> bool:
    """Log the 1st, 10th, 100th and every 1000th of a thing counted: a flood stays a few lines."""
    return count in (1, 10, 100) or count % 1000 == 0


class BusError(Exception):
    """A configuration the bus refuses (e.g. TCP without CURVE keys)."""


@dataclass
class Curve:
    """CURVE for TCP endpoints: the daemon's secret key file and a directory
    of allowed clients' public keys (files made by `zmq.auth.create_certificates`)."""
    server_secret: str
    clients_dir: str


def _identity(path: str) -> Optional[tuple]:
    """(device, inode) of the file at `path`, or None when there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def ipc_path(endpoint: str) -> Optional[str]:
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


class ClientGate:
    """ZeroMQ's authentication hook (ZAP) on a thread of its own, asked about
    every new connection: refuses one to a request socket while `limit`
    clients are connected, and checks CURVE keys (`allow_curve_keys`).

    Why: ZeroMQ reads each connected client's next requests (RCVHWM of them,
    plus the one arriving) into memory before the bus can look at them; 50
    clients sending 4 arrays of 7.7 MB took the daemon to 1,085 MB, 100 to
    2,126. Only bounding the clients bounds that. A refused client's queued
    requests are dropped by its ZeroMQ, which never retries; a new socket of it gets in
    once others leave (its pending request times out). Written on plain
    sockets (not pyzmq's authenticator, which needs asyncio) so a daemon
    without the HTTP front end loads no event loop."""

    DOMAIN = "lited-requests"  # set on the request sockets: subscribers are not counted
    # local (ipc://) and remote (tcp://) clients each have `limit` places: remote clients holding all
    # of them kept `lited ctl` (and so `systemctl reload`) out
    DOMAINS = {False: DOMAIN, True: DOMAIN + "-tcp"}
    ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP protocol (RFC 27)
    _MONITOR_EVENT = struct.Struct("=hi")  # event, value (the connection's fd)

    def __init__(self, ctx: zmq.Context, limit: int) -> None:
        self.limit = limit
        self.refused = 0
        # (monitor index, fd) of the request sockets' open connections, in accept order ->
        # None while its handshake is undecided, else whether it was let in
        self._open: dict = {}
        # of those undecided, when their accept event was seen (monotonic s): a connection that never
        # handshakes (it died at once, a port scanner) must not take the decision of a later one
        self._undecided: dict = {}
        self._connected = 0  # let in and still open: kept by the ZAP thread, read by status
        self._monitors: list = []  # (socket, its monitor, its domain)
        # (time, decision) made before the monitor said the connection was accepted (the ZAP request
        # can come first), per domain, oldest first: they were lost, and the count drifted by one; kept
        # EARLY_TTL at most
        self._early: dict = {domain: collections.deque() for domain in self.DOMAINS.values()}
        # when connections closed undecided, per domain, oldest first: a client that connects and
        # closes at once is gone (its accept and disconnect events read) before its handshake's
        # request is; that decision is its, not a later connection's (kept in _early, 300 such
        # clients in a loop held every place for EARLY_TTL); kept HANDSHAKE_S at most
        self._closed: dict = {domain: collections.deque() for domain in self.DOMAINS.values()}
        self._curve_keys: Optional[set] = None  # z85 public keys of allowed CURVE clients
        self._grace_left = REFUSAL_GRACE_S  # s the next refusals may wait, refilled at REFUSAL_GRACE_SHARE
        self._grace_at = time.monotonic()
        self._stop = threading.Event()
        self._zap = ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(self.ZAP_ENDPOINT)
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)

    @property
    def connected(self) -> int:
        """Clients let in and still connected (as of the ZAP thread's last look, at most 0.2 s ago)."""
        return self._connected

    def start(self) -> None:
        self._thread.start()

    def allow_curve_keys(self, clients_dir: str) -> None:
        """Let in CURVE clients whose public key is a certificate in `clients_dir`."""
        import zmq.auth

        self._curve_keys = {key.decode() if isinstance(key, bytes) else key
                            for key in zmq.auth.load_certificates(clients_dir)}

    def watch(self, sock: zmq.Socket, remote: bool = False) -> None:
        """Count `sock`'s connections (before it binds) and put them through this gate; `remote`
        (tcp://) ones have places of their own."""
        domain = self.DOMAINS[remote]
        sock.zap_domain = domain.encode()
        self._monitors.append((sock, sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED), domain))

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._zap.poll(200):
                self._count()  # disconnects are counted though nobody new connects
                continue
            request = self._zap.recv_multipart()  # version, id, domain, address, identity, mechanism, credentials...
            if len(request) < 6:
                self._zap.send_multipart([b"1.0", request[1] if len(request) > 1 else b"", b"500", b"malformed",
                                          b"", b""])
                continue
            code, text = self._decide(request[2].decode(errors="replace"), request[5], request[6:])
            self._zap.send_multipart([request[0], request[1], code, text, b"", b""])
        self._zap.close(0)

    def _decide(self, domain: str, mechanism: bytes, credentials: list) -> tuple:
        """(status code, text) for one connection's handshake."""
        if mechanism == b"CURVE":
            from zmq.utils import z85

            key = z85.encode(credentials[0]).decode() if credentials else ""
            if self._curve_keys is None or key not in self._curve_keys:
                return b"400", b"unknown CURVE key"
        if domain in self.DOMAINS.values() and not self._admit(domain):
            self.refused += 1
            if _worth_saying(self.refused):
                log.warning("refused a client: %d connected (limits.max_clients %d); %d refused so far",
                            self.connected, self.limit, self.refused, extra={"event": "client_refused"})
            return b"400", b"too many clients"
        return b"200", b"OK"

    def _count(self) -> None:
        """Fold in the connections opened and closed since the last look (ZAP
        thread only); events name a connection by its fd."""
        for index, (_, monitor, _) in enumerate(self._monitors):
            while monitor.poll(0):
                frames = monitor.recv_multipart()
                event, value = self._MONITOR_EVENT.unpack(frames[0][:self._MONITOR_EVENT.size])
                key = (index, value)
                if event == zmq.EVENT_ACCEPTED:
                    early = self._early[self._monitors[index][2]]
                    self._open[key] = early.popleft()[1] if early else None
                    if self._open[key] is None:
                        self._undecided[key] = time.monotonic()
                else:
                    self._open.pop(key, None)
                    if self._undecided.pop(key, None) is not None:
                        self._closed[self._monitors[index][2]].append(time.monotonic())
        now = time.monotonic()
        for early in self._early.values():  # an accept event never seen (a monitor that dropped it) must
            while early and early[0][0] < now - EARLY_TTL:  # not hold a place for ever
                early.popleft()
        for closed in self._closed.values():  # one that never handshook (died at once) must not take
            while closed and closed[0] < now - HANDSHAKE_S:  # a decision long after
                closed.popleft()
        self._connected = sum(1 for admitted in self._open.values() if admitted) + \
            sum(admitted for early in self._early.values() for _, admitted in early)

    def _admit(self, domain: str) -> bool:
        """Decide the oldest connection of `domain`'s sockets accepted within
        HANDSHAKE_S and undecided (handshakes finish about in accept order; a
        guess wrong by one changes who waits, not how many are in; an older
        one never handshook, and would keep the decision when it goes): in
        while fewer than `limit` of them are in. So a burst of clients fills
        the free places instead of all being refused."""
        self._count()
        mine = {i for i, (_, _, d) in enumerate(self._monitors) if d == domain}
        admitted = self._inside(domain, mine) < self.limit
        closed = self._undecided_key(mine) is None and self._closed[domain]  # it waits for nothing
        if not admitted and not closed:
            admitted = self._place_freed(domain, mine)
        key = self._undecided_key(mine)  # again: the monitors may have been read meanwhile
        if key is not None:
            self._open[key] = admitted
            del self._undecided[key]
        elif self._closed[domain]:
            # it closed before its handshake was asked about (or while it waited for a place): it
            # holds no place, whatever is said
            self._closed[domain].popleft()
            return admitted
        else:  # its handshake came before its monitor's accept event: the decision waits for that
            self._early[domain].append((time.monotonic(), admitted))
        self._connected += admitted
        return admitted

    def _undecided_key(self, mine: set) -> Optional[tuple]:
        """The oldest connection of monitors `mine` accepted within HANDSHAKE_S and undecided."""
        recent = time.monotonic() - HANDSHAKE_S
        return next((k for k, seen in self._undecided.items() if seen >= recent and k[0] in mine), None)

    def _inside(self, domain: str, mine: set) -> int:
        """Connections of `domain` (its monitors `mine`) let in and still open."""
        return sum(1 for (index, _), admitted in self._open.items() if admitted and index in mine) + \
            sum(admitted for _, admitted in self._early[domain])

    def _place_freed(self, domain: str, mine: set) -> bool:
        """Whether one of `domain`'s places frees within the grace left (read on its monitors);
        the time waited is taken from the grace, which refills at REFUSAL_GRACE_SHARE."""
        now = time.monotonic()
        self._grace_left = min(REFUSAL_GRACE_S, self._grace_left + (now - self._grace_at) * REFUSAL_GRACE_SHARE)
        deadline, freed = now + self._grace_left, False
        poller = zmq.Poller()
        for index in mine:
            poller.register(self._monitors[index][1], zmq.POLLIN)
        while not freed and (remaining := deadline - time.monotonic()) > 0:
            poller.poll(max(1, int(remaining * 1000)))
            self._count()
            freed = self._inside(domain, mine) < self.limit
        self._grace_at = time.monotonic()
        self._grace_left -= self._grace_at - now
        return freed

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        else:
            self._zap.close(0)
        for sock, monitor, _ in self._monitors:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            monitor.close(0)
        self._monitors = []


class Bus:
    """The ZeroMQ sockets apps talk to: PUB for results and events, ROUTER for requests."""
    def __init__(self, pub: list, req: list, handler: Callable[[bytes, Callable, tuple], None],
                 curve: Optional[Curve] = None, insecure_tcp: bool = False, hwm: int = 1000,
                 max_request_bytes: int = 16 << 20, heartbeat: Optional[Callable[[], None]] = None,
                 max_clients: int = 16) -> None:
        self.handler = handler
        self.max_request_bytes = max_request_bytes
        self.heartbeat = heartbeat or (lambda: None)
        self.ctx = zmq.Context.instance()
        self._auth = ClientGate(self.ctx, max_clients)
        self._auth.start()
        self._pub_lock = threading.Lock()
        self._replies: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bus", daemon=True)
        self.dropped = 0  # replies that could not be sent (client gone)
        self.dropped_slow = 0  # replies dropped because their client had too much unread
        self.refused_envelopes = 0  # requests refused for an envelope over ENVELOPE_FRAMES / ENVELOPE_BYTES
        self.max_reply_bytes = REPLY_BYTES_PER_PEER
        self._unread: dict = {}  # peer routing id -> deque of (MessageTracker, size), oldest first
        self._queued_total = 0
        self._next_sweep = 0.0
        self.endpoints: list = []
        self._locks: dict = {}  # ipc endpoint -> the fd of its lock file, held until close()
        self._files: dict = {}  # ipc:// endpoint -> (its socket, (st_dev, st_ino) of the file it bound)
        self._lost: set = set()  # ipc:// endpoints whose file is another's
        self._unmade: dict = {}  # ipc:// endpoints whose file could not be made again -> why (tried at each check)
        self._next_socket_check = 0.0
        self._pubs: list = []
        self._routers: list = []
        keypair = None  # the daemon's CURVE keys, checked and loaded once, for its first tcp:// socket
        try:
            for kind, endpoints, sockets in (("pub", pub, self._pubs), ("req", req, self._routers)):
                local = [e for e in endpoints if not e.startswith("tcp://")]
                remote = [e for e in endpoints if e.startswith("tcp://")]
                if local:
                    sockets.append(self._bind(kind, local, None, hwm))
                if remote:
                    if curve is None and not insecure_tcp:
                        raise BusError(f"{', '.join(remote)}: TCP needs CURVE keys (config 'curve', see lited "
                                       "keygen) or insecure_tcp: true (--insecure-tcp)")
                    if curve is None:
                        log.warning("%s: TCP without CURVE: anyone who can reach it may ask and read (a lab "
                                    "bench, never a factory network)", ", ".join(remote), extra={"event": "insecure_tcp"})
                    elif keypair is None:
                        keypair = self._load_curve(curve)
                    sockets.append(self._bind(kind, remote, keypair, hwm))
        except Exception:
            self.close()
            raise

    def _bind(self, kind: str, endpoints: list, keypair: Optional[tuple], hwm: int) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PUB if kind == "pub" else zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm if kind == "pub" else ROUTER_SNDHWM)
        # a peer that connects and never finishes its handshake is dropped (2000 held as many descriptors)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if kind == "pub":
            # What a subscriber sends is its subscriptions, each kept by ZeroMQ: 300 of 1 MiB took the
            # daemon to 15 GB. A topic is at most `event/` or `result/` and a stream name: one past
            # SUBSCRIPTION_MAX drops that subscriber's connection.
            sock.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX)
        if kind == "req":
            # Few requests queued per client inside ZeroMQ: past that it stops reading that
            # client's socket (the sender waits), so a flood stays in the senders, not here.
            sock.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
            # Over the limit by a little: `too_large` with its id; by more, dropped by ZeroMQ with the connection.
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_request_bytes + OVERSIZE_ANSWERED)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or gone client raises: counted, not silent
            self._auth.watch(sock, remote=any(e.startswith("tcp://") for e in endpoints))
        if keypair is not None:
            sock.curve_publickey, sock.curve_secretkey = keypair
            sock.curve_server = True
        for endpoint in endpoints:
            try:
                self._bind_endpoint(sock, endpoint)
            except BusError:
                sock.close(0)
                raise
            self.endpoints.append(endpoint)
        return sock

    def _bind_endpoint(self, sock: zmq.Socket, endpoint: str) -> None:
        """Bind `endpoint`; an ipc:// one in a directory of ours, under its lock, its file 0660 and
        remembered (keep_socket_files)."""
        path = ipc_path(endpoint)
        if path:
            try:
                secure_dir(os.path.dirname(path))  # ours alone: nobody else can swap the socket
                self._lock(endpoint, path)  # one daemon per socket: "address in use"
            except (UnsafeDirectory, AddressInUse) as exc:
                raise BusError(str(exc)) from None
            except OSError as exc:  # a full or read-only runtime_dir: "[Errno 28] ..." named no path
                raise BusError(f"{path}: {exc.strerror or exc} (runtime_dir)") from None
            if os.path.lexists(path):
                os.unlink(path)  # a leftover from a crashed run (we hold its lock: nobody serves it)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise BusError(f"{endpoint}: cannot bind ({exc})") from None
        if path:
            os.chmod(path, 0o660)
            self._files[endpoint] = (sock, _identity(path))

    def _lock(self, endpoint: str, path: str) -> None:
        """Hold `path`'s lock file; the one this daemon holds already if it is still there (a socket
        file removed alone: locking it again from here conflicted with ourselves, "address in use:
        another lited serve (pid <ours>)", and the socket was never made again)."""
        held = self._locks.get(endpoint)
        if held is not None:
            try:
                if _identity(f"{path}.lock") == (os.fstat(held).st_dev, os.fstat(held).st_ino):
                    return
            except OSError:
                pass
            os.close(held)  # its file went with the directory: lock the new one
            del self._locks[endpoint]
        self._locks[endpoint] = lock_endpoint(path)

    def keep_socket_files(self) -> None:
        """Bind again an ipc:// socket whose file is gone: a tmp cleaner or an operator removed the
        runtime directory under a running daemon, which then served nobody, and a second daemon
        could start on the same config (bus thread; every SOCKET_CHECK_S). A file of another's in
        its place is left alone, said once, and kept at close."""
        for endpoint, (sock, ident) in list(self._files.items()):
            path = ipc_path(endpoint)
            now = _identity(path)
            if now == ident or endpoint in self._lost:
                continue
            if now is not None:
                self._lost.add(endpoint)
                log.error("%s: another file has taken this daemon's socket's place (its directory was removed "
                          "while it ran, and another lited serve started?): clients reach that one, not this: "
                          "stop one of them", path, extra={"event": "socket_lost"})
                continue
            try:
                with self._pub_lock:
                    with contextlib.suppress(zmq.ZMQError):
                        sock.unbind(endpoint)
                    self._bind_endpoint(sock, endpoint)
            except BusError as exc:  # a full or read-only directory, a file in its way: tried again at each check
                if self._unmade.get(endpoint) != str(exc):  # said once per reason
                    log.error("%s: its socket file was removed and cannot be made again: %s; trying again every "
                              "%g s", path, exc, SOCKET_CHECK_S, extra={"event": "socket_lost"})
                self._unmade[endpoint] = str(exc)
                continue
            self._unmade.pop(endpoint, None)
            log.warning("%s: its socket file was removed under the running daemon (a tmp cleaner?): bound it "
                        "again", path, extra={"event": "socket_rebound"})

    def allow_curve_keys(self, clients_dir: str) -> None:
        """The clients let in from now on: a reload reads the directory again (a removed key's
        connections stay open until they close; ZeroMQ asks only at the handshake)."""
        self._auth.allow_curve_keys(clients_dir)

    def _load_curve(self, curve: Curve) -> tuple:
        """(public, secret) of the daemon's key, once its files passed the check `lited config
        check` makes; the allowed client keys go to the gate."""
        problems = curve_problems(curve.server_secret, curve.clients_dir)
        if problems:
            raise BusError("; ".join(problems))
        self._auth.allow_curve_keys(curve.clients_dir)
        return load_key(curve.server_secret)

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
                self._send_reply(sock, frames, payload)
            for sock in self._routers:
                if sock in events:
                    self._drain(sock)
            if time.monotonic() >= self._next_sweep:  # replies sent since: out of `reply_bytes_queued`
                self._sweep_all()
            if time.monotonic() >= self._next_socket_check:
                self._next_socket_check = time.monotonic() + SOCKET_CHECK_S
                self.keep_socket_files()

    def _send_reply(self, sock: zmq.Socket, frames: list, payload: bytes) -> None:
        """Send a reply unless its client already has REPLY_BYTES_PER_PEER
        queued unread (or all clients REPLY_BYTES_TOTAL): then it is dropped
        and counted. Large replies are sent zero-copy and tracked until
        ZeroMQ has handed them to the kernel, which is when they stop
        counting; small ones are bounded by the high-water mark."""
        size = len(payload)
        peer = frames[0]
        if size >= TRACK_MIN:
            queued = self._queued_bytes(peer)
            if queued + size > REPLY_BYTES_PER_PEER or self._queued_total + size > REPLY_BYTES_TOTAL:
                self.dropped_slow += 1
                if _worth_saying(self.dropped_slow):
                    log.warning("dropped a %d-byte reply: its client has %d bytes of replies unread (all clients: "
                                "%d); %d dropped so far", size, queued, self._queued_total, self.dropped_slow,
                                extra={"event": "reply_dropped"})
                return
        try:
            if size < TRACK_MIN:
                sock.send_multipart([*frames, payload], flags=zmq.NOBLOCK)
                return
            tracker = sock.send_multipart([*frames, payload], flags=zmq.NOBLOCK, copy=False, track=True)
        except zmq.Again:  # its queue is at the high-water mark: it does not read
            self.dropped_slow += 1
            return
        except zmq.ZMQError:  # the client is gone
            self.dropped += 1
            return
        self._unread.setdefault(peer, collections.deque()).append((tracker, size))
        self._queued_total += size

    def _queued_bytes(self, peer: bytes) -> int:
        """Bytes of tracked replies to `peer` ZeroMQ still holds (forgetting
        the ones it has sent); every peer is swept now and then."""
        if time.monotonic() >= self._next_sweep:
            self._sweep_all()
        return self._sweep(peer)

    def _sweep_all(self) -> None:
        """Every peer's sent replies forgotten, once a second (by the loop too: a client that read its
        large reply and left stayed in `slow_clients`, its bytes in `reply_bytes_queued`)."""
        self._next_sweep = time.monotonic() + 1.0
        for peer in list(self._unread):
            self._sweep(peer)

    def _sweep(self, peer: bytes) -> int:
        pending = self._unread.get(peer)
        if pending is None:
            return 0
        while pending and pending[0][0].done:
            self._queued_total -= pending.popleft()[1]
        if not pending:
            del self._unread[peer]
            return 0
        return sum(size for _, size in pending)

    def stats(self) -> dict:
        """For `status`: replies dropped (client gone, or too far behind), bytes
        queued, clients connected to the request sockets and refused."""
        return {"replies_dropped": self.dropped + self.dropped_slow, "replies_dropped_slow": self.dropped_slow,
                "reply_bytes_queued": self._queued_total, "slow_clients": len(self._unread),
                "refused_envelopes": self.refused_envelopes,
                "clients": self._auth.connected, "clients_refused": self._auth.refused,
                "sockets_lost": sorted(ipc_path(e) for e in (*self._lost, *self._unmade))}

    def _drain(self, sock: zmq.Socket, budget: int = 64) -> None:
        """Read up to `budget` requests, so one chatty client cannot starve replies."""
        for _ in range(budget):
            try:
                # zero-copy: a request refused unread (too large, over the budget) is never copied
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            envelope = frames[1:-1]
            if len(envelope) > ENVELOPE_FRAMES or sum(len(f) for f in envelope) > ENVELOPE_BYTES:
                self._refuse_envelope(sock, frames)
                continue
            # DEALER: [identity, payload]; REQ: [identity, b"", payload]
            route = (sock, [f.bytes for f in frames[:-1]])
            payload = frames[-1].buffer
            del frames
            # the client: its connection (a routing id is unique within its socket)
            self.handler(payload, lambda reply, route=route: self.reply(route, reply), (id(sock), route[1][0]))

    def _refuse_envelope(self, sock: zmq.Socket, frames: list) -> None:
        """`too_large` to the client alone (its envelope is not sent back), counted and logged."""
        envelope = frames[1:-1]
        size = sum(len(f) for f in envelope)
        self.refused_envelopes += 1
        if _worth_saying(self.refused_envelopes):
            log.warning("refused a request with an envelope of %d frames, %d bytes (at most %d, %d bytes); %d so far",
                        len(envelope), size, ENVELOPE_FRAMES, ENVELOPE_BYTES, self.refused_envelopes,
                        extra={"event": "request_refused"})
        error = ProtocolError("too_large", f"an envelope of {len(envelope)} frames, {size} bytes, before the request: "
                                           f"at most {ENVELOPE_FRAMES} frames, {ENVELOPE_BYTES} bytes")
        self._send_reply(sock, [frames[0].bytes], encode_reply(request_id_of(frames[-1].buffer), error=error))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._wake()
            self._thread.join(3)
        self.close()

    def close(self) -> None:
        for sock in self._pubs + self._routers:
            sock.close(0)
        # only the files we bound: one another daemon put in their place (our directory was removed
        # under us) is left alone (it was unlinked, and that daemon could no longer be reached)
        for endpoint, (_, ident) in self._files.items():
            path = ipc_path(endpoint)
            if _identity(path) == ident:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for fd in self._locks.values():
            os.close(fd)  # releases the lock; the file stays (unlinking it would race the next daemon)
        self._locks = {}
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

