#!/usr/bin/env python3
"""Print the results and events a lited daemon publishes.

    python_subscriber.py ENDPOINT [TOPIC_PREFIX] [COUNT]

ENDPOINT is the daemon's PUB endpoint (ipc:///run/lited/pub.sock; a
tcp:// one with CURVE keys from LITED_SERVER_KEY and LITED_CLIENT_KEY),
TOPIC_PREFIX defaults to "result/" ("" gets everything), COUNT is how many
messages to receive before exiting 0 (default 0: forever; a reader that
stops reading its output, `| head`, ends it with 0 too).

Plain pyzmq + msgpack, written from docs/protocol.md alone; it prints exactly
what c_subscriber prints, so the two can be compared line for line.
"""
import os
import pwd
import socket
import struct
import sys

import msgpack
import zmq

EVENTS = ("state", "resized", "ring", "skipped", "decode", "model", "engine", "reload", "ready", "stopping")
STATES = ("connecting", "streaming", "stalled", "backoff", "ended", "stopped")


class Malformed(Exception):
    """The message breaks the protocol; its text says how."""


def is_int(x):
    return type(x) is int  # not isinstance: True is an int to Python, a bool to msgpack


def is_num(x):
    return type(x) in (int, float)


def is_whole(x):
    """An int, or a float with an integral value (a number may come as either: 3.0 is 3)."""
    return is_int(x) or (type(x) is float and -9.2e18 <= x <= 9.2e18 and x == int(x))


def read_key(path, field):
    """The quoted Z85 value of `field` (public-key or secret-key) in a key file
    of `lited keygen` (zmq.auth's format); raises ValueError saying why not."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    for line in lines:
        name, _, value = line.strip().partition("=")
        value = value.strip()
        if name.strip() == field and len(value) == 42 and value[0] == value[-1] == '"':
            return value[1:-1].encode()
    raise ValueError(f"{path}: no {field} of 40 characters in quotes (not a key file of lited keygen?)")


def curve_from_env(sock):
    """Why the CURVE keys named by LITED_SERVER_KEY (the daemon's public key
    file) and LITED_CLIENT_KEY (this app's secret key file) could not be set on
    `sock` (docs/protocol.md, "Over TCP"); None once set, or when neither is."""
    server, client = os.environ.get("LITED_SERVER_KEY"), os.environ.get("LITED_CLIENT_KEY")
    if server is None and client is None:
        return None
    if server is None or client is None:
        return ("CURVE needs both LITED_SERVER_KEY (the daemon's NAME.key) and LITED_CLIENT_KEY "
                f"(this app's APP.key_secret); only {'LITED_SERVER_KEY' if server else 'LITED_CLIENT_KEY'} is set")
    try:
        keys = read_key(server, "public-key"), read_key(client, "public-key"), read_key(client, "secret-key")
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
    except ValueError as exc:
        return str(exc)
    except zmq.ZMQError as exc:
        return f"{server} or {client}: a key that is not Z85 ({exc})"
    return None


def untrusted_peer(endpoint):
    """None when the process listening on an ipc:// endpoint runs as a user
    this client trusts (itself, root or the service user lited), else why not.
    ZeroMQ shows a client nothing of its peer, so this asks the kernel
    (SO_PEERCRED) over a plain connection of its own, closed at once; the
    ZeroMQ connection that follows goes to the same socket as long as nobody
    can replace it, which the daemon's runtime directory (writable by its user
    only) ensures. Other transports: None (tcp:// is CURVE's business)."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        _, uid, _ = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    except OSError as exc:
        return f"nothing listens on {path} ({exc.strerror}): is lited serve running?"
    finally:
        probe.close()
    try:
        service = pwd.getpwnam("lited").pw_uid
    except KeyError:
        service = None
    if uid in (os.getuid(), 0, service):
        return None
    return f"{path} is served by uid {uid}, not by this user, root or lited: refusing to talk to it"


def clean(s):
    """Control characters become '?', so that one result stays one line."""
    return "".join("?" if ord(c) < 0x20 or c == "\x7f" else c for c in s)


def str_keys(pairs):
    return {k: v for k, v in pairs if type(k) is str}  # the last of equal keys wins


def items(lst, name, boxes, bad):
    """'N detections: label score x1,y1,x2,y2 ["text"]; ...' or 'N classes: label score; ...'
    ("text": what a cascade's text stage read).

    Here and below, None (msgpack nil) counts as absent, as in the C example."""
    if lst is None:  # a missing list is an empty one
        lst = []
    if type(lst) is not list:
        raise Malformed(bad)
    parts = []
    for item in lst:
        if type(item) is not dict:
            raise Malformed(bad)
        label, score, box = item.get("label"), item.get("score"), item.get("box")
        if type(label) is not str or not is_num(score):
            raise Malformed(bad)
        text = f"{clean(label)} {score:.2f}"
        if boxes:
            if type(box) is not list or len(box) != 4 or not all(map(is_num, box)):
                raise Malformed(bad)
            text += " " + ",".join(f"{x:.1f}" for x in box)
            read = item.get("text")
            if read is not None:
                if type(read) is not str:
                    raise Malformed(bad)
                text += ' "' + clean(read).replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(text)
    return f"{len(lst)} {name}" + (": " + "; ".join(parts) if parts else "")


def format_result(msg):
    stream, seq, model = msg.get("stream"), msg.get("seq"), msg.get("model")
    if type(stream) is not str:
        raise Malformed("bad stream")
    if not is_whole(seq):
        raise Malformed("bad seq")
    if type(model) is not str:
        raise Malformed("bad model")
    line = f"{clean(stream)} {int(seq)} {clean(model)} "
    line += items(msg.get("detections"), "detections", True, "bad detections")
    classes = msg.get("classes")
    if classes is not None and classes != []:  # detectors send none: say nothing
        line += " | " + items(classes, "classes", False, "bad classes")
    return line


def format_event(msg):
    stream, event = msg.get("stream"), msg.get("event")
    state, detail, ok = msg.get("state"), msg.get("detail"), msg.get("ok")
    if type(stream) is not str:
        raise Malformed("bad stream")
    if type(event) is not str:
        raise Malformed("bad event")
    if state is not None and type(state) is not str:
        raise Malformed("bad state")
    if detail is not None and type(detail) is not str:
        raise Malformed("bad detail")
    if ok is not None and type(ok) is not bool:
        raise Malformed("bad ok")
    if event not in EVENTS or (state is not None and state not in STATES):
        return None  # a kind or state this client does not know: ignore it, print nothing
    if state is None:  # a reload's `ok` stands in for the state
        state = "-" if ok is None else ("ok" if ok else "failed")
    detail = detail or "-"  # absent, nil or empty: it carries nothing
    return f"event {clean(stream)} {clean(event)} {clean(state)} {clean(detail)}"


def format_message(frames):
    """The line to print for one message, or None for a type this client does not know."""
    if len(frames) != 2:
        raise Malformed(f"expected 2 frames, got {len(frames)}")
    try:
        # Exactly one object (trailing bytes raise). Keys that are not strings are
        # dropped (any msgpack value may be a key, even an unhashable list); bytes
        # that are not UTF-8 pass through to stdout as they came, as in C.
        msg = msgpack.unpackb(frames[1], raw=False, strict_map_key=False,
                              object_pairs_hook=str_keys, unicode_errors="surrogateescape")
    except Exception:
        raise Malformed("not msgpack") from None
    if type(msg) is not dict:
        raise Malformed("not a map")
    v = msg.get("v")
    if not is_int(v) or v != 1:
        raise Malformed("v is not 1")
    kind = msg.get("type")
    if type(kind) is not str:
        raise Malformed("bad type")
    if kind == "result":
        return format_result(msg)
    if kind == "event":
        return format_event(msg)
    return None


def main(argv):
    if not 2 <= len(argv) <= 4:
        print(f"usage: {argv[0]} ENDPOINT [TOPIC_PREFIX] [COUNT]", file=sys.stderr)
        return 2
    endpoint = argv[1]
    prefix = argv[2] if len(argv) > 2 else "result/"
    try:
        count = int(argv[3]) if len(argv) > 3 else 0
    except ValueError:
        count = -1
    if count < 0:
        print(f"{argv[0]}: COUNT must be a number >= 0", file=sys.stderr)
        return 2
    # Labels are UTF-8 whatever the locale says; flush each line for whoever reads the pipe.
    sys.stdout.reconfigure(encoding="utf-8", errors="surrogateescape", line_buffering=True)

    why = untrusted_peer(endpoint)
    if why:
        print(f"{argv[0]}: {why}", file=sys.stderr)
        return 1
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    why = curve_from_env(sub)
    if why:
        print(f"{argv[0]}: {why}", file=sys.stderr)
        sub.close()
        ctx.term()
        return 1
    try:
        sub.connect(endpoint)
    except zmq.ZMQError as exc:
        print(f"{argv[0]}: {endpoint}: {exc}", file=sys.stderr)
        sub.close()
        ctx.term()
        return 1
    sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    seen = 0
    try:
        while count == 0 or seen < count:
            frames = sub.recv_multipart()
            seen += 1
            try:
                line = format_message(frames)
            except Malformed as exc:
                print(f"skipped malformed message: {exc}", file=sys.stderr, flush=True)
                continue
            if line is not None:
                print(line, flush=True)  # a line as it comes, also into a pipe (`| grep`)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head` had enough: no traceback, nor another one flushing stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        sub.close()
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
