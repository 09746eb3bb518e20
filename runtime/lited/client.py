"""What a local app imports to talk to lited (protocol: docs/protocol.md).

    from lited.client import Subscriber, Client

    with Subscriber(streams=["cam0"]) as sub:
        for result in sub:
            print(result["seq"], result["detections"])
            with sub.frame_view(result) as frame:   # zero copy, read-only
                ...                                  # raises FrameOverwritten on exit if the slot was reused

    client = Client()
    client.infer(image=cv2.imread("photo.jpg"))

Frames come straight from the daemon's shared-memory ring, mapped read-only:
an app can read them without a copy and cannot corrupt the daemon.

Finding the daemon: an explicit endpoint, else the endpoints of the config
the daemon runs with (`config=`, default /etc/lited/lited.conf when it can be
read: its runtime_dir and endpoints), else the default runtime directory's
sockets; `lited ctl` uses the same rule. A config that cannot be read
(missing, or its runtime_dir or endpoints wrong) raises ConfigError naming
the file, a missing or dead ipc:// socket raises DaemonUnreachable at once
instead of waiting for a reply that cannot come, and a Subscriber asked for
a stream the daemon does not have says so.

Before talking over an ipc:// socket, both check that the daemon behind it
runs as a user they trust (themselves, root, or the service user `lited`;
`trusted_uids` to say otherwise) and that nobody else could have replaced
the socket: `UntrustedPeer` (a PermissionError) if not (lited/runtime_dir.py).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from typing import Any, Iterator, Optional, Tuple, Union

import numpy as np
import zmq

from lited import protocol
from lited.config import DEFAULT_CONFIG, ConfigError, client_endpoints, client_runtime_dir
from lited.runtime_dir import PeerCheck, UntrustedPeer
from lited.stream.ring import FrameOverwritten, FrameRing, RingError, RingGone

# A message this library takes, reply or published: the bus holds at most 16 MiB of replies for one
# client (a bigger one is answered `too_large`) and a result is a few KiB. Bigger is not lited's:
# ZeroMQ reads the size in the message's header and drops the connection before taking the rest in
# (a fake daemon's 400 MB reply was 400 MB in the app).
MAX_MESSAGE_BYTES = (16 << 20) + (64 << 10)

__all__ = ["Client", "ClientError", "ConfigError", "DaemonUnreachable", "FrameOverwritten", "RingGone",
           "Subscriber", "UntrustedPeer", "daemon_endpoints"]


class ClientError(Exception):
    """The daemon answered with an error, or the client refused what the daemon
    would (an `infer` array it does not take); `code` as in docs/protocol.md,
    or `unreachable` (DaemonUnreachable) or `refused` (the daemon refused the
    connection's handshake): said by this library, never sent by the daemon."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DaemonUnreachable(ClientError):
    """No daemon can answer at the endpoint (no socket, nothing listening, no
    permission); code `unreachable`, the library's own (not a protocol code)."""

    def __init__(self, message: str) -> None:
        super().__init__("unreachable", message)


def default_endpoint(kind: str) -> str:
    return f"ipc://{client_runtime_dir()}/{kind}.sock"


def daemon_endpoints(config: Union[str, os.PathLike, None] = None) -> Tuple[str, str]:
    """(pub, req) of the daemon that runs with `config` (default: /etc/lited/lited.conf
    if it can be read, else the default runtime directory's sockets). Of
    several endpoints, the first ipc:// one (a local app's way in)."""
    if config is None and os.access(DEFAULT_CONFIG, os.R_OK):
        config = DEFAULT_CONFIG
    if config is None:
        return default_endpoint("pub"), default_endpoint("req")
    pub, req = client_endpoints(config)
    return _local_first(pub), _local_first(req)


def _local_first(endpoints: list) -> str:
    return next((e for e in endpoints if e.startswith("ipc://")), endpoints[0])


# s a full listen backlog must last to say nothing accepts: a burst of connections (300 apps at once; ZeroMQ
# listens with a backlog of 100) fills it for a moment in front of a daemon that is well
BACKLOG_FULL_S = 1.0


def unreachable(endpoint: str, probe: bool = True) -> Optional[str]:
    """Why nothing can answer at `endpoint`, found at once for an ipc:// socket
    (missing; with `probe`, a connection to it also says refused or not ours
    to open; a listen backlog full for BACKLOG_FULL_S); None when it may answer (or for tcp://, where ZeroMQ only says
    so by never replying)."""
    path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
    if not path or path.startswith("@"):  # tcp://, inproc://, or an abstract socket: nothing to look at
        return None
    if not os.path.exists(path):
        return (f"no socket {path}: is lited serve running? (`lited ctl --config FILE` finds the sockets "
                "of the daemon that runs with FILE)")
    if not probe:
        return None
    deadline = time.monotonic() + BACKLOG_FULL_S
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(2)
        try:
            conn.connect(path)
            return None
        except ConnectionRefusedError:
            return f"nothing listens on {path} (left by a daemon that is gone: is lited serve running?)"
        except PermissionError:
            return f"{path}: permission denied (the service's sockets are its group's: join that group, e.g. lited)"
        except BlockingIOError:  # EAGAIN: its listen backlog is full ("Resource temporarily unavailable" said nothing)
            if time.monotonic() >= deadline:
                return (f"nothing accepts connections on {path} (its backlog is full): not a lited request socket, "
                        "or a daemon that hangs")
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        finally:
            conn.close()
        time.sleep(0.02)


PROBE_INTERVAL = 0.5  # s: while a call waits, how often it looks whether the daemon's socket is still alive
OVERSIZE_DROPPED = (1 << 10) + (64 << 10)  # bytes: over the least limits.max_request_bytes by the 64 KiB the
# daemon still answers `too_large`, a request may be dropped without a reply (docs/protocol.md, too_large)


def _timeout_causes(request_bytes: int) -> str:
    """What a request that got no reply may have run into, for the TimeoutError."""
    causes = ("busy for longer than the timeout (a slow model, requests queued before this one)? "
              "the next call connects anew")
    if request_bytes > OVERSIZE_DROPPED:
        return (f"a request of {request_bytes} bytes, dropped without a reply if the daemon's "
                f"limits.max_request_bytes (16 MiB by default) is under {request_bytes - (64 << 10)}? or {causes}")
    return causes


class HandshakeWatch:
    """Why the daemon's end of a socket's connection failed its ZeroMQ handshake, heard on a monitor of
    that socket. ZeroMQ tells the socket's user nothing: a refused request timed out, a refused
    subscriber heard silence for ever, and libzmq never connects again after a refusal."""

    EVENTS = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | \
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED | \
        zmq.EVENT_DISCONNECTED
    # a failure with no detail (a CURVE server key that does not match, which ZeroMQ retries for ever)
    # counts once seen this many times in a row: once may be a daemon restarting mid-handshake
    NO_DETAIL_TIMES = 2

    def __init__(self, sock: zmq.Socket, endpoint: str, curve: bool, requests: bool) -> None:
        """Watch `sock`, then connect it to `endpoint` (the monitor is on first: a refusal can come
        at once); ValueError, nothing left open, for an endpoint ZeroMQ cannot take."""
        self.endpoint = endpoint
        self._curve = curve
        self._requests = requests  # a request socket (counted against limits.max_clients), not a subscriber
        self._no_detail = 0
        self._greeted = True  # no connection yet to have failed its greeting
        self._up = False  # a connection passed its handshake and has not closed since
        self.lost = False  # a connection that passed its handshake closed, none since (read by problem())
        self._sock = sock
        self.monitor = sock.get_monitor_socket(self.EVENTS)
        self._pollers = {}  # event waited for on the socket -> a poller for it and the monitor
        for event in (zmq.POLLIN, zmq.POLLOUT):
            poller = self._pollers[event] = zmq.Poller()
            poller.register(sock, event)
            poller.register(self.monitor, zmq.POLLIN)
        try:
            _connect(sock, endpoint)
        except ValueError:
            self.close()
            raise

    def wait(self, timeout_ms: Optional[int], event: int = zmq.POLLIN) -> bool:
        """Until the socket has a message (`event` POLLIN; POLLOUT: room to send one) (True) or
        `timeout_ms` passed (False, None: for ever); a handshake event ends the wait too, for
        `problem()` to read."""
        return self._sock in dict(self._pollers[event].poll(timeout_ms))

    def problem(self) -> Optional[str]:
        """Why the last handshake failed, or None while none has (reads the monitor; never waits)."""
        from zmq.utils.monitor import parse_monitor_message

        failure = None
        while self.monitor.poll(0):
            event = parse_monitor_message(self.monitor.recv_multipart())
            if event["event"] == zmq.EVENT_CONNECTED:
                self._greeted = False
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.lost, self._up = self.lost or self._up, False
                # closed before any greeting: a ZeroMQ socket of another type (lited's other socket), which
                # libzmq neither reports nor connects to again (a request or subscriber then waited in vain)
                if not self._greeted:
                    failure = event
                self._greeted = True
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:  # connected again, if it was lost: by ZeroMQ
                self._no_detail, failure, self._greeted, self._up, self.lost = 0, None, True, True, False
            else:  # a handshake failed: the peer did answer (a refusal, a CURVE key that does not match)
                self._greeted = True
                if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                    failure = event
                else:
                    self._no_detail += 1
                    if self._no_detail >= self.NO_DETAIL_TIMES:
                        failure = event
        if failure is None:
            return None
        tcp = self.endpoint.startswith("tcp://")
        # the peer closing mid-handshake, with no CURVE to blame, is the same refusal of our socket type
        # seen from the other side of a race: its check of our greeting came before ours of its greeting
        closed_mid_handshake = failure["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and not (tcp or self._curve)
        if failure["event"] == zmq.EVENT_DISCONNECTED or closed_mid_handshake:
            ours, other = ("request socket", "pub.sock") if self._requests else ("publishing socket", "req.sock")
            return (f"{self.endpoint} closed the connection before the ZeroMQ handshake: it is not lited's {ours} "
                    f"(another type of ZeroMQ socket, such as lited's {other}?)")
        if failure["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = []
            if tcp and self._curve:
                why.append("this app's CURVE public key is not in its clients_dir (the .key of `lited keygen` "
                           "NAME, copied there and reloaded)")
            if self._requests:
                why.append(f"it has limits.max_clients {'remote' if tcp else 'local'} clients connected (a new "
                           "Client gets in once one leaves)")
            return (f"the daemon at {self.endpoint} refused this connection (ZAP status {failure['value']}): "
                    + (" or ".join(why) or "its authentication said no"))
        if tcp and self._curve:
            return (f"the CURVE handshake with {self.endpoint} failed: is curve['server_public'] the daemon's "
                    "public key (its NAME.key), and does that endpoint use CURVE?")
        if tcp:
            return (f"the handshake with {self.endpoint} failed: a tcp:// endpoint with CURVE keys needs curve="
                    "{'server_public': ..., 'client_secret': ...} (docs/protocol.md, Over TCP)")
        return f"the handshake with {self.endpoint} failed (not a lited socket?)"

    def connect_again(self) -> None:
        """Connect anew after `lost`: a connection ZeroMQ closed for a protocol error (a message over
        MAX_MESSAGE_BYTES) is never made again by ZeroMQ; one closed otherwise (a daemon restarting)
        is made again here as ZeroMQ would."""
        self.lost = False
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disconnect(self.endpoint)
        _connect(self._sock, self.endpoint)

    def close(self) -> None:
        """Before the socket closes: a monitor left on it leaked descriptors (3 per socket, so a process
        making Clients in a loop ran out of them)."""
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self.monitor.close(0)


def _frame_of(result: Any) -> dict:
    """The `frame` of a result message; ValueError for anything else (an event, a hand-made dict)."""
    frame = result.get("frame") if isinstance(result, dict) else None
    if not (isinstance(frame, dict) and isinstance(frame.get("ring"), str)
            and all(isinstance(frame.get(k), int) and not isinstance(frame.get(k), bool) for k in ("slot", "slot_seq"))):
        kind = result.get("type") if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"lited: expected a result message with its frame (ring, slot, slot_seq), got {kind!r}")
    return frame


def _request_endpoint_beside(pub: str) -> Optional[str]:
    """ipc://DIR/req.sock for ipc://DIR/pub.sock (the default layout), else None."""
    if pub.startswith("ipc://") and pub.endswith("/pub.sock"):
        return pub[: -len("pub.sock")] + "req.sock"
    return None


class Subscriber:
    """Results (and optionally events and uplink answers) of some or all
    streams (`streams`: a name or a list of names; all when None).

    With `check` (the default) it fails at once, rather than waiting in
    silence, when the daemon's socket is missing or dead (DaemonUnreachable)
    or when it has no stream of that name (ClientError `not_found`, asked with
    a `status` request over the request socket beside the PUB one, or
    `request_endpoint`: DaemonUnreachable if that one is missing or dead,
    ClientError `refused` if the daemon refuses the connection (over
    limits.max_clients), TimeoutError if no reply comes within `timeout`
    seconds). With no request socket to ask (a PUB endpoint not
    named pub.sock and no `request_endpoint`, or tcp://) only the PUB socket
    is checked. An app started before the daemon, or waiting for a stream a
    reload will add, passes check=False.

    When the daemon rebuilds a ring for a new frame size, the segments this
    subscriber had mapped stay mapped, so the frames of the results it got
    before the resize stay readable (docs/protocol.md): at most
    `old_segments` replaced segments per ring, the newest; each holds its
    memory (slots x frame size) until it is dropped.

    `rcvhwm`: how many messages this subscriber's own ZeroMQ queue holds
    (ZMQ_RCVHWM; 1000, ZeroMQ's default; 0: no limit). A slow app is behind by that many,
    plus the daemon's `limits.pub_hwm` and what the socket buffers between
    hold (some 170 small results over ipc://), before the daemon drops any
    for it and `seq` jumps: an app that wants stale results dropped sooner
    passes a small one (docs/protocol.md)."""

    def __init__(self, endpoint: Optional[str] = None, streams: Union[str, list, None] = None, events: bool = False,
                 context: Optional[zmq.Context] = None, curve: Optional[dict] = None,
                 config: Union[str, os.PathLike, None] = None, check: bool = True,
                 request_endpoint: Optional[str] = None, answers: bool = False,
                 trusted_uids: Optional[set] = None, old_segments: int = 2, timeout: float = 10.0,
                 rcvhwm: int = 1000) -> None:
        for name, value, meaning in (("rcvhwm", rcvhwm, "0 (no limit) or more"), ("old_segments", old_segments, "0 or more")):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: expected a whole number, {meaning}, got {value!r}")
        if endpoint is None:
            endpoint, found_req = daemon_endpoints(config)
            request_endpoint = request_endpoint or found_req
        if isinstance(streams, str):
            streams = [streams]  # one name, not its characters
        _check_timeout(timeout)
        self.endpoint = endpoint
        self._peer = PeerCheck(endpoint, trusted_uids)
        self._peer.verify()  # before ZeroMQ connects and greets it
        if check:
            _check_streams(endpoint, request_endpoint or _request_endpoint_beside(endpoint), streams, context, curve,
                           trusted_uids, timeout)
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        _apply_curve(self.socket, curve)
        self.streams = set(streams) if streams else None
        for stream in streams or [""]:
            self.socket.setsockopt(zmq.SUBSCRIBE, protocol.result_topic(stream) if stream else b"result/")
            if events:
                self.socket.setsockopt(zmq.SUBSCRIBE, protocol.event_topic(stream) if stream else b"event/")
            if answers:
                self.socket.setsockopt(zmq.SUBSCRIBE, protocol.answer_topic(stream) if stream else b"answer/")
        if events and streams:
            self.socket.setsockopt(zmq.SUBSCRIBE, protocol.event_topic(protocol.DAEMON_STREAM))
        self._handshake = HandshakeWatch(self.socket, endpoint, curve is not None, requests=False)
        self._rings: dict = {}  # ring name -> its segments this subscriber maps, oldest first
        self._dropped: dict = {}  # ring name -> the newest generation unmapped to keep within old_segments
        self.old_segments = old_segments
        self.malformed = 0

    def recv(self, timeout: Optional[float] = None) -> Optional[dict]:
        """The next result or event, or None after `timeout` seconds.
        ValueError once closed; ClientError `refused` when the daemon refused
        this subscriber's connection (a CURVE key it does not allow, a wrong
        server key): ZeroMQ would wait in silence for ever."""
        if self.socket.closed:
            raise ValueError("lited: this Subscriber is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            readable = self._handshake.wait(wait)
            problem = self._handshake.problem()
            if problem:
                raise ClientError("refused", problem)
            if self._handshake.lost:
                self._handshake.connect_again()
            if not readable:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            frames = self.socket.recv_multipart()
            self._peer.verify()  # cheap unless the socket file changed (a daemon restart)
            if len(frames) != 2:
                self.malformed += 1
                continue
            try:
                message = protocol.decode_payload(frames[1])
            except protocol.ProtocolError:
                self.malformed += 1
                continue
            stream = message.get("stream")
            if self.streams is None or stream in self.streams or stream == protocol.DAEMON_STREAM:
                return message  # exact stream match: "cam0" does not take "cam01"

    def __iter__(self) -> Iterator[dict]:
        while True:
            message = self.recv()
            if message is not None:
                yield message

    def _ring(self, result: dict) -> FrameRing:
        """The mapped segment holding the result's frame: the ring named in
        it, of the generation it names. A ring rebuilt for a new frame size
        is a new segment under the same name; the segments this subscriber
        mapped before stay mapped (up to `old_segments` per ring), so the
        results it got before a resize can still be read. RingGone if the
        writer is gone, or the segment was replaced before it was mapped."""
        frame = _frame_of(result)
        if self.socket.closed:  # close() unmapped the rings: not mapped again behind its back
            raise ValueError("lited: this Subscriber is closed")
        name, generation = frame["ring"], frame.get("generation")
        mapped = self._rings.get(name, [])  # oldest first
        for ring in reversed(mapped):
            if not generation or ring.generation == generation:
                if ring.writer_alive() or (generation and ring.readable()):
                    return ring
                break
        self._drop_unreadable()
        ring = FrameRing.attach(name)
        if generation and ring.generation != generation:
            ring.close()
            if generation <= self._dropped.get(name, 0):
                raise RingGone(f"{name}: generation {generation} was replaced by newer ones and this subscriber no "
                               f"longer maps it (it keeps {self.old_segments} replaced segments: old_segments)")
            raise RingGone(f"{name}: generation {generation} was replaced by {ring.generation} before this subscriber "
                           "mapped it")
        mapped = self._rings.setdefault(name, [])
        mapped.append(ring)
        while len(mapped) > 1 + self.old_segments:
            oldest = mapped.pop(0)
            self._dropped[name] = oldest.generation
            oldest.close()
        return ring

    def _drop_unreadable(self) -> None:
        """Unmap the segments whose frames can no longer be read (their writer
        is gone: a restart), and those of the same generation as a newer one."""
        for name, mapped in list(self._rings.items()):
            keep = [ring for ring in mapped if ring.readable()]
            for ring in mapped:
                if ring not in keep:
                    ring.close()
            if keep:
                self._rings[name] = keep
            else:
                del self._rings[name]

    @contextlib.contextmanager
    def frame_view(self, result: dict) -> Iterator[np.ndarray]:
        """The result's own frame, zero copy and read-only, for the `with` body
        only: the array still works after it, but shows whatever the daemon
        has written into the slot since, with no error (copy what you keep,
        or use `frame()`).
        The daemon keeps the frame of its latest result (and `keep_results`
        older ones) intact, so reading each result as it arrives always
        works, across resizes too. Raises FrameOverwritten (on entry or exit)
        if the daemon reused the slot (a result read late), RingGone if the
        daemon restarted, or the result's ring segment was replaced before
        this subscriber mapped it (or more than `old_segments` segments ago);
        ValueError for what is not a result with its frame (an event) or
        names a slot the ring does not have."""
        frame = _frame_of(result)
        with self._ring(result).frame(frame["slot"], frame["slot_seq"]) as view:
            yield view

    def frame(self, result: dict, out: Optional[np.ndarray] = None) -> np.ndarray:
        """A copy of the result's frame (into `out` if given); FrameOverwritten if gone
        (and RingGone, ValueError as for `frame_view`)."""
        frame = _frame_of(result)
        data = self._ring(result).read(frame["slot"], frame["slot_seq"], out)
        if data is None:
            raise FrameOverwritten(f"frame {result['seq']} of {result['stream']} was overwritten")
        return data

    def close(self) -> None:
        """Unmap every ring segment and close the socket; recv(), frame() and frame_view() are then a
        ValueError (a view still held stays readable)."""
        for ring in itertools.chain.from_iterable(self._rings.values()):
            with contextlib.suppress(RingError):
                ring.close()
        self._rings.clear()
        self._handshake.close()
        self.socket.close(0)

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Requests with timeouts. One Client per thread.

    A daemon that is not there, or went away, raises DaemonUnreachable at
    once (see `call`), not after the timeout; so does a connection the
    daemon refused (ClientError `refused`: over limits.max_clients, or over
    tcp:// a CURVE key it does not allow; the next call connects anew and
    gets in once a place is free). A TimeoutError says what the request may
    have run into: a daemon busy for longer than the timeout (a slow model,
    requests queued before it), or, for a request over 64 KiB (a large
    `infer` array), limits.max_request_bytes."""

    def __init__(self, endpoint: Optional[str] = None, timeout: float = 10.0,
                 context: Optional[zmq.Context] = None, curve: Optional[dict] = None,
                 config: Union[str, os.PathLike, None] = None, trusted_uids: Optional[set] = None) -> None:
        _check_timeout(timeout)
        self.endpoint = endpoint or daemon_endpoints(config)[1]
        self._peer = PeerCheck(self.endpoint, trusted_uids)
        self._peer.verify()  # before ZeroMQ connects and greets it
        self.context = context or zmq.Context.instance()
        self.timeout = timeout
        self._curve = curve
        self._ids = itertools.count(1)
        self._answered = False
        self._reconnect = False  # the last call timed out or was refused: the next one connects anew
        self._connect()

    def _connect(self) -> None:
        """A fresh socket. Also after a call timed out or was refused: a connection the daemon
        refused (over `limits.max_clients`) is never retried by ZeroMQ, and its
        sends would block for ever; a new one is asked about again."""
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout * 1000)))
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        _apply_curve(self.socket, self._curve)
        self._handshake = HandshakeWatch(self.socket, self.endpoint, self._curve is not None, requests=True)

    def _close_socket(self) -> None:
        self._handshake.close()
        self.socket.close(0)

    def call(self, method: str, timeout: Optional[float] = None, **params: Any) -> Any:
        """Send a request, wait for its reply; ClientError (DaemonUnreachable),
        TimeoutError, or UntrustedPeer before anything is sent to a daemon it
        must not trust. A daemon that went away is found at once, not after
        the timeout: every call looks whether an ipc:// socket file is still
        there (a stopped daemon removes it), and whether something listens on
        it on the first call, after a failed one, and every half second while
        it waits for the reply (a killed daemon leaves a dead socket).
        `timeout` (seconds, > 0; default the Client's); ValueError once closed."""
        if self.socket.closed:
            raise ValueError("lited: this Client is closed")
        if timeout is not None:
            _check_timeout(timeout)
        self._peer.verify()
        self._raise_if_unreachable(probe=not self._answered)
        if self._reconnect:  # now, not when the last call timed out: a place may have freed since
            self._close_socket()
            self._connect()
            self._reconnect = False
        request_id = next(self._ids)
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        request = protocol.encode_request(method, params, request_id)
        sent = self._send(request, deadline)
        while True:
            remaining = deadline - time.monotonic()
            if not sent or remaining <= 0:
                self._raise_if_refused()
                self._raise_if_unreachable(probe=True)  # it went away while we waited
                self._reconnect = True
                raise TimeoutError(f"lited: no reply to {method} within {wait:.3g} s from {self.endpoint} "
                                   f"({_timeout_causes(len(request))})")
            readable = self._handshake.wait(int(min(remaining, PROBE_INTERVAL) * 1000))
            self._raise_if_refused()
            if not readable:
                self._raise_if_unreachable(probe=True)
                continue
            try:
                reply = protocol.decode_reply(self.socket.recv())
            except protocol.ProtocolError as exc:  # the README names ClientError, not the decoder's own
                raise ClientError("failed", f"a reply from {self.endpoint} that is not lited's: {exc}") from None
            self._answered = True
            if reply.get("id") != request_id:
                continue  # a late reply to an earlier request that timed out
            if reply.get("ok"):
                return reply.get("result")
            error = reply.get("error")
            if not isinstance(error, dict):  # not lited's reply (a string raised AttributeError here)
                raise ClientError("failed", f"a reply from {self.endpoint} that is not lited's: error is "
                                            f"{type(error).__name__}")
            raise ClientError(str(error.get("code", "failed")), str(error.get("message", "")))

    def _send(self, request: bytes, deadline: float) -> bool:
        """Send `request` once there is a connection to send on; False at `deadline` (none came:
        refused, over limits.max_clients). A refusal heard meanwhile raises at once: a connection
        closed before its handshake (another socket type) left the send waiting its whole timeout."""
        while True:
            try:
                self.socket.send(request, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            self._raise_if_refused()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._handshake.wait(int(min(remaining, PROBE_INTERVAL) * 1000) + 1, zmq.POLLOUT)

    def _raise_if_refused(self) -> None:
        """ClientError `refused` once the daemon refused this connection's handshake (the next call
        connects anew): at once, not after the timeout."""
        problem = self._handshake.problem()
        if problem:
            self._reconnect = True
            raise ClientError("refused", problem)

    def _raise_if_unreachable(self, probe: bool) -> None:
        """DaemonUnreachable if the ipc:// socket is gone (or, with `probe`,
        dead); the next call then probes again before sending."""
        problem = unreachable(self.endpoint, probe)
        if problem:
            self._answered = False
            raise DaemonUnreachable(problem)

    def ping(self) -> dict:
        return self.call("ping")

    def status(self) -> dict:
        return self.call("status")

    def infer(self, image: Any, model: Optional[str] = None, timeout: Optional[float] = None) -> dict:
        """`image`: a BGR uint8 array (height x width x 3), encoded image bytes
        (bytes, bytearray or memoryview), or a file path (str or os.PathLike).
        Anything else is refused here (ClientError `bad_request`), before
        anything is sent: an int is never taken for a file descriptor. An
        array of another dtype or shape is refused too (as the daemon would),
        never cast: a 0..1 float image cast to uint8 is black, and the result
        silently wrong."""
        params: dict = {} if model is None else {"model": model}
        if isinstance(image, np.ndarray):
            array = np.ascontiguousarray(_checked_array(image))
            params.update(array=array.tobytes(), shape=list(array.shape), dtype="uint8")
        elif isinstance(image, (bytes, bytearray, memoryview)):
            params["image"] = bytes(image)
        elif isinstance(image, (str, os.PathLike)):
            with open(image, "rb") as fh:
                params["image"] = fh.read()
        else:
            raise ClientError("bad_request", f"image: expected a BGR uint8 array, encoded image bytes or a file path, "
                                             f"got {type(image).__name__}"
                                             + (" (cv2.imread gives None for a file it cannot read)"
                                                if image is None else ""))
        return self.call("infer", timeout=timeout, **params)

    def reload(self, model: Optional[str] = None, bundle: Optional[str] = None, timeout: float = 120.0,
               force: bool = False) -> dict:
        """Without `model`: what SIGHUP does (the config is read again). `force`
        swaps a bundle whose task or labels differ from the running one's."""
        params: dict = {k: v for k, v in (("model", model), ("bundle", bundle)) if v is not None}
        if force:
            params["force"] = True
        return self.call("reload", timeout=timeout, **params)

    def snapshot(self, stream: str, quality: int = 85) -> dict:
        return self.call("snapshot", stream=stream, quality=quality)

    def close(self) -> None:
        self._close_socket()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_timeout(timeout: float) -> None:
    """ValueError unless `timeout` is a number of seconds above 0 (0 waited
    for the default, a negative one gave a TimeoutError at once)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")


def _connect(sock: zmq.Socket, endpoint: str) -> None:
    """Connect, or ValueError naming an endpoint ZeroMQ cannot take."""
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        raise ValueError(f"endpoint {endpoint!r}: {zmq.strerror(exc.errno)} (expected ipc://PATH or tcp://HOST:PORT)") from None


def _checked_array(image: np.ndarray) -> np.ndarray:
    """`image` if the daemon takes it as an `array` (docs/protocol.md, `infer`),
    else ClientError `bad_request` saying how to make it so."""
    if image.dtype != np.uint8:
        raise ClientError("bad_request", f"image: dtype {image.dtype}; only uint8 (BGR) is accepted: convert it, "
                                         "e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for 0..1 floats")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ClientError("bad_request", f"image: shape {list(image.shape)}; expected [height, width, 3] (BGR: "
                                         "cv2.cvtColor(x, cv2.COLOR_GRAY2BGR) for grey, COLOR_BGRA2BGR for BGRA)")
    return image


def _check_streams(pub: str, req: Optional[str], streams: Optional[list], context: Optional[zmq.Context],
                   curve: Optional[dict], trusted_uids: Optional[set], timeout: float) -> None:
    """DaemonUnreachable, ClientError(`not_found`) or TimeoutError now, rather than silence for ever."""
    problem = unreachable(pub)
    if problem:
        raise DaemonUnreachable(problem)
    if not streams or req is None:
        return  # no request socket to ask (a custom layout, tcp://): nothing more to check
    problem = unreachable(req)
    if problem:
        raise DaemonUnreachable(f"cannot check streams {', '.join(map(repr, streams))} over {req}: {problem}")
    with Client(req, timeout=timeout, context=context, curve=curve, trusted_uids=trusted_uids) as client:
        try:
            have = [s["stream"] for s in client.status()["streams"]]
        except TimeoutError:
            raise TimeoutError(f"lited: no reply within {timeout:.3g} s to the status request that checks the "
                               f"streams, from {req} (check=False skips the check)") from None
    missing = [s for s in streams if s not in have]
    if missing:
        raise ClientError("not_found", f"no stream {', '.join(map(repr, missing))} in the daemon at {pub} "
                                       f"(it has {', '.join(have) or 'none'}); add it to the config and reload, "
                                       "or pass check=False to wait for it")


CURVE_KEYS = ("server_public", "client_secret")


def _apply_curve(sock: zmq.Socket, curve: Optional[dict]) -> None:
    """curve: {"server_public": the daemon's NAME.key, "client_secret": this app's NAME.key_secret}
    (`lited keygen` files). Anything else is a ConfigError naming the key, before a byte is sent:
    `{}` was ignored (then a timeout), a public key as the secret a TypeError."""
    if curve is None:
        return
    from lited.keys import load_key

    if not isinstance(curve, dict) or sorted(curve) != sorted(CURVE_KEYS):
        sock.close(0)
        raise ConfigError("curve=", [f"expected {{'server_public': FILE, 'client_secret': FILE}}, got {curve!r}"])
    keys = {}
    for name in CURVE_KEYS:
        try:
            keys[name] = load_key(str(curve[name]))
        except (OSError, ValueError, TypeError) as exc:
            sock.close(0)
            raise ConfigError(f"curve={{'{name}': {curve[name]!r}}}", [getattr(exc, "strerror", None) or str(exc)]) \
                from None
    if keys["client_secret"][1] is None:
        sock.close(0)
        raise ConfigError(f"curve={{'client_secret': {curve['client_secret']!r}}}",
                          ["holds no secret key (the NAME.key_secret file of this app's lited keygen)"])
    sock.curve_serverkey = keys["server_public"][0]
    sock.curve_publickey, sock.curve_secretkey = keys["client_secret"]
