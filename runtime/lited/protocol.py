"""The msgpack messages between the daemon and local apps (docs/protocol.md).

One place encodes, decodes and validates them, so the daemon, the Python
client and the docs cannot drift apart. Everything a client sends is
untrusted: `decode_request` turns any bytes into either a request or a
`ProtocolError` naming the field, never an exception of another kind.
"""
from __future__ import annotations

from typing import Any

import msgpack

from lited.validate import DAEMON_STREAM, has_type, type_name, unique_keys  # noqa: F401 - DAEMON_STREAM: the protocol's name

VERSION = 1
METHODS = ("ping", "status", "infer", "reload", "snapshot")
RESULT_KEYS = ("stream", "seq", "frame_ts", "skipped", "model", "model_key", "model_version", "task", "detections",
               "classes", "timings_ms")
OPTIONAL_RESULT_KEYS = ("text", "text_score")  # a text decoder's (ctc) result, when it is the bundle's own
ANSWER_KEYS = ("stream", "seq", "detection", "id", "worker", "model", "model_version", "task", "detections",
               "classes", "error", "infer_ms", "round_trip_ms")
FRAME_KEYS = ("ring", "generation", "slot", "slot_seq", "width", "height")
# msgpack limits for untrusted input: bounded nesting and sizes, no ext types
_UNPACK_LIMITS = dict(max_str_len=1 << 16, max_array_len=1 << 16, max_map_len=1 << 10, max_ext_len=0)


class ProtocolError(Exception):
    """A message that breaks the protocol; `code` is the reply's error code."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id  # known when the payload was a map: the reply can be matched


def result_topic(stream: str) -> bytes:
    return f"result/{stream}".encode()


def event_topic(stream: str) -> bytes:
    return f"event/{stream}".encode()


def answer_topic(stream: str) -> bytes:
    return f"answer/{stream}".encode()


def encode_answer(answer: dict) -> bytes:
    """A server's answer to one of this device's crops or frames (docs/uplink.md) -> the published payload."""
    payload = {"v": VERSION, "type": "answer"}
    for key in ANSWER_KEYS:
        if answer.get(key) is not None or key in ("detection", "detections", "classes"):
            payload[key] = answer.get(key, [] if key in ("detections", "classes") else None)
    return msgpack.packb(payload, use_bin_type=True)


def result_message(result: dict) -> dict:
    """A pipeline result -> the published message (see docs/protocol.md)."""
    payload = {"v": VERSION, "type": "result"}
    for key in RESULT_KEYS:
        payload[key] = result.get(key)
    for key in OPTIONAL_RESULT_KEYS:
        if key in result:
            payload[key] = result[key]
    payload["frame"] = frame_of(result)
    return payload


def frame_of(result: dict) -> dict:
    """A result's `frame` map: where its frame lies in shared memory."""
    return {key: result.get(key) for key in FRAME_KEYS}


def encode_result(result: dict) -> bytes:
    """A pipeline result -> the published payload."""
    return msgpack.packb(result_message(result), use_bin_type=True)


def event_message(event: dict) -> dict:
    return {"v": VERSION, "type": "event", **event}


def json_ready(result: dict) -> dict:
    """A result (or message) as JSON shows it (`lited infer --json`, HTTP):
    boxes and polygons to 0.1 px, scores to 1e-4, times to 1 us; a cascade's
    fields in each detection likewise."""
    out = dict(result)
    if "detections" in result:
        out["detections"] = [_json_ready_detection(d) for d in result["detections"]]
    if "classes" in result:
        out["classes"] = _rounded_classes(result["classes"])
    if "text_score" in result:
        out["text_score"] = round(result["text_score"], 4)
    if result.get("timings_ms"):
        out["timings_ms"] = {k: round(v, 3) for k, v in result["timings_ms"].items()}
    return out


def _json_ready_detection(d: dict) -> dict:
    d = {**d, "score": round(d["score"], 4), "box": [round(v, 1) for v in d["box"]]}
    if "polygon" in d:
        d["polygon"] = [[round(x, 1), round(y, 1)] for x, y in d["polygon"]]
    if "classes" in d:
        d["classes"] = _rounded_classes(d["classes"])
    if "text_score" in d:
        d["text_score"] = round(d["text_score"], 4)
    return d


def _rounded_classes(classes: list) -> list:
    return [{**c, "score": round(c["score"], 4)} for c in classes]


def encode_event(event: dict) -> bytes:
    return msgpack.packb(event_message(event), use_bin_type=True)


ID_WITHIN = 4096  # bytes of a refused request searched for its id
# msgpack's words for what it could not read -> lited's (docs/protocol.md, "Requests")
_LIMIT_WORDS = {"max_str_len": f"a string over {_UNPACK_LIMITS['max_str_len']} bytes",
                "max_array_len": f"an array over {_UNPACK_LIMITS['max_array_len']} items",
                "max_map_len": f"a map over {_UNPACK_LIMITS['max_map_len']} keys",
                "max_bin_len": "a binary over limits.max_request_bytes",
                "max_ext_len": "an extension type",
                "for map key": "a map key that is not a string",
                "given twice": "a map key given twice",
                "incomplete input": "it ends before its value is whole",
                "extra data": "bytes after the first value"}
MSGPACK_TYPES = {dict: "a map", list: "an array", str: "a string", bytes: "a binary", int: "an integer",
                 float: "a float", bool: "a boolean", type(None): "nil"}


def _no_extension(code: int, data: bytes) -> Any:
    raise ValueError(f"extension type {code}")


def _string_keys(pairs: list) -> dict:
    """A map whose keys are all strings (strict_map_key lets binaries through), each once
    (`{"id": 5, "id": 6}` took the last: which counts is not the sender's to leave open)."""
    for key, _ in pairs:
        if not isinstance(key, str):
            raise ValueError(f"{type(key).__name__} is not allowed for map key")
    return unique_keys(pairs)  # its ValueError is said as _LIMIT_WORDS["given twice"]


def request_id_of(data: bytes) -> Any:
    """The `id` of a request refused before it is decoded whole (too large, over
    the in-flight budget, over a msgpack limit), so the client can match the
    reply; None if it has none or is not a msgpack map. Reads the map only as
    far as `id`, which clients put before `params`, within its first ID_WITHIN
    bytes: a refusal costs no copy of the payload."""
    head = bytes(data[:ID_WITHIN])
    # an id holding what lited does not read (a map key that is not a string, an extension type) is none
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=ID_WITHIN + 1,
                                ext_hook=_no_extension)
    unpacker.feed(head)
    try:
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if not isinstance(key, str):  # a key lited does not read: the map is not read
                return None
            if key == "id":
                return unpacker.unpack()
            unpacker.skip()
    except Exception:  # noqa: BLE001 - hostile bytes: no id to echo
        return None
    return None


def decode_payload(data: bytes, max_bin: int = 1 << 26) -> dict:
    """Any bytes -> a map with `v` == 1, or ProtocolError('bad_request')."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=_string_keys,
                              max_bin_len=max_bin, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises many types on hostile input
        said = " ".join(str(exc).split())[:120]  # e.g. a map with an int key: "int is not allowed for map key ..."
        limit = next((words for name, words in _LIMIT_WORDS.items() if name in said), None)
        if limit is None:
            limit = {"StackError": "nested deeper than msgpack reads",
                     "FormatError": "a byte that starts no msgpack value",
                     "UnicodeDecodeError": "a string that is not UTF-8"}.get(type(exc).__name__)
        raise ProtocolError("bad_request", f"not a msgpack message lited reads "
                                           f"({limit or type(exc).__name__ + (': ' + said if said else '')})",
                            request_id_of(data)) from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", f"expected a map, got {MSGPACK_TYPES.get(type(obj), 'another type')}")
    if type(obj.get("v")) is not int or obj["v"] != VERSION:  # the integer (not true, not 1.0); a readable
        # map: its id comes back, so the client can match the reply
        raise ProtocolError("bad_request", f"v: expected {VERSION}, got {obj.get('v')!r}", obj.get("id"))
    return obj


def decode_request(data: bytes, max_bin: int = 1 << 26) -> dict:
    """Validate a request: `{"v": 1, "id": any, "method": str, "params": map}`."""
    req = decode_payload(data, max_bin)
    request_id = req.get("id")
    method = req.get("method")
    if not isinstance(method, str):
        raise ProtocolError("bad_request", "method: expected a string", request_id)
    if method not in METHODS:
        raise ProtocolError("unknown_method", f"method: unknown {method[:64]!r} (known: {', '.join(METHODS)})",
                            request_id)
    params = req.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError("bad_request", "params: expected a map", request_id)
    req["params"] = params
    return req


def integral(value: Any) -> Any:
    """A float with an integral value as that int (a number is an int or a
    float, docs/protocol.md: 50.0 is 50); anything else as it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def param(params: dict, name: str, kind: Any, required: bool = True, default: Any = None) -> Any:
    """A request parameter of type `kind`, or ProtocolError naming it."""
    if name not in params:
        if required:
            raise ProtocolError("bad_request", f"params.{name}: missing")
        return default
    value = integral(params[name]) if kind is int else params[name]
    if not has_type(value, kind):
        raise ProtocolError("bad_request", f"params.{name}: expected {type_name(kind)}")
    return value


def encode_request(method: str, params: dict | None = None, request_id: Any = None) -> bytes:
    return msgpack.packb({"v": VERSION, "id": request_id, "method": method, "params": params or {}},
                         use_bin_type=True)


def encode_reply(request_id: Any, result: Any = None, error: ProtocolError | None = None) -> bytes:
    if error is not None:
        body = {"v": VERSION, "id": request_id, "ok": False, "error": {"code": error.code, "message": str(error)}}
    else:
        body = {"v": VERSION, "id": request_id, "ok": True, "result": result}
    return msgpack.packb(body, use_bin_type=True)


def decode_reply(data: bytes) -> dict:
    return decode_payload(data)
