"""The MQTT messages between a device's uplink and `lited cloud` (docs/uplink.md).

One place builds and parses topics, message ids and payloads, so the device
(service/uplink.py), the server (cloud.py) and the docs cannot drift apart.
Everything received is untrusted: the parsers return None or raise
`UplinkMessageError` naming the field, never another exception.

Topics, all under `lited/<device>/`:
    status                  retained health, online/offline (the last will)      device -> cloud
    events/<stream>         events (JSON)                                         device -> cloud
    results/<stream>        selected results (JSON)                               device -> cloud
    crops/<stream>          one JPEG per selected detection (raw bytes)           device -> cloud
    frames/<stream>         the whole frame of a selected result (raw JPEG)      device -> cloud
    answers/<stream>        the second model's answer to a crop or frame (JSON)   cloud -> device
    ack                     "these ids arrived" (JSON), for results and events   cloud -> device
    req                     a request (JSON), reply to its MQTT 5 ResponseTopic   cloud -> device
    resp/<client>           the reply to a request                                device -> cloud
"""
from __future__ import annotations

import base64
import json
import sys
from typing import Any, Optional, Tuple

from lited.validate import has_type, name_problem, reserved_stream_problem, unique_keys

VERSION = 1
ROOT = "lited"
ID_PROPERTY = "lited-id"            # MQTT 5 user property on every outbox message: "<device>:<epoch>:<seq>"
DEVICE_KINDS = ("events", "results", "crops", "frames")   # what a device publishes per stream
IMAGE_KINDS = ("crops", "frames")
REMOTE_METHODS = ("ping", "status", "reload", "snapshot")
MAX_REQUEST_BYTES = 64 << 10
MAX_ANSWER_BYTES = 1 << 20  # an answer or an ack a device takes
# The largest MQTT packet a device accepts (MQTT 5 Maximum Packet Size, sent at connect): the broker
# drops larger ones for it, so a 50 MB message to its topics is never read into its memory (it was,
# then refused: +200 MB peak). The largest message it takes, an answer, and room for topic and properties.
MAX_DEVICE_PACKET = MAX_ANSWER_BYTES + (64 << 10)
# user properties of a crop or frame message, in this order; values are strings (MQTT 5 rule)
IMAGE_PROPERTIES = ("stream", "seq", "frame_ts", "detection", "label", "score", "box", "queued_ts")


class UplinkMessageError(ValueError):
    """An MQTT message that breaks docs/uplink.md; the text names the field.
    `request_id`: a request's id when its JSON object was readable, so the
    error reply carries it (as the local bus does)."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def reply_topic_problem(device: str, value: Any) -> Optional[str]:
    """Why `value` cannot be a request's ResponseTopic, or None: exactly one
    level under lited/<device>/resp/ (the documented ACL grants `resp/+`), no
    wildcard (paho refuses to publish there, from its network thread)."""
    base = topic(device, "resp") + "/"
    if not isinstance(value, str) or not value.startswith(base):
        return f"request without a ResponseTopic under {base}"
    client = value[len(base):]
    if not client or any(c in client for c in "/+#\0"):
        return f"ResponseTopic {value[:120]!r}: expected {base}<one level, no '/', '+', '#'>"
    return None


def topic(device: str, kind: str, stream: Optional[str] = None) -> str:
    return f"{ROOT}/{device}/{kind}" + (f"/{stream}" if stream is not None else "")


def parse_topic(name: str) -> Optional[Tuple[str, str, Optional[str]]]:
    """'lited/dev1/crops/cam0' -> ('dev1', 'crops', 'cam0'); None if not ours."""
    parts = name.split("/")
    if len(parts) not in (3, 4) or parts[0] != ROOT or name_problem(parts[1]):
        return None
    if len(parts) == 4 and name_problem(parts[3]) and parts[2] != "resp":
        return None
    return parts[1], parts[2], parts[3] if len(parts) == 4 else None


def message_id(device: str, epoch: str, seq: int) -> str:
    return f"{device}:{epoch}:{seq}"


def parse_id(value: Any) -> Optional[Tuple[str, str, int]]:
    """'dev1:1a2b3c4d:17' -> ('dev1', '1a2b3c4d', 17); None if malformed."""
    if not isinstance(value, str) or len(value) > 200:
        return None
    parts = value.split(":")
    if len(parts) != 3 or not parts[2].isdigit() or name_problem(parts[0]) or not parts[1].isalnum():
        return None
    return parts[0], parts[1], int(parts[2])


def to_json(obj: Any) -> bytes:
    """Compact JSON; bytes become base64 strings (docs/uplink.md: replies)."""
    return json.dumps(obj, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "item"):          # numpy scalars
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def from_json(payload: bytes, what: str, limit: int = 1 << 20) -> dict:
    """A JSON object with "v": 1, or UplinkMessageError."""
    if len(payload) > limit:
        raise UplinkMessageError(f"{what}: {len(payload)} bytes is over {limit}")
    try:
        # {"method": "ping", "method": "reload"} ran reload; NaN, as Python's parser reads it, went on into the
        # records of `lited cloud --record` and a reply's id, where no other JSON reader takes it
        obj = json.loads(payload, object_pairs_hook=unique_keys, parse_constant=_no_constant)
    except RecursionError:  # arrays or objects nested deeper than the parser goes: it would kill the caller's thread
        raise UplinkMessageError(f"{what}: nested too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if "digits" in str(exc):  # valid JSON Python will not read: an integer of thousands of digits
            raise UplinkMessageError(f"{what}: an integer of more than {sys.get_int_max_str_digits()} digits") \
                from None
        if "given twice" in str(exc) or "JSON has neither" in str(exc):
            raise UplinkMessageError(f"{what}: {exc}") from None
        raise UplinkMessageError(f"{what}: not JSON ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise UplinkMessageError(f"{what}: expected a JSON object")
    if type(obj.get("v")) is not int or obj["v"] != VERSION:  # the integer: not true, not 1.0 (as the bus)
        raise UplinkMessageError(f"{what}.v: expected {VERSION}, got {obj.get('v')!r}", obj.get("id"))
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} in it: JSON has neither NaN nor infinity")


# -- device -> cloud
def result_message(device: str, result: dict, detections: list, classes: list, crops: list,
                   frame: bool) -> dict:
    """A selected result: the bus's keys, only the selected detections (each
    with `index`, its place in the local result) and which images follow."""
    return {"v": VERSION, "type": "result", "device": device, "stream": result["stream"], "seq": result["seq"],
            "frame_ts": result.get("frame_ts"), "skipped": result.get("skipped"), "model": result.get("model"),
            "model_key": result.get("model_key"), "model_version": result.get("model_version"), "task": result.get("task"),
            "detections": detections, "classes": classes, "timings_ms": result.get("timings_ms"),
            "width": result.get("width"), "height": result.get("height"), "crops": crops, "frame": frame}


def event_message(device: str, event: dict) -> dict:
    return {"v": VERSION, "type": "event", "device": device, **event}


# what a server needs of a device's message to use it (`lited cloud` recorded {"v":1,"type":"result"} as one)
DEVICE_MESSAGE_KEYS = {"result": (("stream", str), ("seq", int), ("detections", list), ("classes", list)),
                       "event": (("stream", str), ("event", str))}


def parse_device_message(payload: bytes, kind: str) -> dict:
    """A device's result or event message, or UplinkMessageError naming the field it lacks."""
    msg = from_json(payload, kind)
    if msg.get("type") != kind:
        raise UplinkMessageError(f"{kind}.type: expected {kind!r}, got {str(msg.get('type'))[:32]!r}")
    for key, want in DEVICE_MESSAGE_KEYS.get(kind, ()):
        if not has_type(msg.get(key), want):
            raise UplinkMessageError(f"{kind}.{key}: expected {want.__name__}")
    return msg


def image_properties(stream: str, seq: int, frame_ts: Any, detection: Optional[dict], index: Optional[int],
                     queued_ts: float) -> list:
    """User properties of a crop (detection given) or a whole frame (None)."""
    props = [("stream", stream), ("seq", str(seq)), ("frame_ts", repr(float(frame_ts or 0.0)))]
    if detection is not None:
        props += [("detection", str(index)), ("label", str(detection.get("label", ""))),
                  ("score", f"{float(detection.get('score', 0.0)):.4f}"),
                  ("box", ",".join(f"{float(v):.1f}" for v in detection["box"][:4]))]
    props.append(("queued_ts", repr(float(queued_ts))))
    return props


def parse_image_properties(pairs: list) -> dict:
    """A crop's or frame's user properties -> {stream, seq, frame_ts, detection, label, score, box, queued_ts}."""
    raw = {k: v for k, v in pairs or [] if k in IMAGE_PROPERTIES}
    try:
        out = {"stream": raw["stream"], "seq": int(raw["seq"]), "frame_ts": float(raw.get("frame_ts", 0)),
               "detection": int(raw["detection"]) if "detection" in raw else None,
               "queued_ts": float(raw.get("queued_ts", 0))}
        if "label" in raw:
            out["label"] = raw["label"]
        if "score" in raw:
            out["score"] = float(raw["score"])
        if "box" in raw:
            out["box"] = [float(v) for v in raw["box"].split(",")]
    except (KeyError, ValueError) as exc:
        raise UplinkMessageError(f"image properties: missing or bad {exc}") from None
    if name_problem(out["stream"]):
        raise UplinkMessageError("image properties: stream: not a stream name")
    return out


# -- cloud -> device
def answer_message(msg_id: str, image: dict, worker: str, model: Optional[dict], result: Optional[dict],
                   error: Optional[str] = None) -> dict:
    """The second model's answer to the crop or frame `msg_id` (its properties `image`)."""
    out = {"v": VERSION, "type": "answer", "id": msg_id, "stream": image["stream"], "seq": image["seq"],
           "detection": image["detection"], "queued_ts": image.get("queued_ts"), "worker": worker}
    if model:
        out.update(model=model["name"], model_version=model["version"], task=model["task"])
    if result is not None:
        out.update(detections=result["detections"], classes=result["classes"],
                   infer_ms=round(result["timings_ms"].get("infer", 0.0), 3))
    if error:
        out["error"] = error
    return out


def parse_answer(payload: bytes) -> dict:
    msg = from_json(payload, "answer", limit=MAX_ANSWER_BYTES)
    for key, kind in (("id", str), ("stream", str), ("seq", int)):
        if not has_type(msg.get(key), kind):
            raise UplinkMessageError(f"answer.{key}: expected {kind.__name__}")
    problem = name_problem(msg["stream"]) or reserved_stream_problem(msg["stream"])
    if problem:  # it becomes the local topic answer/<stream>: "zzz\nfake" went out as one
        raise UplinkMessageError(f"answer.stream: {problem}")
    if msg.get("detection") is not None and not has_type(msg["detection"], int):
        raise UplinkMessageError("answer.detection: expected an integer or null")
    for key in ("detections", "classes"):
        if not isinstance(msg.get(key, []), list):
            raise UplinkMessageError(f"answer.{key}: expected a list")
    return msg


def ack_message(ids: list) -> dict:
    return {"v": VERSION, "type": "ack", "ids": ids}


def parse_ack(payload: bytes) -> list:
    msg = from_json(payload, "ack", limit=MAX_ANSWER_BYTES)
    ids = msg.get("ids")
    if not isinstance(ids, list):
        raise UplinkMessageError("ack.ids: expected a list")
    return ids


def parse_request(payload: bytes) -> Tuple[Any, str, dict]:
    """A remote request -> (id, method, params), or UplinkMessageError."""
    msg = from_json(payload, "request", limit=MAX_REQUEST_BYTES)
    request_id = msg.get("id")
    method, params = msg.get("method"), msg.get("params") or {}
    if not isinstance(method, str):
        raise UplinkMessageError("method: expected a string", request_id)
    if method not in REMOTE_METHODS:
        raise UplinkMessageError(f"method: {method[:64]!r} is not offered over MQTT ({', '.join(REMOTE_METHODS)})",
                                 request_id)
    if not isinstance(params, dict):
        raise UplinkMessageError("params: expected an object", request_id)
    if method == "reload" and "bundle" in params:
        raise UplinkMessageError("params.bundle: not accepted over MQTT (the configured bundles only)", request_id)
    if method == "reload" and "force" in params:  # as over HTTP: a bundle of another task is swapped on the board
        raise UplinkMessageError("params.force: not accepted over MQTT (lited ctl reload --force, on the board)",
                                 request_id)
    return request_id, method, params


def request_message(method: str, params: Optional[dict] = None, request_id: Any = None) -> dict:
    return {"v": VERSION, "id": request_id, "method": method, "params": params or {}}


def reply_message(request_id: Any, result: Any = None, code: Optional[str] = None, message: str = "") -> dict:
    if code is not None:
        return {"v": VERSION, "id": request_id, "ok": False, "error": {"code": code, "message": message}}
    return {"v": VERSION, "id": request_id, "ok": True, "result": result}
